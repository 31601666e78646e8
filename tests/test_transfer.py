"""The results pipeline (``python -m meta_train results``): shipping checkpoints with model cards, choosing the
default graph optimizer on Fashion-MNIST validation, and the sweep's paired advantage records."""
from __future__ import annotations

import json

import pytest
import torch

from l2o.optim import OptimizerConfig, build_optimizer, read_checkpoint, save_checkpoint
from meta_train.eval_records import OptimizerRuns, SeedRun
from meta_train.pipelines import model_cards, results, results_plan, sweep_report


@pytest.fixture()
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(results_plan, "CHECKPOINTS", tmp_path / "checkpoints")
    monkeypatch.setattr(results_plan, "RESULTS", tmp_path)
    (tmp_path / "pretrained").mkdir()  # choose_default copies default.pt there: never into the real package data
    monkeypatch.setattr(results_plan, "PRETRAINED", tmp_path / "pretrained")
    key = {"validation_task": "fmnist-conv", "validation_steps": 20, "validation_seeds": 1, "adam_lr": 3e-3}
    monkeypatch.setattr(model_cards, "reference_validation", lambda: {"key": key, "val_score": 0.5})
    return tmp_path


def _record(accs: list[float], hyper: dict | None = None, digest: str | None = None) -> dict:
    """One optimizer's entry of results.json, as the evaluation writes it (only the accuracies matter here)."""
    runs = [SeedRun(seed=i, losses=[1.0], evals=[(1, a, 1.0)], acc=a, step_ms=1.0, diverged=False)
            for i, a in enumerate(accs)]
    return OptimizerRuns(family="x", checkpoint=None if hyper else "x.pt", digest=digest, hyper=hyper,
                         runs=runs).to_json()


def _run(tmp_path, name, family, score):
    cfg = OptimizerConfig(family=family, hidden=8, depth=1, head_hidden=8)
    torch.manual_seed(0)
    meta = {"meta": {"outer_steps": 10, "tasks_per_process": 2, "truncation": 5}, "tasks": {"family": "fmnist"},
            "run": {"seed": 0, "validation_steps": 20}}
    summary = {"best_val_score": score, "best_step": 10, "outer_step": 10, "wall_s": 60.0, "machine": "test",
               "commit": "abc", "meta": json.dumps(meta)}
    run = tmp_path / "runs" / name
    save_checkpoint(run / "best.pt", build_optimizer(cfg), cfg, summary)
    return run


def test_ship_writes_checkpoint_and_card_and_default_is_best_graph_optimizer(results_dir):
    scores = {"ng-gnn": 0.70, "ng-gnn-seed1": 0.74, "dng": 0.72, "ff": 0.90}  # ff is best but not a graph optimizer
    for name, score in scores.items():
        family = name.split("-seed")[0]
        model_cards.ship(name, _run(results_dir, name, family, score))
    card = (results_dir / "checkpoints" / "dng.md").read_text()
    assert "72.00 %" in card and "10 outer steps" in card and "`abc`" in card
    default = model_cards.choose_default()
    assert read_checkpoint(default)["summary"]["best_val_score"] == 0.74
    assert "ng-gnn-seed1" in (results_dir / "checkpoints" / "default.md").read_text()
    index = (results_dir / "checkpoints" / "README.md").read_text()
    assert "**50.00 %**" in index and "| `dng.pt` | dng | 72.00 % | 10 |" in index


