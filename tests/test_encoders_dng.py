"""DynamicGraphEncoder: with hand-set weights its forward traversal *is* the network's forward pass; it is
equivariant to hidden-neuron permutations, batches graphs of different depths exactly, its dense and per-edge
message paths agree, and it is differentiable (twice) with clear errors on bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from l2o.encoders import graph_readout
from l2o.encoders.dng import DynamicGraphEncoder, _LayerInputs, _Plan, slot_features
from l2o.graph import EDGE_IDENTITY, EDGE_NORM, EDGE_WEIGHT, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, NeuralGraph
from model_zoo import ResidualCNN, mixed_kernel_cnn, mlp

F = 2  # features per parameter element in the generic tests
HIDDEN = 8


class TanhResidualMLP(nn.Module):
    """tanh everywhere (the GRU's candidate is a tanh), with a residual connection (identity edges)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(self.l2(h) + h)
        return torch.tanh(self.l3(h))


def _tanh_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2), nn.Tanh())


def _hand_set(enc: DynamicGraphEncoder, saturation: float = 30.0) -> None:
    """Weights under which the forward traversal computes ``s_i = tanh(b_i + sum_j w_ij s_j)`` in channel 0.

    Initial memory: channel 0 = node feature (bias, or the input x for input nodes); message channel 0 =
    (w_ij + fixed kernel value) * s_j[0] (A reads the weight and constant features, W_k copies channel 0, B = 0);
    GRU: update gate z ~ 0, reset gate r ~ 1, candidate n = tanh(m[0] + s(0)[0]), so s = n.
    """
    h, K = enc.hidden, enc.kmax ** 2
    with torch.no_grad():
        for p in enc.parameters():
            p.zero_()
        enc.embed.node_proj.linear.weight[0, 0] = 1.0
        message = enc.forward_traversal.message
        message.slot_scale.weight[0, 0] = 1.0  # the weight feature
        message.slot_scale.weight[0, 1] = 1.0  # the fixed kernel value (identity edges)
        message.source.weight.view(K, h, h)[:, 0, 0] = 1.0
        gru = enc.forward_traversal.cell
        gru.weight_ih[2 * h, 0] = 1.0  # candidate <- message channel 0
        gru.weight_hh[2 * h, 0] = 1.0  # candidate <- memory channel 0 (the bias), times r ~ 1
        gru.bias_ih[:h] = saturation  # reset gate r = sigmoid(30) ~ 1
        gru.bias_ih[h: 2 * h] = -saturation  # update gate z = sigmoid(-30) ~ 0


@pytest.mark.parametrize("dense_density", [0.0, 2.0], ids=["dense", "per-edge"])
@pytest.mark.parametrize("make", [_tanh_mlp, TanhResidualMLP], ids=["mlp", "residual-mlp"])
def test_hand_set_traversal_is_the_forward_pass(make, dense_density):
    torch.manual_seed(0)
    model = make().double()
    g = NeuralGraph.from_module(model, kmax=3)  # linear weights at the centre of a 3x3 slot grid
    x = torch.randn(5, 3, dtype=torch.float64)
    node, edge = g.scatter_params({n: p.detach() for n, p in model.named_parameters()})
    # One graph per sample: input nodes carry x as their node feature, the others their bias.
    batch = NeuralGraph.batch([g] * len(x))
    node_feats = torch.zeros(batch.num_nodes, 1, dtype=torch.float64)
    edge_feats = torch.zeros(batch.num_edges, 9, dtype=torch.float64)
    for b in range(len(x)):
        per_sample = node.clone()
        per_sample[g.node_role == ROLE_INPUT, 0] = x[b]
        node_feats[batch.node_graph == b] = per_sample
        edge_feats[batch.edge_graph == b] = edge.reshape(g.num_edges, 9)
    enc = DynamicGraphEncoder(1, 9, hidden=4, depth=1, kmax=3, bidirectional=False,
                              dense_density=dense_density).double()
    _hand_set(enc)
    _, memory, backward = enc.traverse(batch, node_feats, edge_feats)
    assert backward is None
    out = torch.stack([memory[batch.node_graph == b][g.node_role == ROLE_OUTPUT, 0] for b in range(len(x))])
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    hidden = torch.stack([memory[batch.node_graph == b][g.node_role == ROLE_HIDDEN, 0] for b in range(len(x))])
    assert hidden.abs().max() > 0.1  # the hidden activations are really propagated, not trivially zero


