"""Evaluation CLI pieces: optimizer specs, tuning on validation, reports (real data, tiny budgets)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from l2o.optim import OptimizerConfig, build_optimizer, save_checkpoint
from conftest import needs_data
from meta_train import evaluate as ev



def test_parse_spec(tmp_path):
    assert ev.parse_spec("adam").family == "adam" and ev.parse_spec("adam").hyper is None
    fixed = ev.parse_spec("adamw:lr=0.003,weight_decay=0.01")
    assert fixed.hyper == {"lr": 0.003, "weight_decay": 0.01}
    cfg = OptimizerConfig(family="ff", head_hidden=8)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ff.pt", build_optimizer(cfg), cfg)
    cand = ev.parse_spec(f"mine={tmp_path / 'ff.pt'}")
    assert cand.label == "mine" and cand.family == "ff" and cand.build().family == "ff"
    with pytest.raises(ValueError, match="unknown optimizer spec"):
        ev.parse_spec("rmsprop")


@needs_data
def test_evaluate_tunes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setitem(ev.GRIDS, "adam", [{"lr": 1e-6}, {"lr": 3e-3}])  # one hopeless, one sensible
    cfg = OptimizerConfig(family="ff", head_hidden=8)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ff.pt", build_optimizer(cfg), cfg)
    res = ev.evaluate("fmnist-conv", ["adam", f"ff={tmp_path / 'ff.pt'}"], steps=30, seeds=2, out=tmp_path / "out",
                      eval_every=10)
    assert res["runs"]["adam"].hyper == {"lr": 3e-3}  # tuning chose the sensible lr on validation
    assert [t["lr"] for t in res["tuning"]["adam"]] == [1e-6, 3e-3]
    run = res["runs"]["adam"].runs[0]
    assert len(run.losses) == 30 and [e[0] for e in run.evals] == [10, 20, 30]
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {r["optimizer"] for r in rows} == {"adam", "ff"} and all(r["seeds"] == 2 for r in rows)
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 1000 and (tmp_path / "out" / "table.md").exists()
    # Same seeds for every optimizer: two adam seeds differ from each other, and are reproducible.
    again = ev.evaluate("fmnist-conv", ["adam:lr=0.003"], steps=30, seeds=2, out=tmp_path / "again", eval_every=10)
    assert again["runs"]["adam:lr=0.003"].runs[1].losses == res["runs"]["adam"].runs[1].losses
    assert run.losses != res["runs"]["adam"].runs[1].losses


@needs_data
def test_main_job_end_to_end(tmp_path):
    from meta_train.pipelines.main_job import main_job

    res = main_job(out=tmp_path, minutes=0.02, steps=5, seeds=1)
    assert set(res["runs"]) >= {"this-run"} and any(k.startswith("adam:lr=") for k in res["runs"])
    assert (tmp_path / "meta" / "best.pt").exists() and (tmp_path / "eval" / "accuracy.png").exists()
    metrics = (tmp_path / "meta" / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(metrics) < 150  # stopped by the time budget, with a checkpoint to resume from
    assert (tmp_path / "meta" / "checkpoints" / "latest").exists()


def test_report_collects_summaries(tmp_path):
    from meta_train.pipelines.transfer_report import write

    rows = [{"task": "cifar10-conv", "optimizer": "adam", "family": "adam", "checkpoint": None, "hyper": {"lr": 3e-3},
             "steps": 1000, "seeds": 3, "test_accs": [55.0, 54.0, 56.0], "test_acc_mean": 55.0, "test_acc_std": 1.0,
             "diverged": 0, "step_ms": 0.3},
            {"task": "cifar10-conv", "optimizer": "ng-gnn", "family": "ng-gnn", "checkpoint": "x.pt", "hyper": None,
             "steps": 1000, "seeds": 3, "test_accs": [57.0, 55.0, 57.0], "test_acc_mean": 56.33, "test_acc_std": 1.15,
             "diverged": 0, "step_ms": 9.0}]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "summary.json").write_text(json.dumps(rows))
    records = write([tmp_path / "e"], tmp_path / "out")
    assert records[0]["published_acc"] == 54.76 and records[1]["published_acc"] == 64.37
    assert records[0]["vs_adam_mean"] is None
    # paired per seed: differences 2, 1, 1
    assert records[1]["vs_adam_mean"] == pytest.approx(4 / 3) and records[1]["vs_adam_std"] == pytest.approx(0.57735, 1e-4)
    assert json.loads((tmp_path / "out" / "transfer.json").read_text())[0]["test_acc_mean"] == 55.0
    table = (tmp_path / "out" / "transfer.md").read_text()
    assert "| +1.33 +- 0.58 |" in table and "| lr 0.003 |" in table
    with pytest.raises(FileNotFoundError, match="evaluate"):
        write([tmp_path / "missing"], tmp_path / "out")


@needs_data
def test_evaluate_resume_keeps_finished_and_reruns_changed(tmp_path, monkeypatch):
    monkeypatch.setitem(ev.GRIDS, "adam", [{"lr": 3e-3}])
    cfg = OptimizerConfig(family="ff", head_hidden=8)
    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "ff.pt", build_optimizer(cfg), cfg)
    specs = ["adam", f"ff={ck}"]
    first = ev.evaluate("fmnist-conv", specs, steps=5, seeds=1, out=tmp_path / "o", eval_every=0)
    calls = []
    real = ev.train_optimizee
    monkeypatch.setattr(ev, "train_optimizee", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = ev.evaluate("fmnist-conv", specs, steps=5, seeds=1, out=tmp_path / "o", eval_every=0, resume=True)
    assert calls == [] and again["runs"] == first["runs"]  # nothing rerun (the records read back), tuning reused
    # a relative data root (L2O_DATA=../shared/datasets) would stop naming the data once we change directory
    monkeypatch.setenv("L2O_DATA", str(Path(os.environ["L2O_DATA"]).resolve()))
    monkeypatch.chdir(tmp_path)  # the same file under a relative path is the same checkpoint
    ev.evaluate("fmnist-conv", ["adam", "ff=ff.pt"], steps=5, seeds=1, out=tmp_path / "o", eval_every=0, resume=True)
    assert calls == []
    ev.evaluate("fmnist-conv", specs, steps=5, seeds=1, out=tmp_path / "o", eval_every=0, resume=True)
    assert calls == []
    torch.manual_seed(1)  # a retrained checkpoint at the same path is evaluated again
    save_checkpoint(ck, build_optimizer(cfg), cfg)
    ev.evaluate("fmnist-conv", specs, steps=5, seeds=1, out=tmp_path / "o", eval_every=0, resume=True)
    assert len(calls) == 1
    ev.evaluate("fmnist-conv", specs, steps=5, seeds=2, out=tmp_path / "o", eval_every=0, resume=True)
    assert len(calls) == 1 + 1 + 2 + 2  # other seeds: everything reruns (adam: 1 tuning run + 2 seeds; ff: 2)
    # A grown grid runs only its new points; the tuned baseline reruns only if its best setting changed.
    monkeypatch.setitem(ev.GRIDS, "adam", [{"lr": 3e-3}, {"lr": 1e-2}])
    n = len(calls)
    res = ev.evaluate("fmnist-conv", specs, steps=5, seeds=2, out=tmp_path / "o", eval_every=0, resume=True)
    best = max(res["tuning"]["adam"], key=lambda t: t["val_acc"])["lr"]
    assert len(res["tuning"]["adam"]) == 2 and res["runs"]["adam"].hyper == {"lr": best}
    assert len(calls) - n == 1 + 2 * (best != 3e-3)


def _fake_validation(monkeypatch, accs: dict[float, float]) -> list[float]:
    """Replace training with a lookup lr -> validation accuracy; returns the list of lrs actually run."""
    ran = []

    def fake(opt, task, steps, seed, device, eval_split, progress=None):
        lr = opt.param_groups[0]["lr"]
        ran.append(lr)
        return {"acc": accs[lr]}

    monkeypatch.setattr(ev, "train_optimizee", fake)
    return ran


@pytest.mark.parametrize("peak", [1e-3, 3e-3, 1e-2, 3e-4, 3e-2, 1e-1])
def test_local_tuning_finds_the_grid_best_of_a_unimodal_curve(monkeypatch, peak):
    grid = [g["lr"] for g in ev.GRIDS["adam"]]
    accs = {lr: 0.9 - abs(grid.index(lr) - grid.index(peak)) * 0.1 for lr in grid}
    ran = _fake_validation(monkeypatch, accs)
    model = torch.nn.Linear(2, 2)
    cand = ev.Candidate("adam", "adam")
    cand.build = lambda hyper: torch.optim.Adam(model.parameters(), **hyper)
    best, trials = ev.tune(cand, task=None, steps=1, device="cpu", start={"lr": 3e-3})
    assert best == {"lr": peak}
    # it walks from the start to the peak, running each visited point's neighbours once, and nothing else
    i, j = sorted((grid.index(3e-3), grid.index(peak)))
    visited = {k for m in range(i, j + 1) for k in (m - 1, m, m + 1) if 0 <= k < len(grid)}
    assert len(ran) == len(set(ran)) and sorted(ran) == sorted(grid[k] for k in visited) and len(ran) < len(grid)
    assert sorted(t["lr"] for t in trials) == sorted(ran)
    # cached trials are not rerun; a start outside the (one-parameter) grid is refused
    ran.clear()
    assert ev.tune(cand, None, 1, "cpu", cached=trials, start={"lr": 3e-3})[0] == {"lr": peak} and ran == []
    with pytest.raises(ValueError, match="must be a point"):
        ev.tune(cand, None, 1, "cpu", start={"lr": 5e-3})


def test_evaluate_resume_continues_a_killed_optimizer_from_its_first_missing_seed(tmp_path, monkeypatch):
    ran = []

    def fake(opt, task, steps, seed, device, eval_split, eval_every=0, progress=None):
        if eval_split == "test" and ran.count(seed) == 0 and seed == 2 and "kill" in ran:
            raise KeyboardInterrupt  # killed while seed 2 runs
        ran.append(seed)
        acc = 0.5 + seed / 100
        return {"losses": [1.0] * steps, "evals": [[steps, acc, 1.0]], "acc": acc, "step_ms": 1.0, "diverged": False}

    monkeypatch.setattr(ev, "train_optimizee", fake)
    specs = ["adam:lr=0.003"]
    ran.append("kill")
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate("fmnist-conv", specs, steps=3, seeds=4, out=tmp_path, eval_every=0, resume=True)
    part = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in part["runs"]["adam:lr=0.003"]["runs"]] == [0, 1]  # each finished seed was saved
    ran.clear()
    res = ev.evaluate("fmnist-conv", specs, steps=3, seeds=4, out=tmp_path, eval_every=0, resume=True)
    assert ran == [2, 3]  # only the missing seeds ran
    assert [r.acc for r in res["runs"]["adam:lr=0.003"].runs] == [0.5, 0.51, 0.52, 0.53]
    ran.clear()  # another hyperparameter is another optimizer: nothing is kept
    ev.evaluate("fmnist-conv", ["adam:lr=0.01"], steps=3, seeds=4, out=tmp_path, eval_every=0, resume=True)
    assert ran == [0, 1, 2, 3]


def test_evaluate_resume_keeps_the_tuning_runs_finished_before_a_kill(tmp_path, monkeypatch):
    monkeypatch.setitem(ev.GRIDS, "adam", [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}])
    ran, kill = [], [True]

    def fake(opt, task, steps, seed, device, eval_split, eval_every=0, progress=None):
        lr = opt.lr  # the hand-designed Adam module of l2o.optim
        if eval_split == "val" and lr == 1e-2 and kill[0]:
            raise KeyboardInterrupt  # killed during the third tuning run
        ran.append((eval_split, lr))
        acc = {1e-3: 0.3, 3e-3: 0.5, 1e-2: 0.4}[lr]
        return {"losses": [1.0] * steps, "evals": [[steps, acc, 1.0]], "acc": acc, "step_ms": 1.0, "diverged": False}

    monkeypatch.setattr(ev, "train_optimizee", fake)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate("fmnist-conv", ["adam"], steps=3, seeds=1, out=tmp_path, eval_every=0, resume=True)
    saved = json.loads((tmp_path / "results.json").read_text())["tuning"]["adam"]
    assert [t["lr"] for t in saved] == [1e-3, 3e-3]
    ran.clear()
    kill[0] = False
    res = ev.evaluate("fmnist-conv", ["adam"], steps=3, seeds=1, out=tmp_path, eval_every=0, resume=True)
    assert ran == [("val", 1e-2), ("test", 3e-3)] and res["runs"]["adam"].hyper == {"lr": 3e-3}


def test_evaluate_runs_a_given_list_of_seeds_and_resumes_it(tmp_path, monkeypatch):
    ran = []

    def fake(opt, task, steps, seed, device, eval_split, eval_every=0, progress=None):
        ran.append(seed)
        return {"losses": [1.0] * steps, "evals": [[steps, 0.5, 1.0]], "acc": 0.5, "step_ms": 1.0, "diverged": False}

    monkeypatch.setattr(ev, "train_optimizee", fake)
    res = ev.evaluate("fmnist-conv", ["adam:lr=0.003"], steps=2, seeds=[3, 4], out=tmp_path, eval_every=0, resume=True)
    assert ran == [3, 4] and [r.seed for r in res["runs"]["adam:lr=0.003"].runs] == [3, 4]
    ran.clear()
    ev.evaluate("fmnist-conv", ["adam:lr=0.003"], steps=2, seeds=[3, 4], out=tmp_path, eval_every=0, resume=True)
    assert ran == []


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    """Redirected output gets one readable line per interval, never carriage-return redraws."""
    import io

    from meta_train.progress import Progress

    stream = io.StringIO()  # not a terminal
    with Progress(10, "work", unit="step", every_s=0.0, stream=stream) as bar:
        for _ in range(10):
            bar.update(1, loss=0.5)
    text = stream.getvalue()
    assert "\r" not in text and text.count("\n") == 10 and "work: 10/10 (100%)" in text and "loss=0.5" in text
