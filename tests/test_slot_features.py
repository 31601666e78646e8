"""Slot-sparse edge features (``NeuralGraph.scatter_slots`` -> ``SlotFeatures``) give every encoder exactly what
the dense ``[E, kmax**2 * F]`` features give: same embeddings and same gradients, for MLPs (one occupied slot per
edge), CNNs with mixed kernel sizes, residual and normalisation edges, and batches of graphs; and the graph-side
pieces (``dense``, ``project``, ``gather_flat``) match their dense definitions."""
from __future__ import annotations

import pytest
import torch

from l2o.encoders import build_encoder
from l2o.graph import NeuralGraph, SlotFeatures
from model_zoo import ResidualCNN, ResidualMLP, bn_cnn, mixed_kernel_cnn, mlp

F = 3
HIDDEN = 8


def _batch_of_two() -> tuple[NeuralGraph, int]:
    return NeuralGraph.batch([NeuralGraph.from_module(mlp(0), kmax=3),
                              NeuralGraph.from_module(ResidualCNN(1), kmax=3)]), 3


GRAPHS = {  # name -> () -> (graph, kmax)
    "mlp": lambda: (NeuralGraph.from_module(mlp(0), kmax=3), 3),
    "residual_mlp": lambda: (NeuralGraph.from_module(ResidualMLP(0), kmax=3), 3),
    "mixed_kernel_cnn": lambda: (NeuralGraph.from_module(mixed_kernel_cnn(0), kmax=5), 5),
    "residual_cnn": lambda: (NeuralGraph.from_module(ResidualCNN(0), kmax=3), 3),
    "bn_cnn": lambda: (NeuralGraph.from_module(bn_cnn(0), kmax=3), 3),
    "batch": _batch_of_two,
}
ENCODERS = [
    ("ng-gnn", {}), ("ng-gnn", {"shared_reverse": True}), ("ng-gnn", {"bidirectional": False}),
    ("ng-t", {}), ("nfn", {}),
    ("dng", {}), ("dng", {"dense_density": 2.0}), ("dng", {"dense_density": 0.0}),
    ("dng", {"aggregation": "mean", "bidirectional": False}),
]
ENC_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in ENCODERS]


def _flat(graph: NeuralGraph, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(graph.num_param_elements, F, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_slot_features_stand_for_the_dense_edge_features(graph_name):
    graph, _ = GRAPHS[graph_name]()
    flat = _flat(graph)
    node, edge = graph.scatter_flat(flat)
    node_s, slots = graph.scatter_slots(flat)
    assert isinstance(slots, SlotFeatures)
    torch.testing.assert_close(node_s, node, rtol=0, atol=0)
    dense = edge.reshape(graph.num_edges, -1)
    torch.testing.assert_close(slots.dense(), dense, rtol=0, atol=0)
    weight = torch.randn(5, dense.shape[1], dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(slots.project(weight, bias), dense @ weight.t() + bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slots.project(weight), dense @ weight.t(), rtol=1e-12, atol=1e-12)
    # gather_flat (no cat of node and edge rows) against its definition
    n_emb = torch.randn(graph.num_nodes, 4, dtype=torch.float64)
    e_emb = torch.randn(graph.num_edges, 4, dtype=torch.float64)
    want = torch.cat([n_emb, e_emb]).index_select(0, graph.elem_owner)
    torch.testing.assert_close(graph.gather_flat(n_emb, e_emb), want, rtol=0, atol=0)


@pytest.mark.parametrize("graph_name", list(GRAPHS))
@pytest.mark.parametrize("name,opts", ENCODERS, ids=ENC_IDS)
def test_encoders_agree_on_sparse_and_dense_edge_features(name, opts, graph_name):
    graph, kmax = GRAPHS[graph_name]()
    torch.manual_seed(0)
    enc = build_encoder(name, F, kmax * kmax * F, hidden=HIDDEN, depth=2, kmax=kmax, **opts).double()
    flat = _flat(graph).requires_grad_(True)
    node, edge = graph.scatter_flat(flat)
    out_dense = enc(graph, node, edge.reshape(graph.num_edges, -1))
    node_s, slots = graph.scatter_slots(flat)
    out_sparse = enc(graph, node_s, slots)
    for a, b in zip(out_sparse, out_dense):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Same gradients w.r.t. the features and every encoder weight (meta-training differentiates through this).
    probe = [torch.randn_like(t) for t in out_dense]
    params = [p for p in enc.parameters()]
    g_dense = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out_dense, probe)), [flat, *params],
                                  allow_unused=True)
    g_sparse = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out_sparse, probe)), [flat, *params],
                                   allow_unused=True)
    for a, b in zip(g_sparse, g_dense):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["ng-gnn", "dng"])