def _features(model: nn.Module, graph: NeuralGraph, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = {n: torch.cat([p.detach()[..., None], torch.randn(*p.shape, F - 1, generator=gen)], -1).double()
             for n, p in model.named_parameters()}
    node, edge = graph.scatter(feats)
    return node, edge.reshape(graph.num_edges, -1)


def _encoder(kmax: int, seed: int = 0, **opts) -> DynamicGraphEncoder:
    torch.manual_seed(seed)
    opts.setdefault("depth", 2)
    return DynamicGraphEncoder(F, kmax * kmax * F, hidden=HIDDEN, kmax=kmax, **opts).double()


def _perm(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)


MODELS = {  # name -> (model, kmax, layer permutations by module path given a generator)
    "mlp": (lambda: mlp(0), 3, lambda gen: {"0": _perm(7, gen), "2": _perm(6, gen)}),
    "mixed_kernel_cnn": (lambda: mixed_kernel_cnn(0), 5, lambda gen: {"0": _perm(4, gen), "2": _perm(6, gen),
                                                                        "4": _perm(5, gen)}),
    # The residual stream (stem outputs + conv2 outputs) shares one permutation.
    "residual_cnn": (lambda: ResidualCNN(0), 3, lambda gen: (lambda ps: {"stem": ps, "conv2": ps,
                                                                         "conv1": _perm(4, gen)})(_perm(4, gen))),
}
OPTIONS = [
    {"bidirectional": True},
    {"bidirectional": False},
    {"bidirectional": True, "aggregation": "mean", "recurrence": "rnn"},
    {"bidirectional": True, "recurrence": "none", "dense_density": 2.0},
    {"bidirectional": True, "rounds": 2},
    {"bidirectional": False, "rounds": 3},
    {"bidirectional": True, "heads": "shared"},
    {"bidirectional": False, "heads": "shared", "dense_density": 2.0},
]
OPT_IDS = ["bi", "uni", "bi-mean-rnn", "bi-none-per-edge", "bi-2-rounds", "uni-3-rounds", "bi-shared",
           "uni-shared-per-edge"]


@pytest.mark.parametrize("opts", OPTIONS, ids=OPT_IDS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_hidden_permutation_equivariance(model_name, opts):
    make, kmax, perms = MODELS[model_name]
    model = make()
    g = NeuralGraph.from_module(model, kmax=kmax)
    node, edge = _features(model, g)
    node_map, edge_map = g.permutation(perms(torch.Generator().manual_seed(1)))
    assert not torch.equal(node_map, torch.arange(g.num_nodes))
    enc = _encoder(kmax, **opts)
    x0, e0 = enc(g, node, edge)
    x1, e1 = enc(g, node[node_map], edge[edge_map])
    torch.testing.assert_close(x1, x0[node_map], rtol=0, atol=1e-8)
    torch.testing.assert_close(e1, e0[edge_map], rtol=0, atol=1e-8)
    torch.testing.assert_close(graph_readout(g, x1, e1), graph_readout(g, x0, e0), rtol=0, atol=1e-8)
    # Not trivially invariant: different weights give different embeddings.
    x2, _ = enc(g, node * 2, edge * 2)
    assert (x2 - x0).abs().max() > 1e-3


@pytest.mark.parametrize("opts", OPTIONS, ids=OPT_IDS)
def test_batch_of_different_depths_equals_each_alone(opts):
    models = [mlp(0), ResidualCNN(1), nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)),
              nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 4, 3),
                            nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))]
    graphs = [NeuralGraph.from_module(m, kmax=3) for m in models]
    assert len({g.num_layers for g in graphs}) == 4  # all depths differ
    feats = [_features(m, g, seed=i) for i, (m, g) in enumerate(zip(models, graphs))]
    batch = NeuralGraph.batch(graphs)
    node = torch.zeros(batch.num_nodes, F, dtype=torch.float64)
    edge = torch.zeros(batch.num_edges, 9 * F, dtype=torch.float64)
    for i, (n, e) in enumerate(feats):
        node[batch.node_graph == i], edge[batch.edge_graph == i] = n, e
    enc = _encoder(3, **opts)
    xb, eb = enc(batch, node, edge)
    for i, (g, (n, e)) in enumerate(zip(graphs, feats)):
        x, y = enc(g, n, e)
        torch.testing.assert_close(xb[batch.node_graph == i], x, rtol=0, atol=1e-10)
        torch.testing.assert_close(eb[batch.edge_graph == i], y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_dense_and_per_edge_paths_agree(aggregation):
    model = ResidualCNN(2)
    g = NeuralGraph.from_module(model, kmax=5)  # 3x3 kernels inside 5x5 slots: many empty slots
    node, edge = _features(model, g)
    enc = _encoder(5, aggregation=aggregation)
    enc.dense_density = 0.0
    x0, e0 = enc(g, node, edge)
    enc.dense_density = 2.0
    x1, e1 = enc(g, node, edge)
    torch.testing.assert_close(x0, x1, rtol=0, atol=1e-10)
    torch.testing.assert_close(e0, e1, rtol=0, atol=1e-10)


def test_empty_kernel_slots_add_nothing():
    """Zero-padded slots must not act like present zero weights: a 3x3 CNN encodes the same with kmax 3 and 5,
    given the same message maps on the slots both grids share."""
    model = ResidualCNN(3)
    g3, g5 = NeuralGraph.from_module(model, kmax=3), NeuralGraph.from_module(model, kmax=5)
    (n3, e3), (n5, e5) = _features(model, g3), _features(model, g5)
    enc3, enc5 = _encoder(3), _encoder(5)
    state = {k: v for k, v in enc3.state_dict().items() if "source" not in k and "edge_proj" not in k}
    enc5.load_state_dict(state, strict=False)
    inner = torch.tensor([r * 5 + c for r in range(1, 4) for c in range(1, 4)])  # the 3x3 centre of 5x5
    with torch.no_grad():
        for t3, t5 in ((enc3.forward_traversal, enc5.forward_traversal),
                       (enc3.backward_traversal, enc5.backward_traversal)):
            w3 = t3.message.source.weight.view(9, HIDDEN, HIDDEN)
            t5.message.source.weight.view(25, HIDDEN, HIDDEN)[inner] = w3
    _, m3, b3 = enc3.traverse(g3, n3, e3)
    _, m5, b5 = enc5.traverse(g5, n5, e5)
    torch.testing.assert_close(m3, m5, rtol=0, atol=1e-10)
    torch.testing.assert_close(b3, b5, rtol=0, atol=1e-10)


def test_slot_features_mark_kinds_constants_and_empty_slots():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 3, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _features(model, g)
    f = slot_features(g, edge)
    assert f.shape == (g.num_edges, 9, F + 4)
    torch.testing.assert_close(f[..., :F], edge.view(g.num_edges, 9, F))
    kinds = f[..., F + 1:]
    occupied = kinds.sum(-1)
    assert set(occupied.unique().tolist()) == {0.0, 1.0}  # one kind per occupied slot, none on empty ones
    for kind in (EDGE_WEIGHT, EDGE_NORM):
        sel = g.edge_kind == kind
        assert sel.any() and bool((kinds[sel][..., kind] == occupied[sel]).all())
    is_conv3 = (g.edge_layer == 1)  # the 3x3 conv: all slots occupied
    assert bool((occupied[is_conv3] == 1).all())
    single = (g.edge_kind == EDGE_NORM) | (g.edge_layer >= 3)  # norm diagonals, 1x1 conv, linear: centre only
    assert bool((occupied[single][:, 4] == 1).all()) and occupied[single].sum() == single.sum()
    assert bool((f[occupied == 0] == 0).all())
    # Identity edges (residual copies) carry their fixed kernel value 1 at the centre.
    r = NeuralGraph.from_module(TanhResidualMLP(), kmax=3)
    fr = slot_features(r, torch.zeros(r.num_edges, 9 * F))
    ident = r.edge_kind == EDGE_IDENTITY
    assert ident.any() and bool((fr[ident][:, 4, F] == 1).all())
    assert bool((fr[ident][:, 4, F + 1 + EDGE_IDENTITY] == 1).all())


@pytest.mark.parametrize("opts", OPTIONS, ids=OPT_IDS)
def test_gradients_reach_every_parameter(opts):
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4, 2))  # flatten copies use the spatial embedding
    g = NeuralGraph.from_module(model, example_input=torch.randn(1, 2, 6, 6), kmax=3)
    node, edge = _features(model, g)
    enc = _encoder(3, **opts)
    x, e = enc(g, node, edge)
    (x.square().sum() + e.sin().sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dense_density", [0.0, 2.0], ids=["dense", "per-edge"])
def test_second_order_gradients_are_finite(dense_density):
    model = ResidualCNN(0)
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _features(model, g)
    edge.requires_grad_(True)
    enc = _encoder(3, aggregation="mean", dense_density=dense_density)
    x, e = enc(g, node, edge)
    (grad,) = torch.autograd.grad((x.square().sum() + e.square().sum()), edge, create_graph=True)
    grad.square().sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(q).all() for q in grads)
    assert sum(q.abs().sum() for q in grads) > 0


