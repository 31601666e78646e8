"""NG-GNN and NG-T encoders: permutation equivariance, batching, gradients (first and second order), errors."""
from __future__ import annotations

import pytest
import torch

from l2o.encoders import build_encoder, graph_readout
from l2o.encoders.ng_gnn import NGGNN, NGGNNLayer, degree_scalers
from l2o.encoders.ng_transformer import NGTransformer
from l2o.graph import ROLE_INPUT, NeuralGraph
from model_zoo import ResidualCNN, bn_cnn, mixed_kernel_cnn, mlp

ENCODERS = {"ng-gnn": NGGNN, "ng-t": NGTransformer}
HIDDEN, DEPTH = 16, 2


def _inputs(model: torch.nn.Module, graph: NeuralGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """``node [N, 2]``, ``edge [E, K * 2]`` (float64): [param, param**2] scattered onto the graph."""
    feats = {n: torch.stack([p.detach(), p.detach() ** 2], -1).double() for n, p in model.named_parameters()}
    node, edge = graph.scatter(feats)
    return node, edge.reshape(graph.num_edges, -1)


def _encoder(name: str, kmax: int, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ENCODERS[name](2, 2 * kmax * kmax, hidden=HIDDEN, depth=DEPTH, kmax=kmax, **options).double()


# (model factory, {layer name: permutation}); the residual stream (stem, conv2) shares one permutation.
def _mlp_case(gen):
    return mlp(0), {"0": torch.randperm(7, generator=gen), "2": torch.randperm(6, generator=gen)}


def _cnn_case(gen):
    return mixed_kernel_cnn(0), {"0": torch.randperm(4, generator=gen), "2": torch.randperm(6, generator=gen),
                                 "4": torch.randperm(5, generator=gen)}


def _residual_case(gen):
    stream = torch.randperm(4, generator=gen)
    return ResidualCNN(0), {"stem": stream, "conv1": torch.randperm(4, generator=gen), "conv2": stream}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("case", [_mlp_case, _cnn_case, _residual_case], ids=["mlp", "cnn", "residual_cnn"])
def test_equivariant_to_hidden_permutations(name, case):
    model, perms = case(torch.Generator().manual_seed(3))
    g = NeuralGraph.from_module(model)
    node, edge = _inputs(model, g)
    node_map, edge_map = g.permutation(perms)
    assert not torch.equal(node_map, torch.arange(g.num_nodes))  # a real permutation
    enc = _encoder(name, g.kmax)
    x0, e0 = enc(g, node, edge)
    x1, e1 = enc(g, node[node_map], edge[edge_map])
    torch.testing.assert_close(x1, x0[node_map], rtol=0, atol=1e-8)
    torch.testing.assert_close(e1, e0[edge_map], rtol=0, atol=1e-8)
    torch.testing.assert_close(graph_readout(g, x1, e1), graph_readout(g, x0, e0), rtol=0, atol=1e-8)
    # The embeddings are not trivially constant (equivariance would then be vacuous).
    assert x0[g.node_role != ROLE_INPUT].std(0).min() > 1e-3


@pytest.mark.parametrize("name,options", [("ng-gnn", {}), ("ng-gnn", {"avg_log_deg": 2.0, "bidirectional": False}),
                                          ("ng-t", {}), ("ng-t", {"heads": 2, "bidirectional": False})])
def test_batch_matches_single_graphs(name, options):
    models = [mlp(1), ResidualCNN(2), bn_cnn(3)]
    graphs = [NeuralGraph.from_module(m, kmax=3) for m in models]
    batch = NeuralGraph.batch(graphs)
    feats = {f"{i}.{n}": torch.stack([p.detach(), p.detach() ** 2], -1).double()
             for i, m in enumerate(models) for n, p in m.named_parameters()}
    node, edge = batch.scatter(feats)
    enc = _encoder(name, 3, **options)
    xb, eb = enc(batch, node, edge.reshape(batch.num_edges, -1))
    readout = graph_readout(batch, xb, eb)
    for i, (m, g) in enumerate(zip(models, graphs)):
        x, e = enc(g, *_inputs(m, g))
        # Batching sorts stably by (layer, graph), so each graph keeps its own node and edge order.
        torch.testing.assert_close(xb[batch.node_graph == i], x, rtol=0, atol=1e-8)
        torch.testing.assert_close(eb[batch.edge_graph == i], e, rtol=0, atol=1e-8)
        torch.testing.assert_close(readout[i], graph_readout(g, x, e)[0], rtol=0, atol=1e-8)


def _loss(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    # Fixed random read-out weights: a non-symmetric function of every output entry.
    gen = torch.Generator().manual_seed(7)
    wx = torch.randn(x.shape[1], generator=gen, dtype=x.dtype)
    we = torch.randn(e.shape[1], generator=gen, dtype=e.dtype)
    return (torch.tanh(x @ wx) ** 2).mean() + (torch.tanh(e @ we) ** 2).mean()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_gradients_reach_every_parameter_and_second_order_is_finite(name):
    # bn_cnn's normalisation nodes have a single incoming (and its first conv's nodes a single outgoing) edge:
    # zero-variance std aggregates, where a sqrt without eps would give non-finite second derivatives.
    model = bn_cnn(0)
    g = NeuralGraph.from_module(model)
    node, edge = _inputs(model, g)
    node.requires_grad_(True)
    edge.requires_grad_(True)
    enc = _encoder(name, g.kmax)
    _loss(*enc(g, node, edge)).backward()
    zero = []
    for n, p in enc.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        if not p.grad.any():
            zero.append(n)
    # Only the spatial-position table may be unused (these models have no flatten copies).
    assert set(zero) <= {"embed.spatial.weight"}, zero

    # Second order, as in meta-training through a learned update: d/dtheta of |dL/d(theta, inputs)|^2.
    enc.zero_grad()
    params = [p for p in enc.parameters()]
    grads = torch.autograd.grad(_loss(*enc(g, node, edge)), params + [node, edge], create_graph=True)
    sum(gr.square().sum() for gr in grads).backward()
    for n, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert torch.isfinite(node.grad).all() and torch.isfinite(edge.grad).all()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_seeded_construction_is_deterministic(name):
    model = mlp(0)
    g = NeuralGraph.from_module(model, kmax=3)
    inputs = _inputs(model, g)
    a, b = _encoder(name, 3, seed=5), _encoder(name, 3, seed=5)
    xa, ea = a(g, *inputs)
    xb, eb = b(g, *inputs)
    assert torch.equal(xa, xb) and torch.equal(ea, eb)
    xa2, _ = a(g, *inputs)
    assert torch.equal(xa, xa2)
    c = _encoder(name, 3, seed=6)
    assert not torch.equal(c(g, *inputs)[0], xa)
    c.reset_parameters()  # re-initialises in place and still runs
    assert torch.isfinite(c(g, *inputs)[0]).all()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_wrong_inputs_raise(name):
    model = mlp(0)
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _inputs(model, g)
    enc = _encoder(name, 3)
    with pytest.raises(ValueError):
        enc(g, node[:-1], edge)
    with pytest.raises(ValueError):
        enc(g, node[:, :1], edge)
    with pytest.raises(ValueError):
        enc(g, node, edge[:, :-2])
    with pytest.raises(ValueError):
        enc(g, node, edge[:-1])
    with pytest.raises(ValueError):
        enc(g, node, edge.reshape(g.num_edges, 9, 2))
    g5 = NeuralGraph.from_module(model, kmax=5)
    with pytest.raises(ValueError):
        enc(g5, *_inputs(model, g5))
    with pytest.raises(ValueError):
        ENCODERS[name](2, 17, hidden=16, kmax=3)  # edge_in not a multiple of kmax**2
    with pytest.raises(ValueError):
        ENCODERS[name](2, 18, hidden=16, depth=0)
    if name == "ng-t":
        with pytest.raises(ValueError):
            NGTransformer(2, 18, hidden=18, heads=4)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_reverse_messages_reach_earlier_layers(name):
    # Changing only the last layer's weights changes first-layer embeddings iff messages also flow backward.
    model = mlp(0)
    g = NeuralGraph.from_module(model, kmax=3)
    node, edge = _inputs(model, g)
    last = g.edge_layer == g.num_layers - 1
    edge2 = edge.clone()
    edge2[last] += 1.0
    first = g.node_layer == 1
    for bidirectional, changes in ((True, True), (False, False)):
        enc = _encoder(name, 3, bidirectional=bidirectional)
        x1, x2 = enc(g, node, edge)[0], enc(g, node, edge2)[0]
        assert (not torch.allclose(x1[first], x2[first], rtol=0, atol=1e-10)) == changes


def test_pna_aggregation_and_degree_scaler():
    model = ResidualCNN(0)
    g = NeuralGraph.from_module(model)
    deg, amp = degree_scalers(g, g.edge_index, torch.float64)
    # delta is the mean log-degree of the graph: the amplification factors average to one.
    torch.testing.assert_close(amp.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(deg[g.node_role == ROLE_INPUT], torch.zeros_like(deg[g.node_role == ROLE_INPUT]))
    layer = NGGNNLayer(4, relations=1).double()
    msgs = torch.randn(g.num_edges, 4, dtype=torch.float64)
    out = layer.aggregate(msgs, g.edge_index[1], g.num_nodes, deg)
    assert out.shape == (g.num_nodes, 16)
    # Nodes without incoming edges (the inputs) get zeros from every aggregator.
    assert not out[g.node_role == ROLE_INPUT].any()
    i = int(g.edge_index[1, -1])
    m = msgs[g.edge_index[1] == i]
    want = torch.cat([m.mean(0), m.min(0).values, m.max(0).values, (m.var(0, unbiased=False) + layer.eps).sqrt()])
    torch.testing.assert_close(out[i], want)


@pytest.mark.parametrize("edge_form", ["dense", "slots"])
@pytest.mark.parametrize("options", [dict(), dict(bidirectional=False), dict(shared_reverse=True)],
                         ids=["two-relations", "forward-only", "shared-reverse"])
def test_ng_gnn_in_edge_chunks_equals_one_pass(options, edge_form, monkeypatch):
    """Without autograd on a graph of more edges than a row chunk, each layer goes through its edges in chunks (5
    edges here: a partial last chunk; the inputs have no incoming edge and the outputs none outgoing), and shared
    reverse edges from slot features are embedded straight into the edge states: the same node and edge states as
    the one-pass layers, which autograd uses."""
    import l2o.runtime

    model = mixed_kernel_cnn(0)
    graph = NeuralGraph.from_module(model, kmax=5)
    node, edge = _inputs(model, graph)
    if edge_form == "slots":
        params = dict(model.named_parameters())
        flat = torch.cat([torch.stack([params[n].detach(), params[n].detach() ** 2], -1).double().reshape(-1, 2)
                          for n in graph.param_names])
        node, edge = graph.scatter_slots(flat)
    enc = _encoder("ng-gnn", 5, **options)
    want = enc(graph, node, edge)
    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", 5)
    with torch.no_grad():
        got = enc(graph, node, edge)
    assert graph.num_edges > 5
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def _grouped_bn_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(16, 3))


@pytest.mark.parametrize("chunk_rows", [5, 12])
@pytest.mark.parametrize("options", [dict(), dict(shared_reverse=True)], ids=["two-relations", "shared-reverse"])
@pytest.mark.parametrize("case", ["residual", "bn", "grouped", "batch"])
def test_ng_gnn_dense_blocks_as_grids_equal_one_pass(case, options, chunk_rows, monkeypatch):
    """In the chunked path every dense block (``NeuralGraph.edge_blocks``) goes through as grids of whole output
    rows (one output row per piece at 5 rows, several at 12), its aggregates as reductions along one axis merged
    with the pieces of generic edges (norm, identity, grouped-conv) into the same nodes: the one-pass layers'
    states, also for a batch of two architectures."""
    import l2o.runtime

    models = {"residual": [ResidualCNN(0)], "bn": [bn_cnn(0)], "grouped": [_grouped_bn_cnn()],
              "batch": [mlp(0), mixed_kernel_cnn(1)]}[case]
    graphs = [NeuralGraph.from_module(m, kmax=5) for m in models]
    graph = graphs[0] if len(graphs) == 1 else NeuralGraph.batch(graphs)
    inputs = [_inputs(m, g) for m, g in zip(models, graphs)]
    node, edge = torch.cat([i[0] for i in inputs]), torch.cat([i[1] for i in inputs])
    assert any(d is not None for *_, d in graph.edge_blocks())
    enc = _encoder("ng-gnn", 5, **options)
    want = enc(graph, node, edge)
    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", chunk_rows)
    with torch.no_grad():
        got = enc(graph, node, edge)
    assert graph.num_edges > chunk_rows
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def test_registry_builds_both():
    assert isinstance(build_encoder("ng-gnn", 2, 18, hidden=8, depth=1), NGGNN)
    assert isinstance(build_encoder("ng-t", 2, 18, hidden=8, depth=1), NGTransformer)
