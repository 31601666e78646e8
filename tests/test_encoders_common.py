"""Properties every registered graph encoder must have (parametrised over ``l2o.encoders.ENCODERS``).

Hidden-neuron permutation equivariance (MLP, mixed-kernel CNN, residual CNN), invariance of the pooled readout,
batching graphs of different architectures equals encoding each alone, gradients reach every parameter,
seeded construction is reproducible, and bad inputs raise clear errors. Encoders whose constructor takes a
``bidirectional`` option are checked with it on and off, and with ``shared_reverse`` where they have it.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from l2o.encoders import ENCODERS, build_encoder, graph_readout
from l2o.graph import ROLE_HIDDEN, NeuralGraph
from model_zoo import ResidualCNN, mixed_kernel_cnn, mlp

HIDDEN, DEPTH, F = 16, 2, 2
ATOL = 1e-8


def _variants() -> list[tuple[str, dict]]:
    """(encoder name, extra options): every encoder, plus both directions where it has a ``bidirectional`` option."""
    out = []
    for name in sorted(ENCODERS):
        if "bidirectional" in inspect.signature(ENCODERS[name].__init__).parameters:
            out += [(name, {"bidirectional": True}), (name, {"bidirectional": False})]
        if "shared_reverse" in inspect.signature(ENCODERS[name].__init__).parameters:
            out.append((name, {"shared_reverse": True}))
        else:
            out.append((name, {}))
    return out


VARIANTS = _variants()
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in VARIANTS]

MODELS = {  # name -> (model factory, kmax, hidden-layer permutation ties)
    "mlp": (lambda: mlp(0), 3, {}),
    "mixed_kernel_cnn": (lambda: mixed_kernel_cnn(0), 5, {}),
    # The residual stream: stem's outputs are added to conv2's, so both share one permutation.
    "residual_cnn": (lambda: ResidualCNN(0), 3, {"conv2": "stem"}),
}


def _encoder(name: str, opts: dict, kmax: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(name, F, kmax * kmax * F, hidden=HIDDEN, depth=DEPTH, kmax=kmax, **opts).double()


def _features(model: torch.nn.Module, graph: NeuralGraph, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Per parameter ``[p, p**2]`` scattered onto the graph: node ``[N, 2]``, edge ``[E, K*2]`` (float64)."""
    feats = {prefix + n: torch.stack([p.detach(), p.detach() ** 2], -1).double() for n, p in model.named_parameters()}
    node, edge = graph.scatter(feats)
    return node, edge.reshape(graph.num_edges, -1)


