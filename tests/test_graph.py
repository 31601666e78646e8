"""The neural graph: exact round trips, semantics, permutation symmetry, batching and clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from l2o.graph import (ACTIVATIONS, EDGE_IDENTITY, EDGE_NORM, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, NeuralGraph,
                       UnsupportedModuleError, register_activation)
from model_zoo import (ResidualCNN, ResidualMLP, bn_cnn, mixed_kernel_cnn, mlp, permute_residual_cnn,
                       permute_sequential)

MODELS = {
    "mlp": lambda: mlp(0),
    "mixed_kernel_cnn": lambda: mixed_kernel_cnn(0),
    "residual_cnn": lambda: ResidualCNN(0),
    "bn_cnn": lambda: bn_cnn(0),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_exact(name):
    model = MODELS[name]()
    g = NeuralGraph.from_module(model)
    feats = {n: torch.randn(*p.shape, 3) for n, p in model.named_parameters()}
    node, edge = g.scatter(feats)
    assert node.shape == (g.num_nodes, 3) and edge.shape == (g.num_edges, g.kmax ** 2, 3)
    back = g.unscatter(node, edge)
    assert set(back) == set(feats)
    for n in feats:
        assert torch.equal(back[n], feats[n]), n
    # Every element occupies its own slot: nothing is overwritten.
    assert g.slot.unique().numel() == g.num_param_elements
    assert g.num_param_elements == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_gather_agrees_with_scatter(name):
    model = MODELS[name]()
    g = NeuralGraph.from_module(model)
    ids = {n: (torch.arange(p.numel(), dtype=torch.float64) + 1 + 1000 * i).reshape(*p.shape, 1)
           for i, (n, p) in enumerate(model.named_parameters())}
    node, edge = g.scatter(ids)
    owner = g.gather(torch.arange(g.num_nodes, dtype=torch.float64)[:, None],
                     g.num_nodes + torch.arange(g.num_edges, dtype=torch.float64)[:, None])
    for n, t in ids.items():
        o = owner[n].reshape(-1).long()
        v = t.reshape(-1)
        on_node = o < g.num_nodes
        assert torch.equal(node[o[on_node], 0], v[on_node])
        e = o[~on_node] - g.num_nodes
        # The edge owning an element holds it at one of its kernel positions.
        assert bool((edge[e, :, 0] == v[~on_node, None]).any(1).all())


def test_kernels_are_centred_and_zero_padded():
    model = mixed_kernel_cnn(0)
    g = NeuralGraph.from_module(model)
    assert g.kmax == 5
    _, edge = g.scatter_params(dict(model.named_parameters()))
    k = edge[..., 0].reshape(-1, 5, 5)
    w3 = model[2].weight  # [6, 4, 3, 3], second layer
    first = int(g.layer_edge_ptr[2])
    blk = k[first: first + 24].reshape(6, 4, 5, 5)
    assert torch.equal(blk[:, :, 1:4, 1:4], w3.detach())
    assert blk[:, :, 0].abs().sum() == 0 and blk[:, :, :, 4].abs().sum() == 0
    w1 = model[4].weight  # 1x1 kernel -> centre only
    first = int(g.layer_edge_ptr[3])
    blk = k[first: first + 30].reshape(5, 6, 5, 5)
    assert torch.equal(blk[:, :, 2, 2], w1.detach()[:, :, 0, 0])
    off_centre = blk.clone()
    off_centre[:, :, 2, 2] = 0
    assert not off_centre.any()


_ACT = {"identity": lambda x: x, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def _run_on_graph(g: NeuralGraph, params: dict, x: torch.Tensor) -> torch.Tensor:
    """x_i = act_i(b_i + sum_j W_ij x_j), layer by layer, with W and b read from the graph's features."""
    node, edge = g.scatter_params(params)
    c = (g.kmax ** 2) // 2
    w = edge[:, c, 0] + g.edge_constant[:, c]
    h = torch.zeros(x.shape[0], g.num_nodes, dtype=x.dtype)
    h[:, g.node_role == ROLE_INPUT] = x
    for t in range(1, g.num_layers):
        n0, n1 = int(g.layer_node_ptr[t]), int(g.layer_node_ptr[t + 1])
        e0, e1 = int(g.layer_edge_ptr[t]), int(g.layer_edge_ptr[t + 1])
        src, dst = g.edge_index[:, e0:e1]
        pre = node[n0:n1, 0].expand(x.shape[0], -1).clone()
        pre.index_add_(1, dst - n0, h[:, src] * w[e0:e1])
        act = ACTIVATIONS[int(g.node_activation[n0])]
        h[:, n0:n1] = _ACT[act](pre)
    return h[:, g.node_role == ROLE_OUTPUT]


