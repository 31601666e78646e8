"""Weight-space tasks: symmetry of every task model, the metrics, and tiny end-to-end runs on synthetic zoos.

Permutations are applied to the *networks* (rows / biases of a layer and columns of the next, ``model_zoo``'s
``permute_sequential``), never through the neural graph, so the tests compare two independent descriptions of the
same symmetry. Models run in float64 so the comparisons can be tight.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from model_zoo import permute_sequential
from tasks.weight_space.batching import Batcher, Normalizer, ParamTable, params_to_rows, rows_to_params
from tasks.weight_space.task_models import (GRAPH_ENCODERS, AccuracyPredictor, FlatEditor, GraphBackbone,
                                            ProbeFeatures, WeightSpaceClassifier, WeightSpaceEditor, build_features)
from tasks.weight_space.siren import Siren, make_coords, render
from tasks.weight_space.synthetic import synthetic_cnn_zoo, synthetic_inr_zoo
from tasks.weight_space.task_runs import (cnn_task_data, default_spec, dilate, inr_task_data, kendall_tau,
                                          r2_score, record_path, run)

ATOL = 1e-9
STAT_ATOL = 1e-5  # StatNN's statistics are computed in float32 (summation order differs under a permutation)


# ------------------------------------------------------------------------------------------------ helpers
def _siren_table(n: int = 3, seed: int = 0) -> tuple[Siren, ParamTable]:
    """``n`` random SIRENs (2-6-5-1) and, appended, a hidden-permuted copy of each (members n .. 2n-1)."""
    torch.manual_seed(seed)
    template = Siren(hidden=(6, 5))
    gen = torch.Generator().manual_seed(seed + 1)
    models = [Siren(hidden=(6, 5), generator=gen) for _ in range(n)]
    perms = [{0: torch.randperm(6, generator=gen), 2: torch.randperm(5, generator=gen)} for _ in range(n)]
    permuted = [Siren(hidden=(6, 5)) for _ in range(n)]
    for m, p, q in zip(models, perms, permuted):
        q.net = permute_sequential(m.net, p)
    params = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models + permuted])
              for name, _ in template.named_parameters()}
    return template, ParamTable.from_stacked(template, params, kmax=1), perms


def _double_batch(batcher: Batcher, idx):
    b = batcher.make(torch.as_tensor(idx))
    for f in ("node", "edge", "flat", "rows", "dense", "stats", "std", "std_rows"):
        setattr(b, f, getattr(b, f).double())
    return b


def _cnn_data():
    zoo = synthetic_cnn_zoo(n_archs=2, per_arch=4, seed=3)
    return zoo


# ------------------------------------------------------------------------------------------------ invariance
@pytest.mark.parametrize("name", list(GRAPH_ENCODERS) + ["statnn"])
def test_inr_classifier_invariant_to_hidden_permutations(name):
    template, table, _ = _siren_table()
    batcher = Batcher(table, Normalizer(table))
    torch.manual_seed(0)
    probes = ProbeFeatures(template, table.graphs[0], 5) if name in GRAPH_ENCODERS else None
    feats = build_features(name, kmax=1, n_outputs=1, flat_dim=table.flat.shape[1], stat_dim=batcher.stats.shape[1],
                           hidden=16, depth=2, baseline_hidden=32, probes=probes)
    model = WeightSpaceClassifier(feats, 10, head_hidden=16, image_pixels=16).double().eval()
    out = model(_double_batch(batcher, range(6)))
    atol = STAT_ATOL if name == "statnn" else ATOL
    torch.testing.assert_close(out["logits"][3:], out["logits"][:3], atol=atol, rtol=0)
    torch.testing.assert_close(out["recon"][3:], out["recon"][:3], atol=atol, rtol=0)
    assert not torch.allclose(out["logits"][0], out["logits"][1])  # depends on the input network


def test_flat_mlp_is_not_invariant():
    """The baseline the graph encoders are compared with really lacks the symmetry (the test above is not vacuous)."""
    _, table, _ = _siren_table()
    batcher = Batcher(table, Normalizer(table))
    feats = build_features("mlp", kmax=1, n_outputs=1, flat_dim=table.flat.shape[1], stat_dim=batcher.stats.shape[1],
                           baseline_hidden=32)
    out = WeightSpaceClassifier(feats, 10, head_hidden=16).double()(_double_batch(batcher, range(6)))["logits"]
    assert not torch.allclose(out[3:], out[:3], atol=1e-6)


@pytest.mark.parametrize("name", list(GRAPH_ENCODERS) + ["statnn"])
def test_accuracy_predictor_invariant_on_cnns(name):
    zoo = _cnn_data()
    data = cnn_task_data(zoo)
    table = data.train.table
    # Member 0 and its hidden-permuted copy, as one more architecture-0 member of a new table.
    spec = zoo.spec(0)
    model0 = zoo.module(0)
    n_conv = len(spec.channels)
    gen = torch.Generator().manual_seed(5)
    perms = {2 * i: torch.randperm(c, generator=gen) for i, c in enumerate(spec.channels)}
    permuted = permute_sequential(model0, perms)
    rows = torch.stack([torch.cat([t.reshape(-1) for t in m.state_dict().values()]) for m in (model0, permuted)])
    assert not torch.equal(rows[0], rows[1])
    arch0 = int(zoo.arch_index()[0])
    pair = ParamTable.from_state_rows(table.templates, torch.full((2,), arch0), rows, kmax=table.kmax,
                                      graphs=table.graphs)
    batcher = Batcher(pair, Normalizer(table))
    torch.manual_seed(0)
    feats = build_features(name, kmax=table.kmax, n_outputs=10, flat_dim=table.flat.shape[1],
                           stat_dim=batcher.stats.shape[1], hidden=16, depth=2, baseline_hidden=32)
    model = AccuracyPredictor(feats, head_hidden=16).double().eval()
    pred = model(_double_batch(batcher, [0, 1]))["logit"]
    assert n_conv >= 1 and perms
    torch.testing.assert_close(pred[1], pred[0], atol=STAT_ATOL if name == "statnn" else ATOL, rtol=0)


@pytest.mark.parametrize("name", list(GRAPH_ENCODERS))
def test_editor_equivariant_to_hidden_permutations(name):
    template, table, perms = _siren_table()
    batcher = Batcher(table, Normalizer(table))
    torch.manual_seed(0)
    editor = WeightSpaceEditor(GraphBackbone(name, 1, 16, 2, ProbeFeatures(template, table.graphs[0], 4)), 16)
    for head in (editor.edge_head, editor.node_head):  # non-zero outputs (they start at exactly zero)
        torch.nn.init.normal_(head[-1].weight, std=0.5)
    editor = editor.double().eval()
    batch = _double_batch(batcher, range(6))
    edited = editor(batch)["rows"]
    assert not torch.allclose(edited, batch.rows)
    graph = table.graphs[0]
    coords = make_coords(5, 5).double()
    images = render(template.double(), rows_to_params(graph, edited), coords)
    for i, perm in enumerate(perms):
        # Editing the permuted network == permuting the edited network, parameter by parameter.
        edited_i = Siren(hidden=(6, 5)).double()
        with torch.no_grad():
            for n, p in edited_i.named_parameters():
                p.copy_(rows_to_params(graph, edited[i: i + 1])[n][0])
        expect = permute_sequential(edited_i.net, perm)
        got = rows_to_params(graph, edited[3 + i: 4 + i])
        for n, p in expect.named_parameters():
            torch.testing.assert_close(got[f"net.{n}"][0], p.detach(), atol=ATOL, rtol=0)
        # Hence both edited INRs draw the same image.
        torch.testing.assert_close(images[3 + i], images[i], atol=1e-8, rtol=0)


def test_flat_editor_shapes_and_identity_at_init():
    _, table, _ = _siren_table()
    batcher = Batcher(table, Normalizer(table))
    batch = batcher.make(torch.arange(4))
    out = FlatEditor(table.flat.shape[1], 32)(batch)
    assert out["rows"].shape == batch.rows.shape
    torch.testing.assert_close(out["rows"], batch.rows)


# ------------------------------------------------------------------------------------------------ data plumbing
def test_probe_features_are_the_network_activations():
    template, table, _ = _siren_table()
    batcher = Batcher(table, Normalizer(table))
    probes = ProbeFeatures(template, table.graphs[0], 7)
    batch = batcher.make(torch.arange(6))
    feats = probes(batch)
    g = batch.graph
    out_nodes = g.node_role == 2
    expect = render(template, rows_to_params(table.graphs[0], batch.rows), probes.points.detach())[..., 0]
    torch.testing.assert_close(feats[out_nodes].detach(), expect, atol=1e-5, rtol=1e-5)
    in_nodes = g.node_role == 0
    torch.testing.assert_close(feats[in_nodes].detach(), probes.points.detach().T.repeat(6, 1))


@pytest.mark.parametrize("mixed", [False, True])
def test_batch_layout_and_state_order_roundtrip(mixed):
    zoo = _cnn_data()
    data = cnn_task_data(zoo)
    table = data.train.table
    norm = Normalizer(table)
    batcher = Batcher(table, norm, mixed=mixed)
    gen = torch.Generator().manual_seed(0)
    epochs = [batcher.batches(3, gen) for _ in range(2)]
    for batches in epochs:  # every member exactly once per epoch
        assert sorted(torch.cat(batches).tolist()) == list(range(len(table)))
    # Batch compositions (architecture tuples) repeat across epochs, so the batched graphs are reused.
    comps = [sorted(tuple(table.arch[b].tolist()) for b in batches) for batches in epochs]
    assert comps[0] == comps[1]
    if not mixed:
        assert all(len(set(c)) == 1 for c in comps[0])
    for idx in epochs[0]:
        batch = batcher.make(idx)
        # Biases sit on the nodes, weights on the edges: the normalised rows of each member, concatenated.
        parts = [norm(table.flat[i: i + 1], table.arch[i: i + 1])[0, : int(table.lengths[table.arch[i]])]
                 for i in idx.tolist()]
        node, edge = batch.graph.scatter_flat(torch.cat(parts).reshape(-1, 1))
        torch.testing.assert_close(batch.node, node)
        torch.testing.assert_close(batch.edge, edge.reshape(batch.graph.num_edges, -1))
        torch.testing.assert_close(batch.flat, torch.cat([table.flat[i, : int(table.lengths[table.arch[i]])]
                                                          for i in idx.tolist()]))
        delta = torch.randn(batch.flat.shape)
        edited = batch.edited_rows(delta)
        torch.testing.assert_close(edited[batch.mask], batch.flat + delta)
    assert len(batcher._graphs) == len(set(tuple(table.arch[b].tolist()) for b in epochs[0]))
    # Graph order -> state_dict order gives back the zoo's flat vectors.
    full_idx = torch.nonzero(zoo.split_id == 0).flatten()
    for j in range(len(table)):
        a = int(table.arch[j])
        back = table.state_rows(table.flat[j: j + 1], a)[0]
        torch.testing.assert_close(back, zoo.params(int(full_idx[j])).float())


def test_normalizer_standardises_each_tensor():
    _, table, _ = _siren_table(n=8)
    norm = Normalizer(table)
    z = norm(table.flat, table.arch)
    graph = table.graphs[0]
    for name, chunk in rows_to_params(graph, z).items():
        assert abs(float(chunk.mean())) < 1e-5, name
        assert abs(float(chunk.std(unbiased=False)) - 1) < 1e-4, name
    assert torch.equal(params_to_rows(graph, rows_to_params(graph, table.flat)), table.flat)


def test_dilation_is_a_3x3_max_filter():
    img = torch.zeros(1, 5, 5)
    img[0, 2, 2] = 1.0
    img[0, 0, 4] = 0.5
    out = dilate(img)[0]
    expect = torch.zeros(5, 5)
    expect[1:4, 1:4] = 1.0
    expect[0:2, 3:5] = torch.maximum(expect[0:2, 3:5], torch.tensor(0.5))
    torch.testing.assert_close(out, expect)


# ------------------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("x,y,tau", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3, 4, 5], [3, 1, 2, 5, 4], 0.4),  # 7 concordant, 3 discordant pairs
    ([1, 2, 2, 3], [1, 2, 3, 3], 0.8),  # C=4, D=0, one tie in x, one in y: 4 / sqrt(5 * 5)
    ([1, 1, 2, 2], [1, 2, 1, 2], 0.0),  # C=1, D=1
    ([1, 2, 3, 3], [1, 1, 2, 2], 4 / math.sqrt(5 * 4)),  # C=4, ties: x 1, y 2
])
def test_kendall_tau_b_by_hand(x, y, tau):
    got = kendall_tau(torch.tensor(x, dtype=torch.float), torch.tensor(y, dtype=torch.float))
    assert got == pytest.approx(tau, abs=1e-12)
    # Chunking does not change the result.
    assert kendall_tau(torch.tensor(x, dtype=torch.float), torch.tensor(y, dtype=torch.float), chunk=1) == pytest.approx(tau)


def test_kendall_tau_degenerate_and_r2():
    assert math.isnan(kendall_tau(torch.ones(4), torch.arange(4.0)))
    assert math.isnan(kendall_tau(torch.ones(1), torch.ones(1)))
    y = torch.tensor([0.1, 0.4, 0.5, 0.9])
    assert r2_score(y, y) == pytest.approx(1.0)
    assert r2_score(torch.full((4,), float(y.mean())), y) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def inr_zoo():
    return synthetic_inr_zoo(n_train=12, n_val=4, n_test=4, hidden=(6, 6), side=6)


@pytest.mark.parametrize("task,models", [("classify", ["dng", "mlp", "statnn"]), ("edit", ["nfn", "mlp"])])
def test_inr_tasks_end_to_end(tmp_path, inr_zoo, task, models):
    data = inr_task_data(inr_zoo, task)
    for model in models:
        spec = default_spec(task, "synthetic", model, seed=0, epochs=2, batch_size=4, probes=3, hidden=8, depth=1,
                            aux_recon=0.5 if task == "classify" else None)
        rec = run(spec, data=data, out_dir=tmp_path, progress=False, log=None)
        path = record_path(tmp_path, spec)
        assert path.exists() and json.loads(path.read_text())["metrics"] == rec["metrics"]
        assert rec["epochs"] == 2 and rec["train_size"] == 12 and rec["test_size"] == 4
        metric = rec["metrics"]["accuracy" if task == "classify" else "mse"]
        assert math.isfinite(metric)
        if task == "edit":
            assert (tmp_path / rec["examples"]).exists() and math.isfinite(rec["metrics"]["mse_no_edit"])


def test_generalization_end_to_end_and_report(tmp_path):
    from tasks.weight_space.task_report import write_report

    data = cnn_task_data(synthetic_cnn_zoo(n_archs=2, per_arch=8, seed=1))
    for model in ("ng-gnn", "statnn"):
        for seed in (0, 1):
            spec = default_spec("generalization", "synthetic", model, seed=seed, epochs=2, batch_size=4, hidden=8,
                                depth=1)
            rec = run(spec, data=data, out_dir=tmp_path / "runs", progress=False, log=None)
            assert -1 <= rec["metrics"]["kendall_tau"] <= 1
            assert len(rec["test_pred"]) == len(data.test)
    res = write_report(tmp_path / "runs", tmp_path / "results")
    rows = json.loads((tmp_path / "results" / "weight_space.json").read_text())
    assert res["records"] == 4
    tau = [r for r in rows if r["metric"] == "kendall_tau"]
    assert {r["encoder"] for r in tau} == {"ng-gnn", "statnn"}
    for r in tau:
        assert {"task", "dataset", "encoder", "metric", "mean", "std", "seeds", "epochs", "train_size", "params",
                "sec_per_epoch"} <= set(r)
        assert r["seeds"] == [0, 1]
    assert "generalization_synthetic.png" in res["figures"]
    assert (tmp_path / "results" / "weight_space.md").read_text().startswith("# Weight-space tasks")


def test_statnn_does_not_apply_to_editing():
    with pytest.raises(ValueError, match="StatNN"):
        default_spec("edit", "mnist", "statnn")