def test_fixed_seed_is_reproducible():
    model = mixed_kernel_cnn(0)
    g = NeuralGraph.from_module(model, kmax=5)
    node, edge = _features(model, g)
    a, b = _encoder(5, seed=3)(g, node, edge), _encoder(5, seed=3)(g, node, edge)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = _encoder(5, seed=4)(g, node, edge)
    assert not torch.equal(a[0], c[0])


def test_shapes_and_bad_inputs():
    model = mlp(0)
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _features(model, g)
    enc = _encoder(3)
    x, e = enc(g, node, edge)
    assert x.shape == (g.num_nodes, HIDDEN) and e.shape == (g.num_edges, HIDDEN)
    with pytest.raises(ValueError, match="node_feats"):
        enc(g, node[:, :1], edge)
    with pytest.raises(ValueError, match="edge_feats"):
        enc(g, node, edge[:-1])
    with pytest.raises(ValueError, match="kmax"):
        enc(NeuralGraph.from_module(model, kmax=1), node, edge)
    with pytest.raises(ValueError, match="multiple"):
        DynamicGraphEncoder(F, 7, kmax=3)
    for bad in ({"aggregation": "max"}, {"recurrence": "lstm"}, {"depth": 0}, {"dense_density": -1.0},
                {"rounds": 0}, {"rounds": 1.5}, {"rounds": True}, {"heads": "kernel"}, {"heads": None}):
        with pytest.raises(ValueError):
            DynamicGraphEncoder(F, 9 * F, kmax=3, **bad)
    with pytest.raises(ValueError, match=r"heads must be one of \('slot', 'shared'\), got 'multi'"):
        DynamicGraphEncoder(F, 9 * F, kmax=3, heads="multi")