@pytest.mark.parametrize("make", [lambda: mlp(1), lambda: mlp(2, act=nn.ReLU), lambda: ResidualMLP(3)])
def test_message_passing_reproduces_forward(make):
    model = make().double()
    g = NeuralGraph.from_module(model)
    x = torch.randn(8, 5 if isinstance(model, nn.Sequential) else 4, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    torch.testing.assert_close(_run_on_graph(g, params, x), model(x), rtol=1e-10, atol=1e-10)


def _node_map(g: NeuralGraph, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sigma[new node] = old node, for per-layer permutations keyed by the layer's module path."""
    sigma = torch.arange(g.num_nodes)
    for info in g.layers[0]:
        if info.name in perms:
            start = int(g.layer_node_ptr[info.index])
            sigma[start: start + info.num_nodes] = start + perms[info.name]
    return sigma


def _assert_permuted(g0, g1, feats0, feats1, sigma):
    n0, e0 = g0.scatter(feats0)
    n1, e1 = g1.scatter(feats1)
    assert torch.equal(g0.edge_index, g1.edge_index)  # structure does not depend on the weights
    assert torch.equal(n1, n0[sigma])
    lookup = {(int(s), int(t), int(k)): i for i, (s, t, k) in
              enumerate(zip(g0.edge_index[0], g0.edge_index[1], g0.edge_kind))}
    old = torch.tensor([lookup[(int(sigma[s]), int(sigma[t]), int(k))]
                        for s, t, k in zip(g1.edge_index[0], g1.edge_index[1], g1.edge_kind)])
    assert torch.equal(e1, e0[old])
    assert not torch.equal(old, torch.arange(len(old)))  # the permutation was not trivial


def _feats(model):
    return {n: torch.stack([p.detach(), p.detach() ** 2], -1) for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hidden_permutation_permutes_graph(kind):
    gen = torch.Generator().manual_seed(0)
    model = mlp(0) if kind == "mlp" else mixed_kernel_cnn(0)
    idx = [0, 2] if kind == "mlp" else [0, 2, 4]
    perms = {i: torch.randperm(model[i].weight.shape[0], generator=gen) for i in idx}
    permuted = permute_sequential(model, perms)
    x = torch.randn(4, 5) if kind == "mlp" else torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(permuted(x), model(x))  # same function
    g0, g1 = NeuralGraph.from_module(model), NeuralGraph.from_module(permuted)
    _assert_permuted(g0, g1, _feats(model), _feats(permuted), _node_map(g0, {str(i): p for i, p in perms.items()}))


def test_hidden_permutation_residual_and_batchnorm():
    gen = torch.Generator().manual_seed(1)
    model = ResidualCNN(0)
    ps, pi = torch.randperm(4, generator=gen), torch.randperm(4, generator=gen)
    permuted = permute_residual_cnn(model, ps, pi)
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(permuted(x), model(x))
    g0, g1 = NeuralGraph.from_module(model), NeuralGraph.from_module(permuted)
    sigma = _node_map(g0, {"stem": ps, "conv1": pi, "conv2": ps})
    _assert_permuted(g0, g1, _feats(model), _feats(permuted), sigma)

    model = bn_cnn(0).eval()
    perms = {0: torch.randperm(4, generator=gen), 3: torch.randperm(5, generator=gen)}
    permuted = permute_sequential(model, perms).eval()
    torch.testing.assert_close(permuted(x), model(x))
    g0, g1 = NeuralGraph.from_module(model), NeuralGraph.from_module(permuted)
    # The BatchNorm node set follows its conv's permutation.
    sigma = _node_map(g0, {"0": perms[0], "1": perms[0], "3": perms[3]})
    _assert_permuted(g0, g1, _feats(model), _feats(permuted), sigma)


def test_structure_of_published_cnn():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    g = NeuralGraph.from_module(model)
    assert g.num_nodes == 1 + 16 + 32 + 32 + 10
    assert g.num_edges == 16 + 16 * 32 + 32 * 32 + 32 * 10
    assert [info.activation for info in g.layers[0]] == ["identity", "relu", "relu", "relu", "identity"]
    assert int((g.node_role == ROLE_HIDDEN).sum()) == 80 and int((g.node_role == ROLE_OUTPUT).sum()) == 10
    assert bool((g.node_layer[g.edge_index[0]] < g.node_layer[g.edge_index[1]]).all())
    assert torch.equal(g.edge_layer, g.node_layer[g.edge_index[1]])


class _Functional(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 5, 3), nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = torch.relu(self.c2(x))
        x = x.view(x.size(0), -1)
        return F.dropout(self.fc(x), 0.0, self.training)


def test_functional_forward_and_spatial_flatten():
    model = _Functional()
    assert model(torch.randn(2, 1, 10, 10)).shape == (2, 3)
    g = NeuralGraph.from_module(model)
    kinds = [info.kind for info in g.layers[0]]
    assert kinds == ["input", "conv", "conv", "flatten", "linear"]
    flat = g.layers[0][3]
    assert flat.num_nodes == 20
    n0 = int(g.layer_node_ptr[3])
    assert g.node_position[n0: n0 + 20].tolist() == [0, 1, 2, 3] * 5  # channel-major, as torch flattens
    e0, e1 = int(g.layer_edge_ptr[3]), int(g.layer_edge_ptr[4])
    assert bool((g.edge_kind[e0:e1] == EDGE_IDENTITY).all()) and e1 - e0 == 20
    # Round trip still exact with the copies in between.
    feats = {n: torch.randn(*p.shape, 2) for n, p in model.named_parameters()}
    back = g.unscatter(*g.scatter(feats))
    assert all(torch.equal(back[n], feats[n]) for n in feats)


def test_norms_conv1d_groups():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Conv1d(4, 4, 3, groups=4),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(),
                          nn.Linear(6, 2))
    g = NeuralGraph.from_module(model)
    assert int((g.edge_kind == EDGE_NORM).sum()) == 4 + 6
    dw = [i for i in g.layers[0] if i.name == "3"][0]
    assert int((g.edge_layer == dw.index).sum()) == 4  # depthwise: one edge per channel
    feats = {n: torch.randn(*p.shape, 1) for n, p in model.named_parameters()}
    back = g.unscatter(*g.scatter(feats))
    assert all(torch.equal(back[n], feats[n]) for n in feats)


def test_batch_matches_individual_graphs():
    ma, mb = mlp(0), ResidualCNN(0)
    ga, gb = NeuralGraph.from_module(ma, kmax=3), NeuralGraph.from_module(mb)
    b = NeuralGraph.batch([ga, gb])
    fa, fb = ga.flatten(_feats(ma)), gb.flatten(_feats(mb))
    node, edge = b.scatter_flat(torch.cat([fa, fb]))
    for gi, (g, f) in enumerate(((ga, fa), (gb, fb))):
        n, e = g.scatter_flat(f)
        assert torch.equal(node[b.node_graph == gi], n) and torch.equal(edge[b.edge_graph == gi], e)
        assert torch.equal(b.node_layer[b.node_graph == gi], g.node_layer)
    assert b.num_graphs == 2 and bool((b.node_layer[b.edge_index[0]] < b.edge_layer).all())
    assert torch.equal(b.unscatter_flat(node, edge), torch.cat([fa, fb]))


def test_bad_feature_shapes_are_rejected():
    model = mlp(0)
    g = NeuralGraph.from_module(model)
    feats = {n: torch.randn(*p.shape, 2) for n, p in model.named_parameters()}
    feats["0.weight"] = torch.randn(3, 3, 2)
    with pytest.raises(ValueError, match="0.weight"):
        g.scatter(feats)
    with pytest.raises(KeyError, match="missing"):
        g.scatter({})


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(torch.relu(self.a(x)))


@pytest.mark.parametrize("model, path, kind", [
    (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), "0", "Embedding"),
    (nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)), "1", "PReLU"),
    (nn.Sequential(nn.Conv2d(3, 4, 7), nn.Flatten()), "0", "Conv2d"),
    (_Cat(), "cat", "cat"),
    (_Tied(), "a", "Linear"),
])
def test_unsupported_layers_name_themselves(model, path, kind):
    kmax = 3 if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Conv2d) else None
    with pytest.raises(UnsupportedModuleError) as info:
        NeuralGraph.from_module(model, kmax=kmax)
    assert info.value.path == path and kind in info.value.kind
    assert path in str(info.value)