def test_fourier_features_fall_back_to_the_dense_form(name):
    graph, kmax = GRAPHS["mixed_kernel_cnn"]()
    torch.manual_seed(0)
    enc = build_encoder(name, F, kmax * kmax * F, hidden=HIDDEN, depth=1, kmax=kmax, fourier=4).double()
    flat = _flat(graph)
    node, edge = graph.scatter_flat(flat)
    node_s, slots = graph.scatter_slots(flat)
    for a, b in zip(enc(graph, node_s, slots), enc(graph, node, edge.reshape(graph.num_edges, -1))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_slot_features_of_another_graph_are_refused():
    g1, _ = GRAPHS["mlp"]()
    g2, _ = GRAPHS["mlp"]()
    enc = build_encoder("nfn", F, 9 * F, hidden=HIDDEN, depth=1, kmax=3).double()
    node, slots = g1.scatter_slots(_flat(g1))
    with pytest.raises(ValueError, match="another graph"):
        enc(g2, node, slots)
    with pytest.raises(ValueError, match=r"scatter_slots expects \[P="):
        g1.scatter_slots(torch.zeros(3, F))


def test_weight_tensors_are_projected_as_views():
    """Linear weights (centre slot) and conv kernels (all their slots) fill their edges in order: one product per
    tensor on a view of its rows, no gather or scatter."""
    graph = NeuralGraph.from_module(mixed_kernel_cnn(0), kmax=5)
    index = graph.slot_index()
    assert index.groups == ()
    slots = [seg[4] for seg in index.segments]
    assert slots == [tuple(range(25)), tuple(k for k in range(25) if 1 <= k // 5 <= 3 and 1 <= k % 5 <= 3),
                     (12,), (12,)]


@pytest.mark.parametrize("name,opts", ENCODERS, ids=ENC_IDS)
@pytest.mark.parametrize("graph_name", ["mlp", "residual_cnn"])
def test_encode_projected_is_forward_then_the_map(name, opts, graph_name):
    """DNG folds the map into its edge decoder (and its edge input into the feature projection): same result."""
    graph, kmax = GRAPHS[graph_name]()
    torch.manual_seed(0)
    enc = build_encoder(name, F, kmax * kmax * F, hidden=HIDDEN, depth=2, kmax=kmax, **opts).double()
    weight = torch.randn(5, HIDDEN, dtype=torch.float64)
    node, slots = graph.scatter_slots(_flat(graph))
    want = [t @ weight.t() for t in enc(graph, node, slots)]
    for a, b in zip(enc.encode_projected(graph, node, slots, weight), want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_project_accumulates_into_a_given_tensor():
    graph, _ = GRAPHS["residual_cnn"]()
    slots = graph.scatter_slots(_flat(graph))[1]
    weight = torch.randn(4, slots.edge_dim, dtype=torch.float64)
    base = torch.randn(graph.num_edges, 4, dtype=torch.float64)
    want = slots.dense() @ weight.t() + base
    torch.testing.assert_close(slots.project(weight, into=base.clone()), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slots.project(weight, base), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="either bias or into"):
        slots.project(weight, base, into=base.clone())


HEADS = {"modulated": dict(adam_residual=True, adam_scale=1.0, additive=False, relative=True),
         "additive": dict(adam_residual=True, adam_scale=0.5, relative=True),
         "mlp": dict(inputs="reference", step_rule="mlp", head_layers=3, layer_scale=False)}


@pytest.mark.parametrize("steps", ["one", "per-element"])
@pytest.mark.parametrize("chunk_rows", [None, 7], ids=["whole", "chunks-of-7"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("family", ["dng", "ng-gnn", "ff"])
def test_update_is_the_same_with_and_without_autograd(family, head, chunk_rows, steps, monkeypatch):
    """The no-grad step (in-place activations, only the head outputs in use, and the per-element MLPs in row chunks:
    7 rows leaves a partial last chunk) computes what meta-training does, also with per-element step counts (tasks
    at different steps updated together: per-row time features)."""
    import l2o.runtime
    from l2o.optim import OptimizerConfig, ParamContext, build_optimizer

    if chunk_rows is not None:
        monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", chunk_rows)
    graph = NeuralGraph.from_module(ResidualCNN(0), kmax=3)
    ctx = ParamContext.for_graph(graph)
    torch.manual_seed(0)
    extra = dict(hidden=8) if family != "ff" else {}
    opt = build_optimizer(OptimizerConfig(family=family, head_hidden=8, **extra, **HEADS[head])).double()
    torch.nn.init.normal_(opt.head.out.weight, std=0.5)  # the Adam-residual head starts at zero: make the MLP count
    p = _flat(graph)[:, 0].clone()
    g = _flat(graph, seed=1)[:, 0] * 1e-2
    state = opt.init_state(ctx, p)
    if steps == "per-element":
        state["step"] = torch.randint(0, 50, p.shape, generator=torch.Generator().manual_seed(2)).to(state["step"])
    with torch.no_grad():
        fast, _ = opt.update(ctx, p, g, state)
    ref, _ = opt.update(ctx, p.requires_grad_(True), g, state)
    torch.testing.assert_close(fast, ref.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("graph_name", ["mlp", "mixed_kernel_cnn", "batch"])
def test_rows_outside_segments_are_scattered_by_slot(graph_name, monkeypatch):
    """The general path (rows grouped by kernel slot, gathered and scattered) gives the same features and products
    as the per-tensor views it stands in for when a tensor does not fill its edges in order."""
    import l2o.graph.neural_graph as ng

    monkeypatch.setattr(ng, "_segment", lambda *args: None)
    graph, kmax = GRAPHS[graph_name]()
    index = graph.slot_index()
    assert index.segments == () and index.groups
    flat = _flat(graph)
    slots = graph.scatter_slots(flat)[1]
    dense = graph.scatter_flat(flat)[1].reshape(graph.num_edges, -1)
    torch.testing.assert_close(slots.dense(), dense, rtol=0, atol=0)
    weight = torch.randn(5, dense.shape[1], dtype=torch.float64)
    torch.testing.assert_close(slots.project(weight), dense @ weight.t(), rtol=1e-12, atol=1e-12)
    n_emb = torch.randn(graph.num_nodes, 4, dtype=torch.float64)
    e_emb = torch.randn(graph.num_edges, 4, dtype=torch.float64)
    want = torch.cat([n_emb, e_emb]).index_select(0, graph.elem_owner)
    torch.testing.assert_close(graph.gather_flat(n_emb, e_emb), want, rtol=0, atol=0)
    torch.manual_seed(0)
    enc = build_encoder("dng", F, kmax * kmax * F, hidden=HIDDEN, depth=2, kmax=kmax).double()
    node = graph.scatter_flat(flat)[0]
    for a, b in zip(enc(graph, node, slots), enc(graph, node, dense)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_row_chunks_cover_the_rows_in_order_and_only_without_autograd(monkeypatch):
    import l2o.runtime
    from l2o.runtime import row_chunks

    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", 4)
    cpu = torch.device("cpu")
    with torch.no_grad():
        assert row_chunks(10, cpu) == [(0, 4), (4, 8), (8, 10)]
        assert row_chunks(4, cpu) == [(0, 4)]
        assert row_chunks(0, cpu) == [(0, 0)]
    assert row_chunks(10, cpu) == [(0, 10)]  # autograd would keep every chunk's activations: one chunk


@pytest.mark.parametrize("steps", ["one", "per-element"])
@pytest.mark.parametrize("inputs", ["adam", "reference", "reference+v"])
def test_no_grad_features_are_the_autograd_features_exactly(inputs, steps, monkeypatch):
    """The optimizer step makes the log/sign features chunk by chunk (64 rows here: a partial last chunk) from the
    rows of the state (a ComputedRows: no [P, F] block): the same values, bit for bit, on both sides of the e^-p
    threshold, at zero, and with per-element step counts (sliced with the rows)."""
    import l2o.runtime
    from l2o.optim.features import FeatureConfig, feature_rows, init_moments, param_features, update_moments
    from l2o.runtime import ComputedRows

    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", 64)
    cfg = FeatureConfig(inputs=inputs)
    P = 500
    p = torch.randn(P, generator=torch.Generator().manual_seed(0))
    g = torch.randn(P, generator=torch.Generator().manual_seed(1)) * torch.logspace(-9, 1, P)
    g[::7] = 0.0
    state = init_moments(P, cfg=cfg)
    for _ in range(3):
        state = update_moments(g, state, cfg)
    if steps == "per-element":
        state["step"] = torch.randint(1, 50, (P,), generator=torch.Generator().manual_seed(2)).float()
    with torch.enable_grad():
        want = param_features(None, p, g, state, cfg)
    with torch.no_grad():
        lazy = feature_rows(None, p, g, state, cfg)
        got = param_features(None, p, g, state, cfg)
    assert isinstance(lazy, ComputedRows) and lazy.shape == (P, cfg.num_features)
    assert torch.equal(lazy.rows(100, 164), want[100:164])
    assert got.shape == (P, cfg.num_features)
    assert torch.equal(got, want)
    assert (want[:, 1] == -1).any() and (want[:, 1] > -1).any()  # the gradient column takes both branches


@pytest.mark.parametrize("family", ["dng", "ng-gnn"])
@pytest.mark.parametrize("model", [ResidualCNN, mlp], ids=["cnn", "mlp"])
def test_step_gathers_embeddings_per_chunk(model, family):
    """Without autograd the head gets the per-element embedding as a row source (no [P, hidden] copy): a kernel
    network's as GatheredRows of the projected [N + E, hidden] table, an MLP's (about one element per edge) as
    ProjectedRows, each chunk's node / edge states projected on demand (DNG folds the projection into its decoder:
    the table always). The rows it yields are the autograd path's gathered embedding, for any row range: within
    one tensor (a view of the states) or across tensors (gathered)."""
    from l2o.optim import OptimizerConfig, ParamContext, build_optimizer
    from l2o.optim.features import param_features, update_moments
    from l2o.runtime import GatheredRows, ProjectedRows

    graph = NeuralGraph.from_module(model(0), kmax=3)
    ctx = ParamContext.for_graph(graph)
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family=family, hidden=8, head_hidden=8)).double()
    p = _flat(graph)[:, 0].clone()
    state = update_moments(_flat(graph, seed=1)[:, 0] * 1e-2, opt.init_state(ctx, p), opt.features)
    feats = param_features(ctx, p, p * 0, state, opt.features)
    want, _ = opt.embed(ctx, feats, state)
    with torch.no_grad():
        got, _ = opt.embed(ctx, feats, state)
    assert isinstance(got, ProjectedRows if (model is mlp and family == "ng-gnn") else GatheredRows)
    rows = got.rows(0, ctx.num_elements)
    assert rows.shape == want.shape
    torch.testing.assert_close(rows, want.detach(), rtol=1e-12, atol=1e-12)
    for r0, r1 in ((5, 12), (0, 3), (30, 31), (ctx.num_elements - 4, ctx.num_elements)):
        torch.testing.assert_close(got.rows(r0, r1), want.detach()[r0:r1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.rows(r0, r1), want.detach()[r0:r1], rtol=1e-12, atol=1e-12)  # cached plan


@pytest.mark.parametrize("family", ["ng-gnn", "ng-t", "nfn", "dng"])
@pytest.mark.parametrize("model", [ResidualCNN, mlp], ids=["cnn", "mlp"])
def test_streamed_features_give_the_held_features_update(model, family, device, monkeypatch):
    """With the features streamed (on a GPU always; on the CPU with ``l2o.runtime.CPU_STREAM_ROWS`` lowered) the
    encoder's input projection makes them chunk by chunk (small chunks here, cut at whole edges of 9-slot kernels)
    and the head makes them again: the same update as the CPU step with the [P, F] block held. DNG reads every row
    at once and keeps the tensor either way."""
    import l2o.runtime
    from l2o.optim import OptimizerConfig, ParamContext, build_optimizer
    from l2o.optim.features import update_moments

    graph = NeuralGraph.from_module(model(0), kmax=3)
    ctx = ParamContext.for_graph(graph)
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family=family, hidden=8, head_hidden=8, relative=True,
                                          step_rule="mlp")).double()
    p = _flat(graph)[:, 0].clone()
    g = _flat(graph, seed=1)[:, 0] * 1e-2
    state = update_moments(g, opt.init_state(ctx, p), opt.features)
    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", 20)
    with torch.no_grad():
        held, _ = opt.update(ctx, p, g, state)
        monkeypatch.setattr(l2o.runtime, "CPU_STREAM_ROWS", 0)
        monkeypatch.setattr(l2o.runtime, "CUDA_CHUNK_ROWS", 20)
        assert opt.embed_takes_tensor(ctx.num_elements, device) == (family == "dng")
        on = {k: v.to(device) for k, v in state.items()}
        streamed, _ = opt.to(device).update(ctx.to(device), p.to(device), g.to(device), on)
    tol = 1e-12 if device.type == "cpu" else 1e-9
    torch.testing.assert_close(streamed.cpu(), held, rtol=tol, atol=tol)


def _graph_nodes(root) -> list[str]:
    """Names of every autograd node reachable from ``root`` (a grad_fn)."""
    seen, stack, names = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack += [n for n, _ in node.next_functions]
    return names


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_autograd_paths_match_the_definitions_without_slice_writes(graph_name):
    """Under autograd (meta-training) ``project``, ``dense`` and ``gather_flat`` take one op per kernel slot instead
    of one in-place slice write per parameter tensor: same values and gradients as the dense definitions, and no
    ``CopySlices`` node (each would clone the whole gradient in the backward: quadratic in a batch's tasks)."""
    graph, _ = GRAPHS[graph_name]()
    flat = _flat(graph).requires_grad_(True)
    node_s, slots = graph.scatter_slots(flat)
    dense_ref = graph.scatter_flat(flat)[1].reshape(graph.num_edges, -1)
    weight = torch.randn(5, dense_ref.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    n_emb = torch.randn(graph.num_nodes, 4, dtype=torch.float64, requires_grad=True)
    e_emb = torch.randn(graph.num_edges, 4, dtype=torch.float64, requires_grad=True)
    outs = {"dense": (slots.dense(), dense_ref),
            "project": (slots.project(weight, bias), dense_ref @ weight.t() + bias),
            "gather_flat": (graph.gather_flat(n_emb, e_emb),
                            torch.cat([n_emb, e_emb]).index_select(0, graph.elem_owner))}
    with torch.no_grad():  # the optimizer step's path: the same values
        outs["project"] += (graph.scatter_slots(flat)[1].project(weight, bias),)
        outs["gather_flat"] += (graph.gather_flat(n_emb, e_emb),)
    leaves = [flat, weight, bias, n_emb, e_emb]
    for name, (got, want, *no_grad) in outs.items():
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)
        for other in no_grad:
            torch.testing.assert_close(other, want, rtol=1e-12, atol=1e-12, msg=name)
        assert "CopySlices" not in _graph_nodes(got.grad_fn), name
        cot = torch.randn_like(want)
        g_got = torch.autograd.grad((got * cot).sum(), leaves, allow_unused=True, retain_graph=True)
        g_want = torch.autograd.grad((want * cot).sum(), leaves, allow_unused=True, retain_graph=True)
        for a, b in zip(g_got, g_want):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