def test_more_rounds_add_traversals_and_read_the_first_rounds_memories():
    """``rounds=2`` keeps round 1's modules under their names (a 1-round checkpoint loads into its first round),
    adds a forward and backward pair, and the second round starts from the first one's final memories."""
    model = mlp(0)
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _features(model, g)
    torch.manual_seed(0)
    one = _encoder(3, bidirectional=True)
    torch.manual_seed(0)
    two = _encoder(3, bidirectional=True, rounds=2)
    assert set(one.state_dict()) < set(two.state_dict())
    assert {k.split(".")[0] for k in set(two.state_dict()) - set(one.state_dict())} == {"later_rounds"}
    assert len(two.later_rounds) == 1 and [t.reverse for t in two.later_rounds[0]] == [False, True]
    assert "rounds=2" in two.extra_repr() and "rounds" not in one.extra_repr()
    two.load_state_dict(one.state_dict(), strict=False)
    fwd1, bwd1 = one._memories(g, node, edge)
    fwd2, bwd2 = two._memories(g, node, edge)
    plan = _Plan(g, "dense", two.dense_density)
    inputs = _LayerInputs(plan, edge.reshape(g.num_edges * g.kernel_slots, -1))
    again = two.later_rounds[0][0](g, plan, bwd1, inputs)  # round 2's forward from round 1's final memories
    torch.testing.assert_close(fwd2, again)
    torch.testing.assert_close(bwd2, two.later_rounds[0][1](g, plan, again, inputs))
    assert not torch.allclose(fwd2, fwd1)