def _hidden_perms(graph: NeuralGraph, ties: dict[str, str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random permutation of every hidden layer (by module path); tied layers reuse their partner's."""
    perms = {}
    for info in graph.layers[0]:
        start = int(graph.layer_node_ptr[info.index])
        if int(graph.node_role[start]) == ROLE_HIDDEN and info.name not in ties:
            perms[info.name] = torch.randperm(info.num_nodes, generator=gen)
    perms.update({name: perms[partner] for name, partner in ties.items()})
    return perms


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_hidden_permutation_equivariance(name, opts, model_name):
    make, kmax, ties = MODELS[model_name]
    model = make()
    graph = NeuralGraph.from_module(model, kmax=kmax)
    node, edge = _features(model, graph)
    node_map, edge_map = graph.permutation(_hidden_perms(graph, ties, torch.Generator().manual_seed(0)))
    assert not torch.equal(node_map, torch.arange(graph.num_nodes))  # the permutation is not trivial
    enc = _encoder(name, opts, kmax)
    x0, e0 = enc(graph, node, edge)
    x1, e1 = enc(graph, node[node_map], edge[edge_map])
    assert x0.shape == (graph.num_nodes, HIDDEN) and e0.shape == (graph.num_edges, HIDDEN)
    torch.testing.assert_close(x1, x0[node_map], atol=ATOL, rtol=0)
    torch.testing.assert_close(e1, e0[edge_map], atol=ATOL, rtol=0)
    torch.testing.assert_close(graph_readout(graph, x1, e1), graph_readout(graph, x0, e0), atol=ATOL, rtol=0)
    # The embeddings do depend on the weights (the check above is not vacuous).
    x2, _ = enc(graph, node, edge.roll(1, 0))
    assert not torch.allclose(x2, x0)


def _mixed_batch():
    models = [mlp(0), mixed_kernel_cnn(0), ResidualCNN(0)]
    graphs = [NeuralGraph.from_module(m, kmax=5) for m in models]
    return models, graphs


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_batch_equals_single(name, opts):
    models, graphs = _mixed_batch()
    batch = NeuralGraph.batch(graphs)
    node, edge = batch.scatter({f"{gi}.{n}": torch.stack([p.detach(), p.detach() ** 2], -1).double()
                                for gi, m in enumerate(models) for n, p in m.named_parameters()})
    enc = _encoder(name, opts, 5)
    xb, eb = enc(batch, node, edge.reshape(batch.num_edges, -1))
    pooled = graph_readout(batch, xb, eb)
    for gi, (model, graph) in enumerate(zip(models, graphs)):
        # Batching keeps each graph's nodes and edges in their own order (sorted by layer, stable).
        x, e = enc(graph, *_features(model, graph))
        torch.testing.assert_close(xb[batch.node_graph == gi], x, atol=ATOL, rtol=0)
        torch.testing.assert_close(eb[batch.edge_graph == gi], e, atol=ATOL, rtol=0)
        torch.testing.assert_close(pooled[gi: gi + 1], graph_readout(graph, x, e), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(name, opts):
    models, graphs = _mixed_batch()
    batch = NeuralGraph.batch(graphs)
    node, edge = batch.scatter({f"{gi}.{n}": torch.stack([p.detach(), p.detach() ** 2], -1).double()
                                for gi, m in enumerate(models) for n, p in m.named_parameters()})
    enc = _encoder(name, opts, 5)
    x, e = enc(batch, node, edge.reshape(batch.num_edges, -1))
    gen = torch.Generator().manual_seed(1)
    # Random projections, not plain sums: a sum of normalised outputs can have an identically zero gradient.
    loss = (x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() \
        + (e * torch.randn(e.shape, generator=gen, dtype=e.dtype)).sum()
    loss.backward()
    params = dict(enc.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    # Whole tensors: rows of lookup tables for positions / activations these graphs lack stay at zero.
    zero = [n for n, p in params.items() if not p.grad.any()]
    assert len(zero) <= 0.1 * len(params), f"zero gradient for {zero}"


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_seeded_construction_is_reproducible(name, opts):
    model = ResidualCNN(0)
    graph = NeuralGraph.from_module(model, kmax=3)
    feats = _features(model, graph)
    a, b = _encoder(name, opts, 3, seed=7), _encoder(name, opts, 3, seed=7)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for ta, tb in zip(a(graph, *feats), b(graph, *feats)):
        assert torch.equal(ta, tb)
    c = _encoder(name, opts, 3, seed=8)
    assert not torch.equal(c(graph, *feats)[0], a(graph, *feats)[0])


@pytest.mark.parametrize("name,opts", VARIANTS, ids=IDS)
def test_bad_inputs_raise(name, opts):
    model = mixed_kernel_cnn(0)
    graph = NeuralGraph.from_module(model, kmax=5)
    node, edge = _features(model, graph)
    enc = _encoder(name, opts, 5)
    with pytest.raises(ValueError):
        enc(graph, node[:, :1], edge)
    with pytest.raises(ValueError):
        enc(graph, node, edge[:, :-2])
    with pytest.raises(ValueError):
        enc(graph, node[:-1], edge)
    with pytest.raises(ValueError):
        enc(graph, node, edge[:-1])
    with pytest.raises(ValueError):  # the graph was built for kmax=5, the encoder for kmax=3
        _encoder(name, opts, 3)(graph, node, edge[:, : 9 * F])
    with pytest.raises(ValueError):  # edge_in not a multiple of kmax**2
        build_encoder(name, F, 9 * F + 1, hidden=HIDDEN, depth=DEPTH, kmax=3, **opts)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_build_encoder_by_name(name):
    enc = build_encoder(name, 3, 9 * 3, hidden=HIDDEN, depth=1, kmax=3)
    assert isinstance(enc, ENCODERS[name])
    assert (enc.node_in, enc.edge_in, enc.hidden, enc.depth, enc.kmax) == (3, 27, HIDDEN, 1, 3)


def test_unknown_encoder_name():
    with pytest.raises(KeyError):
        build_encoder("no-such-encoder", 2, 18)
