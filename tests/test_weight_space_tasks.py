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
def _siren_table(n: int = 3, seed: int = 0, outputs: int = 1) -> tuple[Siren, ParamTable]:
    """``n`` random SIRENs (2-6-5-``outputs``) and, appended, a hidden-permuted copy of each (members n .. 2n-1)."""
    torch.manual_seed(seed)
    template = Siren(hidden=(6, 5), out_features=outputs)
    gen = torch.Generator().manual_seed(seed + 1)
    models = [Siren(hidden=(6, 5), out_features=outputs, generator=gen) for _ in range(n)]
    perms = [{0: torch.randperm(6, generator=gen), 2: torch.randperm(5, generator=gen)} for _ in range(n)]
    permuted = [Siren(hidden=(6, 5), out_features=outputs) for _ in range(n)]
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
@pytest.mark.parametrize("outputs", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("name", list(GRAPH_ENCODERS) + ["statnn"])
def test_inr_classifier_invariant_to_hidden_permutations(name, outputs):
    template, table, _ = _siren_table(outputs=outputs)
    batcher = Batcher(table, Normalizer(table))
    torch.manual_seed(0)
    probes = ProbeFeatures(template, table.graphs[0], 5) if name in GRAPH_ENCODERS else None
    feats = build_features(name, kmax=1, n_outputs=outputs, flat_dim=table.flat.shape[1], stat_dim=batcher.stats.shape[1],
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
    assert {r["encoder"] for r in tau} == {"ng-gnn+h8d1", "statnn"}  # a graph encoder's size, when not 32 x 2
    for r in tau:
        assert {"task", "dataset", "encoder", "metric", "mean", "std", "seeds", "epochs", "train_size", "params",
                "sec_per_epoch"} <= set(r)
        assert r["seeds"] == [0, 1]
    assert "generalization_synthetic.png" in res["figures"]
    assert (tmp_path / "results" / "weight_space.md").read_text().startswith("# Weight-space tasks")


def test_statnn_does_not_apply_to_editing():
    with pytest.raises(ValueError, match="StatNN"):
        default_spec("edit", "mnist", "statnn")


# ------------------------------------------------------------------------------------------------ CIFAR-10 (RGB) INRs
@pytest.fixture(scope="module")
def rgb_zoo(tmp_path_factory):
    """A tiny CIFAR-10 INR zoo (SIRENs 2-8-8-3), built by ``build_inr_zoo`` from a fake CIFAR-10 in a tmp folder."""
    from tasks.data import clear_cache
    from tasks.weight_space.inr_zoo import InrZoo, build_inr_zoo

    root = tmp_path_factory.mktemp("rgb") / "data"
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        n = 4  # 20 train images: 18 train + 2 val after the carve-out
        r = torch.linspace(0, 1, 32)
        ramp = (r[:, None] * torch.rand(n, 3, 1, 1, generator=gen) + r[None, :] * torch.rand(n, 3, 1, 1, generator=gen))
        images = (ramp / 2 * 255).round().to(torch.uint8)
        labels = torch.randint(0, 10, (n, 1), generator=gen).to(torch.uint8)
        (folder / name).write_bytes(torch.cat([labels, images.reshape(n, -1)], 1).numpy().tobytes())
    clear_cache()
    path = build_inr_zoo("cifar10", root, n_train=8, n_val=2, n_test=4, steps=5, hidden=(8, 8), strict=False,
                         progress=False)
    clear_cache()
    return InrZoo.load(path)


def test_cifar10_inr_classification_data_and_training_step(tmp_path, rgb_zoo):
    assert rgb_zoo.dataset == "cifar10" and rgb_zoo.arch["out_features"] == 3
    data = inr_task_data(rgb_zoo, "classify")
    assert data.n_outputs == 3 and data.image_channels == 3 and data.image_shape == (32, 32)
    assert data.train.images.shape == (8, 3, 32, 32) and len(data.val) == 2 and len(data.test) == 4
    graph = data.train.table.graphs[0]
    assert int((graph.node_role == 2).sum()) == 3 and graph.num_nodes == 2 + 8 + 8 + 3  # three output neurons
    assert graph.num_edges == 2 * 8 + 8 * 8 + 8 * 3
    # one training step (one batch, one epoch) of a tiny DNG with probes and the RGB reconstruction loss
    spec = default_spec("classify", "cifar10", "dng", epochs=1, batch_size=8, probes=3, hidden=8, depth=1,
                        aux_recon=0.5)
    rec = run(spec, data=data, out_dir=tmp_path, progress=False, log=None)
    assert rec["epochs"] == 1 and record_path(tmp_path, spec).name == "classify-cifar10-dng+h8d1+probe3+recon-s0.json"
    assert math.isfinite(rec["history"][0]["train_loss"]) and 0 <= rec["metrics"]["accuracy"] <= 1
    assert rec["data"]["arch"]["out_features"] == 3


def test_load_task_data_accepts_cifar10_for_classification(monkeypatch, rgb_zoo):
    from tasks.weight_space import inr_zoo
    from tasks.weight_space.task_runs import DATASETS, load_task_data

    asked = []
    monkeypatch.setattr(inr_zoo, "load_or_build_inr_zoo", lambda name, root, **kw: asked.append(name) or rgb_zoo)
    data = load_task_data(default_spec("classify", "cifar10", "nfn", train_size=4))
    assert asked == ["cifar10"] and data.n_outputs == 3 and len(data.train) == 4
    assert "cifar10" in DATASETS["classify"] and "cifar10" not in DATASETS["edit"]


def test_probe_features_with_three_outputs(rgb_zoo):
    data = inr_task_data(rgb_zoo, "classify")
    table = data.train.table
    template = rgb_zoo.template()
    probes = ProbeFeatures(template, table.graphs[0], 5)
    batch = Batcher(table, Normalizer(table)).make(torch.arange(3))
    feats = probes(batch)
    g = batch.graph
    assert feats.shape == (g.num_nodes, 5)
    out_nodes = g.node_role == 2
    assert int(out_nodes.sum()) == 3 * 3  # 3 members x (R, G, B)
    expect = render(template, rows_to_params(table.graphs[0], batch.rows), probes.points.detach())  # [B, n, 3]
    torch.testing.assert_close(feats[out_nodes].detach(), expect.transpose(1, 2).reshape(9, 5), atol=1e-5, rtol=1e-5)
    # the pooled features carry one embedding per output neuron: (2 + 3) x hidden
    feats_model = build_features("dng", kmax=1, n_outputs=3, flat_dim=table.flat.shape[1], stat_dim=1, hidden=8,
                                 depth=1, probes=probes)
    assert feats_model(batch).shape == (3, 5 * 8)


def test_editing_cifar10_fails_early_and_clearly(rgb_zoo):
    with pytest.raises(ValueError, match="gray-scale INR zoos"):
        default_spec("edit", "cifar10", "dng")
    with pytest.raises(ValueError, match="gray-scale INR zoos"):
        default_spec("edit", "cifar-10", "mlp")
    with pytest.raises(ValueError, match="3 outputs"):
        inr_task_data(rgb_zoo, "edit")
    default_spec("edit", "fmnist", "dng")  # gray-scale data sets (and synthetic zoos) still edit


# ------------------------------------------------------------------------------------------------ encoder options
def _built_encoder(task: str, encoder: str, inr_zoo, **overrides):
    """The graph encoder inside the model ``run`` would build for ``default_spec(task, ..., **overrides)``."""
    from tasks.weight_space.task_runs import build_model

    data = inr_task_data(inr_zoo, task)
    spec = default_spec(task, "synthetic", encoder, hidden=8, depth=1, probes=3, **overrides)
    model = build_model(spec, data, Batcher(data.train.table, Normalizer(data.train.table), graph_inputs=True))
    backbone = model.backbone if task == "edit" else model.features.backbone
    return backbone.encoder


def test_encoder_options_reach_the_encoder(inr_zoo):
    shipped = _built_encoder("classify", "dng", inr_zoo)
    assert isinstance(shipped.forward_traversal.cell, torch.nn.GRUCell) and shipped.backward_traversal is not None
    rnn = _built_encoder("classify", "dng", inr_zoo, encoder_options={"recurrence": "rnn", "bidirectional": False,
                                                                      "aggregation": "mean"})
    assert isinstance(rnn.forward_traversal.cell, torch.nn.RNNCell)
    assert rnn.backward_traversal is None and rnn.aggregation == "mean"
    # The editor's backbone (GraphBackbone directly) and another encoder get them too.
    edit = _built_encoder("edit", "dng", inr_zoo, encoder_options={"recurrence": "none"})
    assert edit.recurrence == "none" and not isinstance(edit.forward_traversal.cell, torch.nn.GRUCell)
    ng_gnn = _built_encoder("classify", "ng-gnn", inr_zoo, encoder_options={"bidirectional": False})
    assert ng_gnn.bidirectional is False
    # The multi-head message ablation: one message map for every kernel slot (kmax 1 here: the same size).
    shared = _built_encoder("classify", "dng", inr_zoo, encoder_options={"heads": "shared"})
    assert shared.heads == "shared" and shared.forward_traversal.message.heads == "shared"
    spec = default_spec("generalization", "cifar10", "dng", encoder_options={"heads": "shared"})
    assert spec.name == "generalization-cifar10-dng[heads=shared]-s0"


def test_encoder_options_label_record_name_and_round_trip():
    from dataclasses import asdict

    from tasks.weight_space.task_runs import RunSpec

    # Without options: the names of the existing records, unchanged.
    assert default_spec("classify", "mnist", "dng").name == "classify-mnist-dng+probe128-s0"
    assert default_spec("classify", "mnist", "dng", 2, probes=0).name == "classify-mnist-dng-s2"
    assert default_spec("classify", "mnist", "dng", aux_recon=1.0).label == "dng+probe128+recon"
    assert default_spec("edit", "mnist", "ng-gnn", 1).name == "edit-mnist-ng-gnn+probe32-s1"
    assert default_spec("generalization", "cifar10", "ng-t").name == "generalization-cifar10-ng-t-s0"
    assert default_spec("classify", "mnist", "nfn", train_size=10000, tag="long").label == "nfn+probe128+long"
    assert default_spec("classify", "mnist", "mlp", encoder_options={}).label == "mlp"
    # With options: in brackets after the encoder, keys sorted whatever order they were given in.
    a = default_spec("classify", "mnist", "dng", 1, encoder_options={"recurrence": "rnn", "bidirectional": False})
    b = default_spec("classify", "mnist", "dng", 1, encoder_options={"bidirectional": False, "recurrence": "rnn"})
    assert a.label == b.label == "dng[bidirectional=False,recurrence=rnn]+probe128"
    assert record_path("runs", a).name == "classify-mnist-dng[bidirectional=False,recurrence=rnn]+probe128-s1.json"
    names = {default_spec("classify", "mnist", "dng", encoder_options=o).name
             for o in ({}, {"recurrence": "rnn"}, {"recurrence": "none"}, {"bidirectional": False},
                       {"aggregation": "mean"})}
    assert len(names) == 5
    # The record's config gives the spec back (JSON round trip); an old record's config has no encoder_options.
    assert RunSpec(**json.loads(json.dumps(asdict(a)))) == a
    old = asdict(default_spec("classify", "mnist", "dng"))
    del old["encoder_options"]
    assert RunSpec(**old).name == "classify-mnist-dng+probe128-s0"


def test_bad_encoder_options_fail_early_and_clearly():
    from tasks.weight_space.task_models import EncoderOptionError

    with pytest.raises(EncoderOptionError, match=r"encoder 'dng' has no option 'gru'; valid keys: aggregation, "
                                                 r"bidirectional, dense_density, fourier, heads, positional, "
                                                 r"recurrence"):
        default_spec("classify", "mnist", "dng", encoder_options={"gru": True})
    with pytest.raises(EncoderOptionError, match=r"encoder 'ng-gnn' has no option 'recurrence'; valid keys: .*"
                                                 r"bidirectional"):
        default_spec("classify", "mnist", "ng-gnn", encoder_options={"recurrence": "rnn"})
    with pytest.raises(EncoderOptionError, match=r"'dng' rejects .*recurrence must be one of"):
        default_spec("classify", "mnist", "dng", encoder_options={"recurrence": "lstm"})
    with pytest.raises(EncoderOptionError, match=r"'dng' rejects .*heads must be one of \('slot', 'shared'\)"):
        default_spec("generalization", "cifar10", "dng", encoder_options={"heads": "kernel"})
    with pytest.raises(EncoderOptionError, match="'statnn' is not a graph encoder"):
        default_spec("classify", "mnist", "statnn", encoder_options={"bidirectional": False})
    with pytest.raises(EncoderOptionError, match="JSON"):
        default_spec("classify", "mnist", "dng", encoder_options={"bidirectional": (False,)})


def test_run_with_encoder_options_end_to_end(tmp_path, inr_zoo):
    data = inr_task_data(inr_zoo, "classify")
    spec = default_spec("classify", "synthetic", "dng", epochs=1, batch_size=6, probes=2, hidden=8, depth=1,
                        encoder_options={"recurrence": "rnn"})
    rec = run(spec, data=data, out_dir=tmp_path, progress=False, log=None)
    path = tmp_path / "classify-synthetic-dng[recurrence=rnn]+h8d1+probe2-s0.json"
    assert path.exists() and rec["encoder"] == "dng[recurrence=rnn]+h8d1+probe2" and rec["base_encoder"] == "dng"
    assert json.loads(path.read_text())["config"]["encoder_options"] == {"recurrence": "rnn"}


def test_cli_encoder_option_flag(tmp_path):
    from meta_train.cli import build_parser
    from meta_train.pipelines.weight_space import encoder_options_from

    parse = build_parser().parse_args
    args = parse(["weight-space", "classify", "--encoder", "dng", "--encoder-option", "recurrence=rnn",
                  "--encoder-option", "bidirectional=False", "--encoder-option", "dense_density=0.5",
                  "--encoder-option", "positional='index'"])
    assert args.encoder_option == [("recurrence", "rnn"), ("bidirectional", False), ("dense_density", 0.5),
                                   ("positional", "index")]
    assert encoder_options_from(args.encoder_option) == {"recurrence": "rnn", "bidirectional": False,
                                                         "dense_density": 0.5, "positional": "index"}
    assert parse(["weight-space", "classify"]).encoder_option is None and encoder_options_from(None) is None
    with pytest.raises(SystemExit):
        parse(["weight-space", "classify", "--encoder-option", "recurrence"])  # no '='
    # A key the encoder does not take stops the command before anything runs: a usage error (status 2).
    for argv in (["--encoder", "dng", "--encoder-option", "bogus=1"], ["--encoder-option", "recurrence=rnn"]):
        args = parse(["weight-space", "classify", *argv, "--out", str(tmp_path)])
        with pytest.raises(SystemExit) as exc:
            args.handler(args)
        assert exc.value.code == 2
    assert not any(tmp_path.iterdir())


def test_dng_ablation_table_from_hand_made_records(tmp_path):
    from experiments import dng_ablation as study

    labels = study.variant_labels()
    assert labels["ng-gnn"] == "ng-gnn+probe128" and labels["dng"] == "dng+probe128"
    assert labels["recurrence=rnn"] == "dng[recurrence=rnn]+probe128" and labels["probes=0"] == "dng"
    assert labels["bidirectional=False"] == "dng[bidirectional=False]+probe128"
    assert labels["heads=shared"] == "dng[heads=shared]+probe128"
    assert len(set(labels.values())) == len(study.VARIANTS)

    def rec(label, seed, acc, secs=(10.0, 12.0), dataset="mnist"):
        return {"task": "classify", "dataset": dataset, "encoder": label, "seed": seed, "metrics": {"accuracy": acc},
                "epochs": len(secs), "sec_per_epoch": sum(secs) / len(secs), "total_sec": sum(secs) + 5,
                "history": [{"epoch": i + 1, "sec": s} for i, s in enumerate(secs)], "params": 1000,
                "train_size": 2500, "val_size": 500, "test_size": 2000, "device": "cpu", "torch_threads": 1,
                "config": {"batch_size": 64, "lr": 0.003, "hidden": 32, "depth": 2, "probes": 128}}

    records = [rec("ng-gnn+probe128", 0, 0.80), rec("ng-gnn+probe128", 1, 0.82),
               rec("dng+probe128", 2, 0.74), rec("dng+probe128", 0, 0.70), rec("dng+probe128", 1, 0.72),
               rec("dng[recurrence=rnn]+probe128", 0, 0.75, secs=(4.0,)),
               rec("dng+probe128", 0, 0.10, dataset="fmnist"),  # another data set: ignored
               rec("nfn+probe128", 0, 0.5)]  # not a variant: ignored
    table = study.summarize(records, labels)
    rows = {r["variant"]: r for r in table["rows"]}
    assert [r["variant"] for r in table["rows"]] == [v.name for v in study.VARIANTS]
    ref, dng, rnn = rows["ng-gnn"], rows["dng"], rows["recurrence=rnn"]
    assert ref["n_seeds"] == 2 and ref["accuracy_mean"] == pytest.approx(0.81)
    assert ref["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.01 ** 2))  # sample std
    assert dng["seeds"] == [0, 1, 2] and dng["accuracy_mean"] == pytest.approx(0.72)
    assert dng["accuracy_std"] == pytest.approx(0.02)
    assert dng["gap_to_reference"] == pytest.approx(-0.09) and ref["gap_to_reference"] == pytest.approx(0.0)
    assert rnn["accuracy_std"] == 0.0 and rnn["gap_to_shipped"] == pytest.approx(0.03)
    assert rnn["train_sec_per_run"] == pytest.approx(4.0) and dng["train_sec_per_run"] == pytest.approx(22.0)
    assert rows["probes=0"]["n_seeds"] == 0 and math.isnan(rows["probes=0"]["gap_to_reference"])
    assert "Closest DNG variant: recurrence=rnn" in table["verdict"]
    assert "2500 train / 500 val / 2000 test" in table["note"] and "6 runs" in table["note"]
    assert table["verdict"] == ("DNG as shipped is -9.00 points from NG-GNN. Closest DNG variant: recurrence=rnn "
                                "(75.00 %, -6.00 points from NG-GNN, +3.00 vs DNG as shipped): one seed only, no "
                                "spread to compare the gap with.")
    md = study.markdown(table)
    # The format of results/weight_space/dng_ablation.md: title, description, header, rows in percent.
    assert md.startswith("# DNG ablation: MNIST INR classification\n\nProduced by `python -m experiments.dng_ablation` "
                         "(GitHub issue 19): DNG's design pieces removed one at a time, against NG-GNN. Test accuracy, "
                         "mean ± sample std over the seeds present; gaps in percentage points (variant minus NG-GNN / "
                         "minus DNG as shipped); train s/run: training time of one run (epochs only, mean over "
                         "seeds).\n\n| variant | run label | test accuracy % | seeds | gap to NG-GNN | vs DNG as "
                         "shipped | train s/run | s/epoch | params | what changes |\n"
                         "|---|---|---|---|---|---|---|---|---|---|\n")
    assert "| dng | `dng+probe128` | 72.00 ± 2.00 | 3 | -9.00 | +0.00 | 22 |" in md
    assert "| probes=0 | `dng` | n/a | 0 |" in md and "| heads=shared | `dng[heads=shared]+probe128` | n/a | 0 |" in md
    assert "multi-head" in md and "kmax 1" in md
    # write_table: the same table from record files, strict JSON (no NaN).
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, r in enumerate(records):
        (runs / f"r{i}.json").write_text(json.dumps(r))
    study.write_table(runs, tmp_path / "res", labels)
    saved = json.loads((tmp_path / "res" / "dng_ablation.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert saved["rows"][1]["accuracy_mean"] == pytest.approx(0.72)
    assert (tmp_path / "res" / "dng_ablation.md").read_text() == md
    # A later session with one new variant's records only: the earlier rows are carried, marked, and the gaps
    # recomputed; --no-carry (carry=False) leaves them empty.
    later = tmp_path / "later"
    later.mkdir()
    (later / "r.json").write_text(json.dumps(rec("dng[rounds=2]+probe128", 0, 0.79)))
    labels2 = {**labels, "rounds=2": "dng[rounds=2]+probe128"}
    table2 = study.write_table(later, tmp_path / "res", labels2)
    rows2 = {r["variant"]: r for r in table2["rows"]}
    assert rows2["rounds=2"]["n_seeds"] == 1 and not rows2["rounds=2"].get("carried")
    assert rows2["ng-gnn"]["carried"] and rows2["ng-gnn"]["accuracy_mean"] == pytest.approx(0.81)
    assert rows2["rounds=2"]["gap_to_reference"] == pytest.approx(-0.02)
    assert not rows2["probes=0"].get("carried") and rows2["probes=0"]["n_seeds"] == 0  # nothing to carry
    assert "Rows marked * are carried" in table2["note"] and "2500 train / 500 val" in table2["note"]
    assert "| ng-gnn | `ng-gnn+probe128` | 81.00 ± 1.41 | 2 * |" in study.markdown(table2)
    again = study.write_table(later, tmp_path / "res", labels2)  # carrying twice keeps one set-up line
    assert again["note"].count("Rows marked *") == 1 and again["rows"][0]["carried"]
    # ... the one of the carried rows' own table (so rebuilding from the same records rewrites the same table).
    saved_md = (tmp_path / "res" / "dng_ablation.md").read_text()
    rebuilt = study.write_table(later, tmp_path / "res", labels2)
    assert again["note"] == table2["note"] and study.markdown(rebuilt) == saved_md
    assert study.write_table(later, tmp_path / "res", labels2, carry=False)["rows"][0]["n_seeds"] == 0


def _generalization_record(label: str, seed: int, tau: float, dataset: str = "cifar10", task: str = "generalization",
                           secs=(2.0, 2.5)) -> dict:
    """A hand-made record of a CNN generalization run, with the fields ``task_runs.run`` writes."""
    return {"task": task, "dataset": dataset, "encoder": label, "seed": seed,
            "metrics": {"kendall_tau": tau, "r2": 0.8, "mae": 0.03}, "primary_metric": "kendall_tau",
            "epochs": len(secs), "sec_per_epoch": sum(secs) / len(secs), "total_sec": sum(secs) + 1,
            "history": [{"epoch": i + 1, "sec": s} for i, s in enumerate(secs)], "params": 3000,
            "train_size": 1050, "val_size": 150, "test_size": 300, "device": "cpu", "torch_threads": 1,
            "data": {"zoo": None, "zoo_size": 1500, "architectures": 25},
            "config": {"batch_size": 64, "lr": 0.001, "hidden": 32, "depth": 2, "probes": 0, "raw_channel": True}}


def test_dng_ablation_on_cnn_generalization_from_hand_made_records(tmp_path):
    """The same study on the CNN zoo: Kendall's tau (3 decimals, gaps as differences of tau), no probes=0 variant,
    its own output files beside the INR classification table."""
    from experiments import dng_ablation as study

    cnn = study.study_of("generalization", "cifar10")
    assert study.study_of("generalization") == cnn and study.study_of() == study.DEFAULT_STUDY
    assert cnn.title == "CIFAR-10 CNN generalization" and cnn.stem == "dng_ablation_generalization_cifar10"
    assert study.DEFAULT_STUDY.stem == "dng_ablation" and cnn.metric.key == "kendall_tau"
    labels = study.variant_labels(study=cnn)
    assert labels == {"ng-gnn": "ng-gnn", "dng": "dng", "recurrence=rnn": "dng[recurrence=rnn]",
                      "recurrence=none": "dng[recurrence=none]", "bidirectional=False": "dng[bidirectional=False]",
                      "aggregation=mean": "dng[aggregation=mean]", "heads=shared": "dng[heads=shared]",
                      "rounds=2": "dng[rounds=2]"}
    for bad in (("edit", "cifar10"), ("generalization", "mnist"), ("regress", "mnist")):
        with pytest.raises(ValueError):
            study.study_of(*bad)
    rec = _generalization_record
    records = [rec("ng-gnn", 0, 0.767), rec("ng-gnn", 1, 0.761),
               rec("dng", 0, 0.72), rec("dng", 1, 0.73), rec("dng", 2, 0.71),
               rec("dng[heads=shared]", 0, 0.74, secs=(1.5, 1.5)),
               rec("dng[heads=shared]", 1, 0.75, secs=(1.5, 1.5)),
               rec("dng", 0, 0.10, dataset="fmnist"),  # another data set: ignored
               rec("dng", 0, 0.20, task="classify")]  # another task (a label it shares): ignored
    table = study.summarize(records, labels, study=cnn)
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == list(labels) and table["task"] == "generalization" and table["dataset"] == "cifar10"
    ref, dng, shared = rows["ng-gnn"], rows["dng"], rows["heads=shared"]
    assert "accuracy_mean" not in dng and dng["kendall_taus"] == [0.72, 0.73, 0.71]
    assert dng["kendall_tau_mean"] == pytest.approx(0.72) and dng["kendall_tau_std"] == pytest.approx(0.01)
    assert dng["gap_to_reference"] == pytest.approx(-0.044) and shared["gap_to_shipped"] == pytest.approx(0.025)
    assert shared["train_sec_per_run"] == pytest.approx(3.0) and rows["rounds=2"]["n_seeds"] == 0
    assert table["verdict"] == ("DNG as shipped is -0.044 tau from NG-GNN. Closest DNG variant: heads=shared (0.745, "
                                "-0.019 tau from NG-GNN, +0.025 vs DNG as shipped): not within one seed std "
                                "(0.007 tau) of NG-GNN.")
    assert table["note"].startswith("CIFAR-10 CNN generalization: 1050 train / 150 val / 300 test networks from a zoo "
                                    "of 1500 (25 architectures), epochs 2, batch 64, lr 0.001; encoders hidden 32, "
                                    "depth 2, raw-value input channel True, no probe features;")
    assert table["note"].endswith("7 runs.") and "INR" not in table["note"]
    md = study.markdown(table)
    assert md.startswith("# DNG ablation: CIFAR-10 CNN generalization\n\nProduced by `python -m "
                         "experiments.dng_ablation --task generalization --dataset cifar10` (GitHub issue 19)")
    assert "Test Kendall's tau" in md and "gaps as differences of tau" in md and "percentage" not in md
    assert "| variant | run label | test Kendall's tau | seeds | gap to NG-GNN |" in md
    assert "| dng | `dng` | 0.720 ± 0.010 | 3 | -0.044 | +0.000 | 4.5 | 2.2 | 3,000 |" in md
    assert "| heads=shared | `dng[heads=shared]` | 0.745 ± 0.007 | 2 | -0.019 | +0.025 |" in md
    assert "| rounds=2 | `dng[rounds=2]` | n/a | 0 | n/a | n/a |" in md and "probes=0" not in md
    assert "kmax 5" in md
    # write_table: its own files (the INR classification table beside it is left alone), strict JSON, carrying.
    runs, res = tmp_path / "runs", tmp_path / "res"
    runs.mkdir()
    for i, r in enumerate(records):
        (runs / f"r{i}.json").write_text(json.dumps(r))
    study.write_table(runs, res, study=cnn)
    assert sorted(p.name for p in res.iterdir()) == ["dng_ablation_generalization_cifar10.json",
                                                    "dng_ablation_generalization_cifar10.md"]
    assert (res / "dng_ablation_generalization_cifar10.md").read_text() == md
    later = tmp_path / "later"
    later.mkdir()
    (later / "r.json").write_text(json.dumps(rec("dng[rounds=2]", 0, 0.70)))
    table2 = study.write_table(later, res, study=cnn)
    rows2 = {r["variant"]: r for r in table2["rows"]}
    assert rows2["ng-gnn"]["carried"] and rows2["ng-gnn"]["kendall_tau_mean"] == pytest.approx(0.764)
    assert rows2["rounds=2"]["gap_to_reference"] == pytest.approx(-0.064) and not rows2["rounds=2"].get("carried")
    assert "| ng-gnn | `ng-gnn` | 0.764 ± 0.004 | 2 * |" in study.markdown(table2)
    assert "1050 train / 150 val" in table2["note"].split("its set-up: ")[1]


def test_dng_ablation_on_inr_editing_ranks_lower_mse_as_better():
    """The editing study: test MSE (lower is better, 4 decimals), the INR variants (probes=0 included); the closest
    DNG variant is the one with the lowest MSE, and a gap is judged in that direction."""
    from experiments import dng_ablation as study

    edit = study.study_of("edit")
    assert edit == study.Study("edit", "mnist") and edit.stem == "dng_ablation_edit_mnist"
    assert edit.title == "MNIST INR dilation editing" and edit.metric.key == "mse" and not edit.metric.higher
    labels = study.variant_labels(study=edit)
    assert list(labels) == [v.name for v in study.VARIANTS] + ["aggregation=mean+recurrence=none", "depth=4"]
    assert labels["depth=4"] == "dng+h32d4+probe32"
    assert labels["probes=0"] == "dng"
    # the two pieces closest to NG-GNN on editing, together: both options in one label
    assert labels["aggregation=mean+recurrence=none"] == "dng[aggregation=mean,recurrence=none]+probe32"
    assert labels["dng"] == "dng+probe32" and labels["ng-gnn"] == "ng-gnn+probe32"

    def rec(label, seed, mse):
        return {"task": "edit", "dataset": "mnist", "encoder": label, "seed": seed, "metrics": {"mse": mse},
                "epochs": 2, "sec_per_epoch": 1.0, "total_sec": 3.0, "params": 1000, "train_size": 1000,
                "val_size": 300, "test_size": 500, "config": {"probes": 32, "hidden": 32, "depth": 2}}

    records = [rec("ng-gnn+probe32", 0, 0.0370), rec("ng-gnn+probe32", 1, 0.0380),
               rec("dng+probe32", 0, 0.0460), rec("dng+probe32", 1, 0.0470),
               rec(labels["recurrence=rnn"], 0, 0.0420), rec(labels["recurrence=rnn"], 1, 0.0430),
               rec(labels["aggregation=mean"], 0, 0.0500), rec(labels["aggregation=mean"], 1, 0.0500)]
    table = study.summarize(records, labels, study=edit)
    rows = {r["variant"]: r for r in table["rows"]}
    assert rows["dng"]["mses"] == [0.046, 0.047] and rows["dng"]["gap_to_reference"] == pytest.approx(0.009)
    assert table["verdict"] == ("DNG as shipped is +0.0090 from NG-GNN. Closest DNG variant: recurrence=rnn (0.0425, "
                                "+0.0050 from NG-GNN, -0.0040 vs DNG as shipped): not within one seed std (0.0007) "
                                "of NG-GNN.")
    assert table["note"].startswith("MNIST INR dilation editing: 1000 train / 300 val / 500 test INRs")
    md = study.markdown(table)
    assert "Test MSE of the edited images" in md and "| dng | `dng+probe32` | 0.0465 ± 0.0007 | 2 | +0.0090 |" in md
    better = [rec("ng-gnn+probe32", 0, 0.05), rec("ng-gnn+probe32", 1, 0.05), rec("dng+probe32", 0, 0.04),
              rec("dng+probe32", 1, 0.04)]
    assert study.summarize(better, labels, study=edit)["verdict"].endswith("): at or below NG-GNN.")


def test_dng_ablation_command_line_takes_the_task_and_its_variants(tmp_path):
    from experiments import dng_ablation as study

    names = lambda args: [v.name for v in args.run_variants]  # noqa: E731
    _, args = study.parse_args([])
    assert args.study == study.DEFAULT_STUDY and names(args) == [v.name for v in study.VARIANTS]
    assert "probes=0" in names(args) and "heads=shared" in names(args)
    _, args = study.parse_args(["--task", "generalization"])
    assert args.study == study.Study("generalization", "cifar10")
    assert names(args) == [v.name for v in study.GENERALIZATION_VARIANTS] and "probes=0" not in names(args)
    assert "heads=shared" in names(args) and len(names(args)) == len(study.VARIANTS) - 1
    _, args = study.parse_args(["report", "--task", "generalization", "--dataset", "fmnist", "--variants",
                                "heads=shared", "dng"])
    assert args.study.stem == "dng_ablation_generalization_fmnist" and names(args) == ["dng", "heads=shared"]
    for argv in (["--task", "generalization", "--variants", "probes=0"], ["--task", "generalization", "--dataset",
                                                                           "mnist"], ["--task", "edit", "--dataset",
                                                                                      "cifar10"]):
        with pytest.raises(SystemExit) as exc:
            study.parse_args(argv)
        assert exc.value.code == 2
    # report without records: an empty table, in the generalization study's own files.
    study.main(["report", "--task", "generalization", "--out", str(tmp_path / "none"), "--results",
                str(tmp_path / "res")])
    md = (tmp_path / "res" / "dng_ablation_generalization_cifar10.md").read_text()
    assert "Not enough records for a comparison yet." in md and "No records yet." in md
    assert not (tmp_path / "res" / "dng_ablation.md").exists()


def _record(encoder: str, seed: int, acc: float, train_size: int = 100, device: str = "cpu", threads: int = 1,
            hidden: int = 32) -> dict:
    """A minimal classification run record, as ``task_runs.run`` writes it (no training)."""
    return {"task": "classify", "dataset": "mnist", "encoder": encoder, "seed": seed, "metrics": {"accuracy": acc},
            "primary_metric": "accuracy", "epochs": 2, "train_size": train_size, "val_size": 10, "test_size": 20,
            "params": 1000, "sec_per_epoch": 1.0, "total_sec": 3.0, "device": device, "torch_threads": threads,
            "config": {"hidden": hidden, "depth": 2, "batch_size": 64, "probes": 128},
            "history": [{"val_accuracy": acc}, {"val_accuracy": acc}]}


def test_report_merges_record_folders_and_names_sizes_and_devices(tmp_path):
    from tasks.weight_space.task_report import collect, write_report

    main, scaled = tmp_path / "main", tmp_path / "scaled"
    main.mkdir(), scaled.mkdir()
    for seed, (a, b) in enumerate(((0.80, 0.70), (0.82, 0.72), (0.81, 0.71))):
        (main / f"ng-{seed}.json").write_text(json.dumps(_record("ng-gnn+probe128", seed, a)))
        (main / f"dng-{seed}.json").write_text(json.dumps(_record("dng+probe128", seed, b)))
        # the same label at ten times the data, on a GPU: its own row, not merged with the main one
        (scaled / f"dng-{seed}.json").write_text(json.dumps(_record("dng+probe128", seed, 0.975, 1000, "cuda")))
    # a copy of a main record in the second folder counts once
    (scaled / "dup.json").write_text((main / "dng-0.json").read_text())
    assert len(collect([main, scaled])) == 9
    res = write_report([main, scaled], tmp_path / "results")
    rows = [r for r in res["rows"] if r["metric"] == "accuracy"]
    names = {r["name"]: r for r in rows}
    assert set(names) == {"ng-gnn+probe128", "dng+probe128 (n=100)", "dng+probe128 (n=1,000)"}
    assert names["dng+probe128 (n=100)"]["seeds"] == [0, 1, 2] and names["dng+probe128 (n=100)"]["device"] == "cpu x1"
    assert names["dng+probe128 (n=1,000)"]["device"] == "cuda"
    md = (tmp_path / "results" / "weight_space.md").read_text()
    assert "| dng+probe128 (n=1,000) | 97.50 ± 0.00 | h32 d2 | 1,000 / 10 / 20 | 2 | 3 |" in md
    assert "`" + str(scaled) + "`" in md.splitlines()[2]  # the header names every record folder
    # issue 19's target (97 % on MNIST) and DNG against NG-GNN at the same size (10 points behind, seeds agree)
    assert "best dng+probe128 (n=1,000) 97.50 ± 0.00 % over 3 seed(s) (meets the 97 % target" in md
    assert "dng+probe128 (n=100) 71.00 ± 1.00 is behind ng-gnn+probe128 81.00 ± 1.00" in md


def test_report_carries_rows_that_no_record_covers_and_keeps_val_sizes_apart(tmp_path):
    from tasks.weight_space.task_report import write_report

    first, second, results = tmp_path / "first", tmp_path / "second", tmp_path / "results"
    first.mkdir(), second.mkdir()
    (first / "ng.json").write_text(json.dumps(_record("ng-gnn+probe128", 0, 0.80)))
    (first / "dng.json").write_text(json.dumps(_record("dng+probe128", 0, 0.70)))
    write_report(first, results)
    # the second report's records: the DNG model again (new numbers), and the same label with a larger val split
    (second / "dng.json").write_text(json.dumps(_record("dng+probe128", 0, 0.75)))
    (second / "dng-v.json").write_text(json.dumps({**_record("dng+probe128", 1, 0.60), "val_size": 50}))
    rows = {r["name"]: r for r in write_report(second, results)["rows"] if r["metric"] == "accuracy"}
    assert set(rows) == {"ng-gnn+probe128", "dng+probe128 (val=10)", "dng+probe128 (val=50)"}
    assert rows["ng-gnn+probe128"].get("carried") and rows["ng-gnn+probe128"]["mean"] == pytest.approx(0.80)
    assert rows["dng+probe128 (val=10)"]["mean"] == pytest.approx(0.75) and not rows["dng+probe128 (val=10)"].get("carried")
    assert rows["dng+probe128 (val=50)"]["seeds"] == [1]  # two val sizes are never averaged into one row
    md = (results / "weight_space.md").read_text()
    assert "| ng-gnn+probe128 * | 80.00 ± 0.00 |" in md and "`*`: carried over" in md
    # a carried row and a new one of the same label, apart only by the val size, get names that tell them apart
    third = tmp_path / "third"
    third.mkdir()
    (third / "ng-v.json").write_text(json.dumps({**_record("ng-gnn+probe128", 0, 0.85), "val_size": 50}))
    rows = {r["name"]: r for r in write_report(third, results)["rows"] if r["metric"] == "accuracy"}
    assert {"ng-gnn+probe128 (val=10)", "ng-gnn+probe128 (val=50)"} <= set(rows)
    assert rows["ng-gnn+probe128 (val=10)"]["carried"] and not rows["ng-gnn+probe128 (val=50)"].get("carried")
    # without carry the table holds this folder's records only
    rows = write_report(second, results, carry=False)["rows"]
    assert {r["name"] for r in rows} == {"dng+probe128 (val=10)", "dng+probe128 (val=50)"}


def test_cli_report_also_records(tmp_path, capsys):
    from meta_train.cli import build_parser

    main, scaled = tmp_path / "main", tmp_path / "scaled"
    main.mkdir(), scaled.mkdir()
    (main / "a.json").write_text(json.dumps(_record("ng-gnn+probe128", 0, 0.8)))
    (scaled / "b.json").write_text(json.dumps(_record("dng+probe128", 0, 0.9, 1000)))
    parse = build_parser().parse_args
    args = parse(["weight-space", "report", "--out", str(main), "--also-records", str(scaled),
                  "--results", str(tmp_path / "results")])
    args.handler(args)
    assert "2 records" in capsys.readouterr().out
    args = parse(["weight-space", "report", "--out", str(main), "--also-records", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="not a folder of run records"):
        args.handler(args)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("model", ["dng", "mlp"])
def test_killed_run_resumes_to_the_same_record(tmp_path, inr_zoo, model):
    """A run killed after its second epoch, started again, ends with the record of an uninterrupted run: same
    history, selection and test metrics (the resume state holds the model, optimizer, schedule, best state and the
    augmentation / dropout generators), and the state file is gone once the record is written."""
    from tasks.weight_space.task_runs import resume_state_path

    data = inr_task_data(inr_zoo, "classify")
    spec = default_spec("classify", "synthetic", model, seed=3, epochs=4, batch_size=4, probes=3, hidden=8, depth=1,
                        dropout=0.2)
    whole = run(spec, data=data, out_dir=tmp_path / "whole", progress=False, log=None)

    def kill_after_epoch_2(line: str) -> None:
        if "epoch 2:" in line:
            raise _Stop

    with pytest.raises(_Stop):
        run(spec, data=data, out_dir=tmp_path / "killed", progress=False, log=kill_after_epoch_2)
    state = resume_state_path(tmp_path / "killed", spec)
    assert state.exists() and not record_path(tmp_path / "killed", spec).exists()
    lines = []
    resumed = run(spec, data=data, out_dir=tmp_path / "killed", progress=False, log=lines.append)
    assert any("resuming after epoch 2" in line for line in lines)
    assert not any(line.startswith(f"{spec.name} epoch 1:") for line in lines)  # epochs 1-2 are not trained again
    drop = lambda h: [{k: v for k, v in e.items() if k != "sec"} for e in h]  # noqa: E731
    assert drop(resumed["history"]) == drop(whole["history"])
    assert resumed["metrics"] == whole["metrics"] and resumed["best_epoch"] == whole["best_epoch"]
    assert not state.exists()


def test_resume_state_of_another_spec_is_not_used(tmp_path, inr_zoo):
    from tasks.weight_space.task_runs import resume_state_path

    data = inr_task_data(inr_zoo, "classify")
    spec = default_spec("classify", "synthetic", "mlp", seed=0, epochs=3, batch_size=4)
    with pytest.raises(_Stop):
        run(spec, data=data, out_dir=tmp_path, progress=False,
            log=lambda line: (_ for _ in ()).throw(_Stop) if "epoch 1:" in line else None)
    other = default_spec("classify", "synthetic", "mlp", seed=0, epochs=3, batch_size=4, lr=0.5)
    assert resume_state_path(tmp_path, spec) == resume_state_path(tmp_path, other)  # same name, other settings
    lines = []
    rec = run(other, data=data, out_dir=tmp_path, progress=False, log=lines.append)
    assert any("another spec" in line for line in lines) and rec["epochs"] == 3