def test_sweep_records_pair_seeds_and_read_aliases_from_main_eval(results_dir):
    from meta_train.evaluate import file_digest

    model_cards.ship("ng-gnn", _run(results_dir, "ng-gnn", "ng-gnn", 0.7))
    default = model_cards.choose_default()
    digest = file_digest(default)

    def res(task, learned: dict):
        runs = {"adam": _record(learned.pop("adam"), hyper={"lr": 3e-3})}
        for label, (dig, accs) in learned.items():
            runs[label] = _record(accs, digest=dig)
        return {"task": task, "steps": 100, "runs": runs}

    out = results_dir / "eval"
    (out / "sweep" / "cifar10-conv-w16").mkdir(parents=True)
    (out / "sweep" / "cifar10-conv-w16" / "results.json").write_text(json.dumps(res(
        "cifar10-conv-w16", {"adam": [0.40, 0.42], "default": (digest, [0.45, 0.44]), "ff": ("f0", [0.39, 0.43])})))
    (out / "cifar10-conv").mkdir(parents=True)  # the main evaluation names the default after its source
    (out / "cifar10-conv" / "results.json").write_text(json.dumps(res(
        "cifar10-conv", {"adam": [0.5, 0.5, 0.5], "ng-gnn": (digest, [0.49, 0.52, 0.5]),
                         "ng-gnn-seed1": ("s1", [0.6] * 3), "lstm": ("l0", [0.51, 0.5, 0.52])})))
    recs = {(r["task"], r["optimizer"]): r for r in sweep_report.sweep_records(out)}
    assert set(recs) == {("cifar10-conv-w16", "default"), ("cifar10-conv-w16", "ff"),
                         ("cifar10-conv-w32", "default"), ("cifar10-conv-w32", "lstm"),
                         ("cifar10-conv-d3", "default"), ("cifar10-conv-d3", "lstm")}  # no extra meta-training seeds
    w16 = recs["cifar10-conv-w16", "default"]
    assert w16["advantage_mean"] == pytest.approx(3.5) and w16["acc_mean"] == pytest.approx(44.5)
    assert w16["advantage_std"] == pytest.approx(torch.tensor([5.0, 2.0]).std().item())
    assert recs["cifar10-conv-w16", "ff"]["advantage_mean"] == pytest.approx(0.0)
    d3 = recs["cifar10-conv-d3", "default"]
    assert d3["same_as"] == "cifar10-conv" and d3["seeds"] == 3 and d3["advantage_mean"] == pytest.approx(1 / 3)
    md = sweep_report.sweep_markdown(list(recs.values()))
    assert "| cifar10-conv-w16 | 2 | 41.00 +- 1.41 (0.003) | +3.50 +- 2.12 | +0.00 +- 1.41 |  |" in md
    sweep_report.plot_sweep(list(recs.values()), results_dir / "sweep.png")
    assert (results_dir / "sweep.png").stat().st_size > 1000


def test_paired_record_pairs_by_seed_not_by_position():
    adam = OptimizerRuns.from_json(_record([0.40, 0.42, 0.44], hyper={"lr": 3e-3}))
    mine = OptimizerRuns.from_json(_record([0.50, 0.50, 0.47]))
    mine.runs = [mine.runs[2], mine.runs[0]]  # seeds 2 and 0, in that order
    rec = sweep_report.paired_record("cifar10-conv-w16", "ff", mine, adam, 100)
    assert rec["seeds"] == 2 and rec["advantage_mean"] == pytest.approx((10 + 3) / 2)
    assert rec["adam_acc_mean"] == pytest.approx(42.0)
    mine.runs = []
    with pytest.raises(ValueError, match="share no seed"):
        sweep_report.paired_record("cifar10-conv-w16", "ff", mine, adam, 100)


def test_sweep_runs_the_default_and_keeps_families_an_earlier_call_added(results_dir, monkeypatch):
    for name, fam, score in [("ng-gnn", "ng-gnn", 0.7), ("ff", "ff", 0.6), ("ng-gnn-seed1", "ng-gnn", 0.65)]:
        model_cards.ship(name, _run(results_dir, name, fam, score))
    model_cards.choose_default()
    calls = []

    def fake(task, specs, steps, seeds, out, **kw):
        calls.append((task, [s.split("=")[0] for s in specs], kw["tune_from"]))
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"runs": {s.split("=")[0]: {} for s in specs}}))

    monkeypatch.setattr(results, "evaluate", fake)
    out = results_dir / "eval"
    results.sweep_all(10, 1, out, ["cifar10-conv-w16", "cifar10-conv-w32"], every_family=True)
    assert calls == [("cifar10-conv-w16", ["adam", "default", "ff"], {"adam": None})]  # w32 is the main task
    (out / "cifar10-conv").mkdir()  # once the main evaluation has tuned Adam, tuning starts from its rate
    (out / "cifar10-conv" / "results.json").write_text(json.dumps({"runs": {"adam": _record([0.5], {"lr": 3e-3})}}))
    calls.clear()  # a default-only call keeps the families already there (evaluate writes exactly what it is given)
    results.sweep_all(10, 1, out, ["cifar10-conv-w16", "cifar10-conv-d1"])
    assert [c[1] for c in calls] == [["adam", "default", "ff"], ["adam", "default"]]
    assert calls[0][2] == {"adam": {"lr": 3e-3}}
    with pytest.raises(ValueError, match="not a sweep point"):
        results.sweep_all(10, 1, out, ["cifar10-conv-w8"])