def test_untraceable_model_is_reported():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x):
            return self.l(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModuleError, match="control flow"):
        NeuralGraph.from_module(Branchy())


def test_registered_activation_module():
    class Sine(nn.Module):
        def forward(self, x):
            return torch.sin(30.0 * x)

    register_activation(Sine, "sin")
    model = nn.Sequential(nn.Linear(2, 8), Sine(), nn.Linear(8, 1))
    g = NeuralGraph.from_module(model)
    assert g.layers[0][1].activation == "sin"


def test_to_device_keeps_everything():
    g = NeuralGraph.from_module(ResidualCNN(0)).to("cpu")
    assert g.device.type == "cpu" and g.num_graphs == 1 and len(g.param_names) == 8
    assert "NeuralGraph(" in repr(g)


def test_permutation_maps_match_permuted_model():
    gen = torch.Generator().manual_seed(3)
    model = ResidualCNN(0)
    ps, pi = torch.randperm(4, generator=gen), torch.randperm(4, generator=gen)
    permuted = permute_residual_cnn(model, ps, pi)
    g = NeuralGraph.from_module(model)
    node_map, edge_map = g.permutation({"stem": ps, "conv1": pi, "conv2": ps})
    n0, e0 = g.scatter(_feats(model))
    n1, e1 = g.scatter(_feats(permuted))
    assert torch.equal(n1, n0[node_map]) and torch.equal(e1, e0[edge_map])
    with pytest.raises(ValueError, match="not a symmetry"):
        g.permutation({"stem": ps})  # half of the residual stream alone is not a symmetry


