"""Meta-training: it learns, it resumes exactly after SIGKILL, 2 processes equal 1, blow-ups are survived."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2o.optim import OptimizerConfig, build_optimizer, load_checkpoint
from meta_train import train as train_module
from meta_train.config import load_config
from meta_train.inner_train import train_optimizee
from meta_train.train import train
from tasks.regression import RegressionFamily, RegressionStream, RegressionTask

ROOT = Path(__file__).resolve().parent.parent
REGRESSION = str(ROOT / "meta_train" / "configs" / "regression.toml")


def held_out_score(opt) -> float:
    """Mean loss over the last 5 of 20 steps on 8 regression tasks never seen in meta-training."""
    losses = []
    for s in range(8):
        r = train_optimizee(opt, RegressionTask(8 if s % 2 else 4, 900 + s), 20, seed=s, eval_split=None)
        losses.append(sum(r["losses"][-5:]) / 5)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("estimator, family, steps, overrides, factor", [
    ("tbptt", "ng-gnn", 150, [], 10.0),
    ("greedy", "ng-gnn", 150, [], 10.0),
    ("pes", "ff", 400, ["meta.pes_sigma=0.1", "meta.lr=0.03"], 3.0),
])
def test_meta_training_beats_initialisation(tmp_path, estimator, family, steps, overrides, factor):
    cfg = load_config(REGRESSION, [f"meta.estimator='{estimator}'", f"optimizer.family='{family}'",
                                   f"meta.outer_steps={steps}", f"run.out_dir='{tmp_path}'"] + overrides)
    torch.manual_seed(cfg.run.seed)
    before = held_out_score(build_optimizer(cfg.optimizer))
    train(cfg)
    after = held_out_score(load_checkpoint(tmp_path / "last.pt")[0])
    # Stated factor: the meta-trained optimizer reaches a held-out loss at least `factor` times lower.
    assert after * factor < before, (before, after)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == steps and all(k in metrics[0] for k in ("meta_loss", "grad_norm", "inner_steps_per_s"))


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "meta_train", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_then_resume_continues_exactly(tmp_path):
    common = ["--config", REGRESSION, "--set", "meta.outer_steps=40", "--set", "run.checkpoint_every=10",
              "--set", "meta.tasks_per_process=2"]
    ref = _run_cli(common + ["--out-dir", str(tmp_path / "ref")])
    killed = _run_cli(common + ["--out-dir", str(tmp_path / "run")])
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until a checkpoint exists and a few more steps ran
        steps = [m["step"] for m in _metrics(tmp_path / "run" / "metrics.jsonl")]
        if (tmp_path / "run" / "checkpoints" / "latest").exists() and steps and steps[-1] >= 14:
            break
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    assert _metrics(tmp_path / "run" / "metrics.jsonl")[-1]["step"] < 40
    resumed = _run_cli(common + ["--out-dir", str(tmp_path / "run"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = _metrics(tmp_path / "ref" / "metrics.jsonl"), _metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in b] == list(range(1, 41))
    for x, y in zip(a, b):
        for key in ("meta_loss", "inner_loss", "grad_norm", "lr"):
            assert abs(x[key] - y[key]) <= 1e-6 * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])
    wa = load_checkpoint(tmp_path / "ref" / "last.pt")[0].state_dict()
    wb = load_checkpoint(tmp_path / "run" / "last.pt")[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_two_processes_average_like_one(tmp_path):
    common = ["--config", REGRESSION, "--set", "meta.outer_steps=6", "--set", "run.checkpoint_every=100"]
    one = _run_cli(common + ["--out-dir", str(tmp_path / "one"), "--set", "meta.tasks_per_process=2"])
    assert one.wait(timeout=300) == 0, one.stderr.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # The command users type: Accelerate's CPU launcher + our CLI starting the 2 gloo workers.
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "meta_train", "train", *common, "--out-dir", str(tmp_path / "two"),
                          "--set", "meta.tasks_per_process=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _metrics(tmp_path / "one" / "metrics.jsonl"), _metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x["meta_loss"] - y["meta_loss"]) < 1e-5 * max(1, abs(x["meta_loss"])), (x, y)
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-4 * max(1e-3, x["grad_norm"]), (x, y)
    wa = load_checkpoint(tmp_path / "one" / "last.pt")[0].state_dict()
    wb = load_checkpoint(tmp_path / "two" / "last.pt")[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


class _ExplodingStream(RegressionStream):
    def batch(self, step):
        x, y = super().batch(step)
        return (x * float("nan"), y) if step >= 3 else (x, y)


class _ExplodingTask(RegressionTask):
    def batches(self, split="train", batch_size=None, seed=0, **kw):
        s = super().batches(split, batch_size, seed)
        return _ExplodingStream(s.w, s.batch_size, s.seed)


@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_blown_up_task_is_reset_and_reported(tmp_path, monkeypatch, estimator):
    fam = RegressionFamily((4,))

    def sampler(cfg):
        def sample(gen):
            t = fam.sample(gen)
            return _ExplodingTask(t.dim, t.task_seed) if t.task_seed % 2 else t
        return sample

    monkeypatch.setattr(train_module, "make_task_sampler", sampler)
    cfg = load_config(REGRESSION, [f"meta.estimator='{estimator}'", "optimizer.family='ff'", "meta.outer_steps=12",
                                   "meta.tasks_per_process=3", f"run.out_dir='{tmp_path}'"])
    result = train(cfg)
    assert result["counters"]["blowups"] > 0 and result["step"] == 12
    metrics = _metrics(tmp_path / "metrics.jsonl")
    assert metrics[-1]["blowups"] == result["counters"]["blowups"]
    weights = load_checkpoint(tmp_path / "last.pt")[0].state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown keys in \\[meta\\]"):
        load_config(REGRESSION, ["meta.learning_rate=1"])
    with pytest.raises(ValueError, match="estimator"):
        load_config(REGRESSION, ["meta.estimator='sgd'"])
    with pytest.raises(FileNotFoundError, match="configs"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(REGRESSION, ["lr=3"])


def test_pool_checkpoint_from_another_optimizer_config_is_refused():
    from meta_train.unroll import TaskPool

    def pool(**kw):
        learned = build_optimizer(OptimizerConfig(family="ff", adam_residual=True, **kw))
        return TaskPool(RegressionFamily((4,)).sample, learned, [0, 1], 10, 0, seed=0)

    sd = pool().state_dict()
    pool().load_state_dict(sd)  # same config: fine
    with pytest.raises(ValueError, match="config changed"):
        pool(relative=True).load_state_dict(sd)


@pytest.mark.parametrize("estimator", ["tbptt", "greedy", "pes", "window"])
def test_pool_and_estimator_state_resume_exactly(estimator):
    """The pool's checkpoint and the estimator's own (PES pairs and noise sums, window credit buffers) continue
    with exactly the meta-gradients and statistics of an uninterrupted run, across task resets."""
    from meta_train.config import MetaConfig
    from meta_train.estimators import build_estimator
    from meta_train.unroll import TaskPool

    cfg = MetaConfig(estimator=estimator, truncation=3, horizon=5, horizon_max=9, log_loss=True, window=4)
    torch.manual_seed(0)
    learned = build_optimizer(OptimizerConfig(family="ff", adam_residual=True, adam_scale=1.0))

    def setup():
        pool = TaskPool(RegressionFamily((4, 8)).sample, learned, [0, 1], cfg.horizon, cfg.horizon_max, seed=0)
        return pool, build_estimator(cfg, learned)

    pool, est = setup()
    for _ in range(3):
        est.step(pool)
    saved = copy.deepcopy((pool.state_dict(), est.state_dict()))
    twin_pool, twin_est = setup()
    twin_pool.load_state_dict(saved[0])
    twin_est.load_state_dict(saved[1])
    for _ in range(4):
        a, b = est.step(pool), twin_est.step(twin_pool)
        assert a.stats == b.stats and a.grads.keys() == b.grads.keys() and a.grads
        assert all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)
    assert pool.resets == twin_pool.resets > 0
    assert all(torch.equal(x.params, y.params) and x.step == y.step for x, y in zip(pool.tasks, twin_pool.tasks))


def test_every_command_parses_to_its_handler():
    """One front door: every command is a real subcommand whose parsed arguments name the function that runs it
    (no option may shadow that: ``export --run`` once did)."""
    from meta_train.cli import build_parser

    parser = build_parser()
    examples = {"demo": [], "train": ["--config", REGRESSION], "evaluate": ["--optimizers", "adam"],
                "export": ["--run", "runs/x", "--out", "x.pt"], "main-job": [], "report": ["--evals", "e"],
                "weight-space": ["report"], "results": ["--stages", "report"], "step-stats": ["x.pt"]}
    assert set(examples) == set(parser._subparsers._group_actions[0].choices)
    for command, rest in examples.items():
        args = parser.parse_args([command, *rest])
        assert callable(args.handler) and args.handler.__name__ == "_" + command.replace("-", "_"), command
    args = parser.parse_args(["export", "--run", "runs/x", "--out", "x.pt"])
    assert args.run == "runs/x" and args.out == "x.pt"
    with pytest.raises(SystemExit):
        parser.parse_args(["results", "--stages", "nonsense"])


def test_keep_validated_saves_every_validated_step(tmp_path):
    """``run.keep_validated``: the weights at each validation are kept as loadable checkpoints (best.pt is one of
    them), so meta-training's checkpoints can be evaluated later, not just the best one."""
    cfg = load_config(REGRESSION, ["meta.outer_steps=6", "run.validate_every=2", "run.validation_task='regression'",
                                   "run.validation_steps=5", "run.keep_validated=true", f"run.out_dir='{tmp_path}'"])
    result = train(cfg)
    kept = sorted(p.name for p in (tmp_path / "validated").iterdir())
    assert kept == ["step_0000002.pt", "step_0000004.pt", "step_0000006.pt"]
    best = load_checkpoint(tmp_path / "best.pt")[0].state_dict()
    same = load_checkpoint(tmp_path / "validated" / f"step_{result['best']['step']:07d}.pt")[0].state_dict()
    assert all(torch.equal(best[k], same[k]) for k in best)
    summaries = {n: load_checkpoint(tmp_path / "validated" / n)[2]["summary"] for n in kept}
    scores = [json.loads(line)["val_score"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "val_score" in json.loads(line)]
    assert [summaries[n]["val_score"] for n in kept] == scores  # each kept file knows its own score
    assert summaries[kept[-1]]["best_val_score"] == max(scores)  # and the best so far, its own included
    last = load_checkpoint(tmp_path / "validated" / "step_0000006.pt")[0].state_dict()
    assert any(not torch.equal(last[k], load_checkpoint(tmp_path / "validated" / "step_0000002.pt")[0].state_dict()[k])
               for k in last)