def test_a_pinned_default_stays_the_default_and_joins_the_shipped_list(results_dir):
    for name, family, score in [("ng-gnn", "ng-gnn", 0.74), ("dng", "dng", 0.70), ("ff", "ff", 0.9)]:
        model_cards.ship(name, _run(results_dir, name, family, score))
    with pytest.raises(ValueError, match="not trained by this pipeline"):  # a card must say how to reproduce it
        model_cards.ship("study-gnn", _run(results_dir, "study-gnn", "ng-gnn", 0.6))
    model_cards.ship("study-gnn", _run(results_dir, "study-gnn", "ng-gnn", 0.6), reproduce="`make study`")
    assert "`make study`" in (results_dir / "checkpoints" / "study-gnn.md").read_text()
    with pytest.raises(ValueError, match="not a graph optimizer"):
        model_cards.pin_default("ff", "best transfer")
    default = model_cards.pin_default("study-gnn", "Best on CIFAR-10.")
    study = (results_dir / "checkpoints" / "study-gnn.pt").read_bytes()
    assert default.read_bytes() == study == (results_dir / "pretrained" / "default.pt").read_bytes()
    assert (results_dir / "pretrained" / "dng.pt").read_bytes() == (results_dir / "checkpoints" / "dng.pt").read_bytes()
    model_cards.choose_default()  # what the results pipeline calls after every run: the pin holds
    assert default.read_bytes() == study
    assert "pinned" in (results_dir / "checkpoints" / "default.md").read_text()
    assert model_cards.shipped_names()[-1] == "study-gnn"
    assert results.shipped_specs()[0].startswith("study-gnn=")  # the default's source is evaluated first
    index = (results_dir / "checkpoints" / "README.md").read_text()
    assert "`study-gnn.pt`, pinned by `default.json` (Best on CIFAR-10)" in index and "| `study-gnn.pt` |" in index
    (results_dir / "checkpoints" / "study-gnn.pt").unlink()
    with pytest.raises(FileNotFoundError, match="delete default.json"):
        model_cards.choose_default()
    (results_dir / "checkpoints" / "default.json").unlink()
    assert read_checkpoint(model_cards.choose_default())["summary"]["best_val_score"] == 0.74  # by validation again


def test_sweep_records_of_an_earlier_default_are_named_after_their_checkpoint(results_dir):
    from meta_train.evaluate import file_digest

    model_cards.ship("dng", _run(results_dir, "dng", "dng", 0.7))
    old = file_digest(model_cards.choose_default())  # dng is the default while the sweep runs
    folder = results_dir / "eval" / "sweep" / "cifar10-conv-w16"
    folder.mkdir(parents=True)
    folder.joinpath("results.json").write_text(json.dumps({"task": "cifar10-conv-w16", "steps": 100, "runs": {
        "adam": _record([0.40, 0.42], hyper={"lr": 3e-3}), "default": _record([0.45, 0.44], digest=old)}}))
    assert [r["optimizer"] for r in sweep_report.sweep_records(results_dir / "eval")] == ["default"]
    model_cards.ship("study-gnn", _run(results_dir, "study-gnn", "ng-gnn", 0.6), reproduce="`make study`")
    model_cards.pin_default("study-gnn", "Best on CIFAR-10.")
    recs = sweep_report.sweep_records(results_dir / "eval")
    assert [(r["optimizer"], r["advantage_mean"]) for r in recs] == [("dng", pytest.approx(3.5))]


def test_a_derived_checkpoint_file_ships_with_a_card_that_says_so(results_dir):
    run = _run(results_dir, "src", "ng-gnn", 0.7)
    payload = read_checkpoint(run / "best.pt")
    derived = results_dir / "derived.pt"
    cfg = OptimizerConfig(family="ng-gnn", hidden=8, depth=1, head_hidden=8)
    torch.manual_seed(0)
    save_checkpoint(derived, build_optimizer(cfg), cfg,
                    {**payload["summary"], "warm_start_note": "relative warm start of src.pt"})
    model_cards.ship("derived", derived, reproduce="`make derived`")
    assert (results_dir / "checkpoints" / "derived.pt").read_bytes() == derived.read_bytes()
    card = (results_dir / "checkpoints" / "derived.md").read_text()
    assert "not meta-trained since:** relative warm start of src.pt" in card and "`make derived`" in card
    with pytest.raises(FileNotFoundError, match="no .*best.pt"):
        model_cards.ship("none", results_dir / "runs" / "none", reproduce="`make none`")