def test_skip_mode_leaves_unsupported_parts_off_the_graph():
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2))
    g = NeuralGraph.from_module(model, on_unsupported="skip")
    assert g.unmapped_params == ["1.weight"] and g.skipped_modules == ["1 (PReLU)"]
    assert g.param_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    # The skipped module's output re-enters as input nodes of the next layer.
    assert int((g.node_role == ROLE_INPUT).sum()) == 8
    with pytest.raises(ValueError, match="on_unsupported"):
        NeuralGraph.from_module(model, on_unsupported="ignore")


def test_edge_blocks_mark_dense_weight_blocks():
    """Every Linear / ungrouped conv is one dense block, row-major (edge = start + o * n_in + i from node in_base + i
    to out_base + o); identity, norm and grouped-conv edges are not; the runs cover the edges in order, also in a
    batch of two graphs."""
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2),
                            nn.Flatten(), nn.Linear(4 * 4, 3))
    pair = NeuralGraph.batch([NeuralGraph.from_module(m, kmax=3) for m in (mlp(0), ResidualMLP(0))])
    for g in (NeuralGraph.from_module(grouped, kmax=3), pair):
        runs = g.edge_blocks()
        assert [a for a, _, _ in runs] == [0] + [b for _, b, _ in runs[:-1]] and runs[-1][1] == g.num_edges
        for a, b, dense in runs:
            src, dst = g.edge_index[:, a:b]
            if dense is None:
                continue
            out_base, n_out, in_base, n_in = dense
            assert n_out * n_in == b - a and bool((g.edge_kind[a:b] == 0).all())
            assert torch.equal(dst.view(n_out, n_in), (out_base + torch.arange(n_out))[:, None].expand(n_out, n_in))
            assert torch.equal(src.view(n_out, n_in), (in_base + torch.arange(n_in)).expand(n_out, n_in))
    dense_kinds = [d is not None for _, _, d in NeuralGraph.from_module(grouped, kmax=3).edge_blocks()]
    assert dense_kinds == [True, False, False, False, True]  # conv, norm, grouped conv, flatten copies, linear
    batch = NeuralGraph.batch([NeuralGraph.from_module(mlp(0), kmax=3), NeuralGraph.from_module(mlp(1), kmax=3)])
    assert sum(d is not None for _, _, d in batch.edge_blocks()) == 2 * 3  # each graph's three Linears