@pytest.mark.parametrize("dense_density", [0.0, 2.0], ids=["dense", "per-edge"])
@pytest.mark.parametrize("model_name", ["mixed_kernel_cnn", "residual_cnn"])
def test_shared_heads_are_the_slot_message_with_tied_heads(model_name, dense_density):
    """``heads="shared"`` has one message map ``W`` per traversal (later rounds included) where ``"slot"`` has one
    per kernel slot; copying ``W`` into every slot of a ``"slot"`` encoder with the same other weights gives the same
    embeddings, so the ablation changes the message only by untying its heads. Every other parameter keeps its
    name and shape (a checkpoint of the default encoder is a ``"slot"`` one)."""
    make, kmax, _ = MODELS[model_name]
    model = make()
    g = NeuralGraph.from_module(model, kmax=kmax)
    node, edge = _features(model, g)
    K = kmax * kmax
    shared = _encoder(kmax, seed=1, heads="shared", rounds=2, dense_density=dense_density)
    slot = _encoder(kmax, seed=2, rounds=2, dense_density=dense_density)
    assert shared.heads == "shared" and "heads='shared'" in shared.extra_repr() and "heads" not in slot.extra_repr()
    sources = [k for k in slot.state_dict() if k.endswith("message.source.weight")]
    assert len(sources) == 4  # forward and backward, two rounds
    big, small = slot.state_dict(), shared.state_dict()
    assert big.keys() == small.keys()
    assert all(big[k].shape == small[k].shape for k in big if k not in sources)
    assert all(big[k].shape == (K * HIDDEN, HIDDEN) and small[k].shape == (HIDDEN, HIDDEN) for k in sources)
    # Slot k's map is rows k*d .. (k+1)*d of ``source`` (KernelMessage.project): W repeated K times.
    slot.load_state_dict({k: v.repeat(K, 1) if k in sources else v for k, v in small.items()})
    x0, e0 = shared(g, node, edge)
    x1, e1 = slot(g, node, edge)
    torch.testing.assert_close(x0, x1, rtol=0, atol=1e-10)
    torch.testing.assert_close(e0, e1, rtol=0, atol=1e-10)
    # Untied heads give another message (the comparison is not vacuous): flip the centre slot's map, which every
    # layer uses.
    with torch.no_grad():
        slot.forward_traversal.message.source.weight.view(K, HIDDEN, HIDDEN)[K // 2].mul_(-1.0)
    assert (slot(g, node, edge)[0] - x0).abs().max() > 1e-4
