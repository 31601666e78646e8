"""Meta-training fails safely: the multi-process launcher never orphans its workers, NaN weights are never saved, a
second run never destroys the first one's checkpoints (or its own), damaged checkpoints and changed configs are
reported before anything is written, config values are checked, second-order tbptt works, and a full disk is named.

All on meta_train/configs/regression.toml (synthetic tasks, no data); each test takes seconds, the two launcher tests
(two worker processes each) a little longer.
"""
from __future__ import annotations

import copy
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from l2o.optim import build_optimizer, load_checkpoint
from meta_train import train as train_module
from meta_train.config import ConfigError, MetaConfig, load_config
from meta_train.estimators import build_estimator
from meta_train.train import (DivergedError, ResumeError, RunDirError, WriteError, _meta_update, make_task_sampler,
                              train)
from meta_train.unroll import TaskPool

ROOT = Path(__file__).resolve().parent.parent
REGRESSION = str(ROOT / "meta_train" / "configs" / "regression.toml")
LINUX = sys.platform.startswith("linux")


def _cfg(out: Path, *overrides: str):
    return load_config(REGRESSION, [f"run.out_dir='{out}'", *overrides])


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step_*"))


def _snapshot(out: Path) -> dict:
    """Every file under ``out`` with its bytes: to show that a refused start wrote nothing."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _finite_file(path: Path) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_checkpoint(path)[0].state_dict().values())


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "meta_train", "train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------- 1. the launcher
def _processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line contains ``marker`` (a test's unique out-dir)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in cmdline and state != "Z":
                pids.append(int(name))
    return pids


def _launch_two_workers(out: Path) -> subprocess.Popen:
    """The launcher of a long 2-process run, once its workers have logged a few outer steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "meta_train", "train", "--config", REGRESSION,
                                 "--set", "meta.outer_steps=100000", "--set", "run.checkpoint_every=100000",
                                 "--num-processes", "2", "--out-dir", str(out)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(_metrics(out)) < 3:
        assert launcher.poll() is None, launcher.stderr.read()[-3000:]
        assert time.time() < deadline, "the workers did not start training"
        time.sleep(0.2)
    assert len(_processes_with(str(out))) == 4  # launcher, torchrun, 2 workers
    return launcher


def _wait_until_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    while (left := _processes_with(marker)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def _kill_leftovers(marker: str) -> None:
    for pid in _processes_with(marker):  # only processes this test started: their command line names its tmp dir
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not LINUX, reason="process bookkeeping through /proc")
def test_launcher_sigterm_reaches_workers_which_checkpoint(tmp_path):
    out = tmp_path / "launch-term"
    try:
        launcher = _launch_two_workers(out)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 0, launcher.stderr.read()[-3000:]
        # The launcher returns only once torchrun and both workers are gone.
        assert _processes_with(str(out)) == []
        steps = [m["step"] for m in _metrics(out)]
        assert steps == list(range(1, len(steps) + 1))
        # Both workers stopped at the same outer step and checkpointed it (checkpoint_every is far away).
        assert (out / "checkpoints" / "latest").read_text() == f"step_{steps[-1]:07d}"
        assert sorted(p.name for p in (out / "checkpoints" / f"step_{steps[-1]:07d}").glob("pool_rank*.pt")) == [
            "pool_rank0.pt", "pool_rank1.pt"]
    finally:
        _kill_leftovers(str(out))


@pytest.mark.skipif(not LINUX, reason="prctl(PR_SET_PDEATHSIG) and /proc")
def test_launcher_sigkill_takes_torchrun_and_workers_down(tmp_path):
    out = tmp_path / "launch-kill"
    try:
        launcher = _launch_two_workers(out)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        # torchrun gets SIGTERM from the kernel when the launcher dies and stops the workers, which checkpoint.
        assert _wait_until_gone(str(out), timeout=120) == []
        steps = [m["step"] for m in _metrics(out)]
        assert (out / "checkpoints" / "latest").read_text() == f"step_{steps[-1]:07d}"
    finally:
        _kill_leftovers(str(out))


@pytest.mark.parametrize("recorded", [True, False], ids=["meta-records-it", "older-checkpoint-counts-pool-files"])
def test_resume_with_another_number_of_processes_is_refused(tmp_path, recorded):
    out = tmp_path / "run"
    train(_cfg(out, "meta.outer_steps=2", "run.checkpoint_every=2"))
    ckdir = out / "checkpoints" / "step_0000002"
    # Make it the checkpoint of a 2-process run: a second task pool and RNG state (and, in new checkpoints, meta.pt
    # says so; older ones are counted by their pool files).
    shutil.copy(ckdir / "pool_rank0.pt", ckdir / "pool_rank1.pt")
    shutil.copy(ckdir / "random_states_0.pkl", ckdir / "random_states_1.pkl")
    meta = torch.load(ckdir / "meta.pt", weights_only=True)
    if recorded:
        meta["num_processes"] = 2
    else:
        del meta["num_processes"]
    torch.save(meta, ckdir / "meta.pt")
    before = _snapshot(out)
    with pytest.raises(ResumeError, match=r"written by 2 processes, but this run has 1.*--num-processes 2"):
        train(_cfg(out, "meta.outer_steps=4", "run.checkpoint_every=2"), resume=True)
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------------------- 2. NaN weights
def test_meta_update_that_overflows_the_weights_is_undone():
    w = torch.nn.Parameter(torch.tensor([-3.4e38, 1.0]))
    start = w.detach().clone()
    opt = torch.optim.AdamW([w], lr=1e37, weight_decay=0.0)  # Adam's first step moves each weight by lr
    w.grad = torch.tensor([1.0, 1.0])
    assert not _meta_update([w], opt, clip_norm=0.0)  # -3.4e38 - 1e37 overflows float32
    assert torch.equal(w.detach(), start) and opt.state_dict()["state"] == {}  # weights and Adam state as before
    w.grad = torch.tensor([-1.0, 1.0])
    assert _meta_update([w], opt, clip_norm=0.0)  # moving back toward 0 is fine, and is kept
    assert torch.isfinite(w).all() and w[0] > start[0] and int(opt.state_dict()["state"][0]["step"]) == 1


def test_overflowing_run_skips_updates_and_never_saves_non_finite_weights(tmp_path):
    # AdamW's decay factor 1 - lr * wd = -99 grows the weights 99-fold per step until they overflow, as with
    # meta.lr = 1e6 on quick.toml; every such update is undone and counted.
    cfg = _cfg(tmp_path, "meta.lr=1e6", "meta.weight_decay=1e-4", "meta.outer_steps=30", "meta.max_bad_steps=1000",
               "run.checkpoint_every=5")
    result = train(cfg)
    metrics = _metrics(tmp_path)
    assert result["counters"]["skipped"] > 0 and metrics[-1]["skipped"] == result["counters"]["skipped"]
    assert _finite_file(tmp_path / "last.pt") and _finite_file(tmp_path / "best.pt")
    for p in load_checkpoint(tmp_path / "last.pt")[0].state_dict().values():
        assert torch.isfinite(p).all()


def test_run_without_progress_stops_with_an_error(tmp_path):
    # meta.lr = 1e6: after the first update every inner step blows up, so no outer step makes progress.
    cfg = _cfg(tmp_path, "meta.lr=1e6", "meta.outer_steps=50", "meta.max_bad_steps=5", "run.checkpoint_every=3")
    with pytest.raises(DivergedError, match="stopped making progress: in each of the last 5 outer steps"):
        train(cfg)
    metrics = _metrics(tmp_path)
    assert metrics[-1]["step"] == 6  # step 1 made progress, steps 2..6 did not
    assert not (tmp_path / "best.pt").exists()  # the end-of-run save never happens
    assert _finite_file(tmp_path / "last.pt")  # the step-3 checkpoint's weights
    assert isinstance(DivergedError("x"), RuntimeError)


def test_short_run_without_progress_is_an_error(tmp_path):
    # max_bad_steps (20) is capped at the run's length: a 4-step run in which every inner step blows up (here every
    # loss is above loss_clip) ends with an error, not with a "trained" optimizer and exit status 0.
    with pytest.raises(DivergedError, match="last 4 outer steps"):
        train(_cfg(tmp_path, "meta.loss_clip=1e-9", "meta.outer_steps=4"))


def test_cli_exits_non_zero_when_the_run_diverges(tmp_path):
    r = _cli("--config", REGRESSION, "--set", "meta.lr=1e6", "--set", "meta.outer_steps=60", "--out-dir",
             str(tmp_path / "run"))
    assert r.returncode == 1 and "error: meta-training stopped making progress" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "best.pt").exists()


# ---------------------------------------------------------------------------------------------- 3. out-dir reuse
def test_fresh_run_in_a_used_out_dir_is_refused(tmp_path):
    train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"))
    before = _snapshot(tmp_path)
    with pytest.raises(RunDirError, match="is not empty.*--resume.*--overwrite"):
        train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"))
    assert _snapshot(tmp_path) == before
    with pytest.raises(RuntimeError, match="only one"):
        train(_cfg(tmp_path), resume=True, overwrite=True)
    r = _cli("--config", REGRESSION, "--set", "meta.outer_steps=4", "--out-dir", str(tmp_path))
    assert r.returncode == 1 and "is not empty" in r.stderr and "Traceback" not in r.stderr
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_the_old_run_and_keeps_the_new_checkpoints(tmp_path):
    train(_cfg(tmp_path, "meta.outer_steps=8", "run.checkpoint_every=2"))
    assert _folders(tmp_path) == ["step_0000006", "step_0000008"]
    (tmp_path / "notes.txt").write_text("mine")
    # The old bug: step_0000008 sorted after the new run's folders, so "keep the last two" deleted the new ones.
    train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"), overwrite=True)
    assert _folders(tmp_path) == ["step_0000002", "step_0000004"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000004"
    assert [m["step"] for m in _metrics(tmp_path)] == [1, 2, 3, 4]
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not the run's: left alone


def test_rotation_drops_folders_not_of_this_run_whatever_their_step(tmp_path):
    train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"))
    stale = tmp_path / "checkpoints" / "step_0000250"  # e.g. left by an abandoned attempt
    shutil.copytree(tmp_path / "checkpoints" / "step_0000004", stale)
    train(_cfg(tmp_path, "meta.outer_steps=8", "run.checkpoint_every=2"), resume=True)
    assert _folders(tmp_path) == ["step_0000006", "step_0000008"]


# ---------------------------------------------------------------------------------------------- 4. resume
@pytest.fixture(scope="module")
def eight_step_run(tmp_path_factory) -> Path:
    """A finished 8-step run with checkpoints step_6 and step_8: each test copies it, and a resume that falls back to
    step_6 must reproduce its metrics exactly."""
    out = tmp_path_factory.mktemp("eight") / "run"
    train(_cfg(out, "meta.outer_steps=8", "run.checkpoint_every=2"))
    assert _folders(out) == ["step_0000006", "step_0000008"]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        for key in ("meta_loss", "inner_loss", "grad_norm", "lr"):
            assert abs(x[key] - y[key]) <= 1e-6 * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


Damage = namedtuple("Damage", "file how")
DAMAGES = [Damage("model.safetensors", "truncate"), Damage("model.safetensors", "delete"),
           Damage("optimizer.bin", "truncate"), Damage("scheduler.bin", "truncate"),
           Damage("random_states_0.pkl", "truncate"), Damage("pool_rank0.pt", "truncate"),
           Damage("meta.pt", "truncate")]


def _damage(ckdir: Path, d: Damage) -> None:
    if d.how == "delete":
        (ckdir / d.file).unlink()
    else:
        _truncate(ckdir / d.file)


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: f"{d.how}-{d.file}")
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, eight_step_run, capsys, damage):
    out = _copy(eight_step_run, tmp_path)
    _damage(out / "checkpoints" / "step_0000008", damage)
    capsys.readouterr()
    train(_cfg(out, "meta.outer_steps=8", "run.checkpoint_every=2"), resume=True)
    err = capsys.readouterr().err
    assert str(out / "checkpoints" / "step_0000008" / damage.file) in err
    assert "resuming from the previous complete checkpoint" in err and "step_0000006" in err
    _same_metrics(_metrics(out), _metrics(eight_step_run))  # steps 7 and 8 again, exactly as without the damage
    assert _folders(out) == ["step_0000006", "step_0000008"]
    assert (out / "checkpoints" / "latest").read_text() == "step_0000008" and _finite_file(out / "last.pt")


@pytest.mark.parametrize("damage", [DAMAGES[0], DAMAGES[1], DAMAGES[2], DAMAGES[4], DAMAGES[6]],
                         ids=lambda d: f"{d.how}-{d.file}")
def test_damaged_only_checkpoint_is_an_error_naming_the_file(tmp_path, damage):
    train(_cfg(tmp_path, "meta.outer_steps=2", "run.checkpoint_every=2"))
    _damage(tmp_path / "checkpoints" / "step_0000002", damage)
    before = _snapshot(tmp_path)
    with pytest.raises(ResumeError, match="no checkpoint .* can be loaded") as info:
        train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"), resume=True)
    assert str(tmp_path / "checkpoints" / "step_0000002" / damage.file) in str(info.value)
    assert "--overwrite" in str(info.value)
    assert _snapshot(tmp_path) == before


def test_non_finite_weights_in_a_checkpoint_count_as_damage(tmp_path, eight_step_run, capsys):
    from safetensors.torch import load_file, save_file

    out = _copy(eight_step_run, tmp_path)
    weights = out / "checkpoints" / "step_0000008" / "model.safetensors"
    state = load_file(weights)
    first = next(iter(state))
    state[first] = state[first] * float("nan")
    save_file(state, weights)
    train(_cfg(out, "meta.outer_steps=8", "run.checkpoint_every=2"), resume=True)
    assert "non-finite weights" in capsys.readouterr().err and _finite_file(out / "last.pt")


@pytest.mark.parametrize("override", ["optimizer.hidden=4", "tasks.regression_dims=[4]", "run.seed=1",
                                      "meta.estimator='greedy'", "meta.truncation=3", "meta.horizon=10",
                                      "meta.tasks_per_process=1", "meta.log_loss=false", "meta.lr=1e-3"])
def test_resume_that_changes_the_run_is_refused_before_writing(tmp_path, eight_step_run, override):
    out = _copy(eight_step_run, tmp_path)
    before = _snapshot(out)
    key = override.split("=")[0]
    with pytest.raises(ResumeError, match=rf"--resume refused: .*{key}"):
        train(_cfg(out, "meta.outer_steps=10", "run.checkpoint_every=2", override), resume=True)
    assert _snapshot(out) == before


def test_resume_may_change_length_budget_and_cadence(tmp_path, eight_step_run, capsys):
    out = _copy(eight_step_run, tmp_path)
    train(_cfg(out, "meta.outer_steps=10", "run.checkpoint_every=5", "run.max_minutes=30", "meta.max_bad_steps=7"),
          resume=True)
    err = capsys.readouterr().err
    assert "meta.outer_steps 8 -> 10" in err and "run.checkpoint_every 2 -> 5" in err
    assert [m["step"] for m in _metrics(out)] == list(range(1, 11))


def test_pool_written_before_estimators_owned_their_state_still_resumes(tmp_path, eight_step_run, capsys):
    """Runs checkpointed before the estimators kept their own state (the pool file was the pool's dict, each task
    with empty ``pes`` / ``credit`` entries) resume exactly."""
    out = _copy(eight_step_run, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step_0000008")
    (out / "checkpoints" / "latest").write_text("step_0000006")
    pool_file = out / "checkpoints" / "step_0000006" / "pool_rank0.pt"
    new = torch.load(pool_file, weights_only=True)
    assert new["estimator"] == {}  # tbptt keeps no state of its own
    old = {**new["pool"], "tasks": [{**rec, "pes": {}, "credit": {}} for rec in new["pool"]["tasks"]]}
    torch.save(old, pool_file)
    train(_cfg(out, "meta.outer_steps=8", "run.checkpoint_every=2"), resume=True)
    _same_metrics(_metrics(out), _metrics(eight_step_run))


def test_torn_last_metrics_line_does_not_stop_a_resume(tmp_path, eight_step_run, capsys):
    out = _copy(eight_step_run, tmp_path)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "meta_loss": 1.2')  # killed mid-write
    train(_cfg(out, "meta.outer_steps=10", "run.checkpoint_every=2"), resume=True)
    assert "dropped 1 unreadable line" in capsys.readouterr().err
    metrics = _metrics(out)
    _same_metrics(metrics[:8], _metrics(eight_step_run))
    assert [m["step"] for m in metrics[8:]] == [9, 10]


def test_latest_pointer_is_flushed_to_disk(tmp_path, monkeypatch):
    synced = set()
    real_fsync = os.fsync

    def spy(fd):
        synced.add(os.fstat(fd).st_ino)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    train(_cfg(tmp_path, "meta.outer_steps=2", "run.checkpoint_every=2"))
    ckpt_root = tmp_path / "checkpoints"
    assert (ckpt_root / "latest").stat().st_ino in synced  # the pointer file (renamed from its temp file)
    assert ckpt_root.stat().st_ino in synced  # the folder: the rename itself
    assert (ckpt_root / "step_0000002" / "meta.pt").stat().st_ino in synced  # what it points to, before it


# ---------------------------------------------------------------------------------------------- 5. config checks
@pytest.mark.parametrize("override, message", [
    ("meta.outer_steps=abc", "meta.outer_steps must be an integer, got 'abc'"),
    ("meta.outer_steps=2.5", "meta.outer_steps must be an integer, got 2.5"),
    ("meta.outer_steps=true", "meta.outer_steps must be an integer, got True"),
    ("meta.clip_norm=-1", r"meta.clip_norm must be >= 0, got -1"),
    ("meta.loss_clip=0", "meta.loss_clip must be > 0, got 0"),
    ("meta.loss_clip=-5", "meta.loss_clip must be > 0, got -5"),
    ("run.checkpoint_every=0", "run.checkpoint_every must be >= 1, got 0"),
    ("meta.warmup=-10", "meta.warmup must be >= 0, got -10"),
    ("meta.log_loss=maybe", "meta.log_loss must be true or false, got 'maybe'"),
    ("meta.lr=0", "meta.lr must be > 0, got 0"),
    ("meta.min_lr_ratio=2", r"meta.min_lr_ratio must be in \[0, 1\], got 2"),
    ("meta.max_bad_steps=0", "meta.max_bad_steps must be >= 1, got 0"),
    ("run.device='gpu'", "run.device must be one of"),
    ("run.out_dir=''", "run.out_dir must be a non-empty path"),
    ("run.validation_task=3", "run.validation_task must be a string, got 3"),
    ("tasks.regression_dims=[4, 0]", "tasks.regression_dims must be a non-empty list of integers >= 1"),
    ("tasks.regression_dims=4", "tasks.regression_dims must be a list, got 4"),
    ("tasks.family='mnist'", "tasks.family must be 'fmnist', 'regression' or 'task:"),
    ("optimizer.hidden=0", "optimizer.hidden must be >= 1, got 0"),
    ("optimizer.hidden=8.0", "optimizer.hidden must be an integer, got 8.0"),
    ("optimizer.step_rule='adam'", "optimizer.step_rule must be one of"),
    ("meta.second_order=1", "meta.second_order must be true or false, got 1"),
])
def test_config_values_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REGRESSION, [override])


def test_numbers_are_converted_where_a_float_is_expected():
    cfg = load_config(REGRESSION, ["meta.lr=1", "run.max_minutes=2"])
    assert isinstance(cfg.meta.lr, float) and cfg.meta.lr == 1.0 and isinstance(cfg.run.max_minutes, float)
    assert load_config(REGRESSION, ["meta.loss_clip=1e30"]).meta.loss_clip == 1e30
    with pytest.raises(ConfigError, match="meta.pes_sigma must be a finite number"):
        MetaConfig(pes_sigma=float("inf"))


def test_every_shipped_config_loads():
    names = sorted((ROOT / "meta_train" / "configs").glob("*.toml"))
    assert len(names) >= 10
    for path in names:
        cfg = load_config(path)
        assert cfg.meta.max_bad_steps == 20, path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="run.device = 'cuda' but this machine has no usable CUDA GPU"):
        load_config(REGRESSION, ["run.device='cuda'"])
    cfg = _cfg(tmp_path / "run")
    cfg.run.device = "cuda"  # a config built elsewhere: train checks too, before writing anything
    with pytest.raises(ConfigError, match="run.device"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_reports_a_bad_value_without_a_traceback(tmp_path):
    r = _cli("--config", REGRESSION, "--set", "meta.outer_steps=abc", "--out-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "error: meta.outer_steps must be an integer, got 'abc'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- 6. second order
def _directional_derivatives(second_order: bool) -> tuple[list[float], list[float]]:
    """``v . meta-gradient`` of one tbptt truncation, and the same by central finite differences of its meta-loss,
    along 3 random directions ``v`` (float64; lam = 1 makes the inner steps, hence the second-order terms, large)."""
    cfg = load_config(REGRESSION, [f"meta.second_order={str(second_order).lower()}", "optimizer.lam=1.0",
                                   "meta.log_loss=false"])
    torch.manual_seed(0)
    learned = build_optimizer(cfg.optimizer).double()
    pool = TaskPool(make_task_sampler(cfg), learned, [0, 1], cfg.meta.horizon, cfg.meta.horizon_max, seed=0)
    estimator = build_estimator(cfg.meta, learned)
    start = copy.deepcopy(pool.state_dict())
    params = list(learned.parameters())
    estimate = estimator.step(pool)
    assert estimate.stats["blowups"] == 0
    grad = torch.cat([estimate.grads.get(n, torch.zeros_like(p)).reshape(-1) for n, p in learned.named_parameters()])
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def meta_loss(vector: torch.Tensor) -> float:  # the truncation's mean meta-loss, from the same tasks
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vector, params)
        pool.load_state_dict(copy.deepcopy(start))
        return estimator.step(pool).stats["meta_loss"]

    gen = torch.Generator().manual_seed(1)
    analytic, numeric = [], []
    for _ in range(3):
        v = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        v /= v.norm()
        analytic.append(float(v @ grad))
        numeric.append((meta_loss(theta + 1e-5 * v) - meta_loss(theta - 1e-5 * v)) / 2e-5)
    return analytic, numeric


def test_second_order_tbptt_gives_the_exact_meta_gradient(tmp_path):
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the optimizees too: finite differences need the precision
    try:
        first, numeric = _directional_derivatives(False)
        second, numeric_again = _directional_derivatives(True)
    finally:
        torch.set_default_dtype(dtype)
    assert numeric == pytest.approx(numeric_again, rel=1e-12)  # the same meta-loss either way
    err_first = max(abs(a - b) for a, b in zip(first, numeric))
    err_second = max(abs(a - b) for a, b in zip(second, numeric))
    # First order drops the inner gradients' dependence on theta (about 1e-5 here); second order is exact up to the
    # finite differences' own error (about 1e-10).
    assert all(abs(a) > 1e-3 for a in numeric) and err_second < 1e-8 and err_first > 100 * err_second, (
        first, second, numeric)
    result = train(_cfg(tmp_path, "meta.second_order=true", "meta.outer_steps=3"))  # and it trains (float32)
    assert result["step"] == 3 and result["counters"]["skipped"] == 0
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in _metrics(tmp_path))


# ---------------------------------------------------------------------------------------------- 7. failed writes
def _failing_save(*args, **kwargs):
    raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says on a full disk


def test_full_disk_while_checkpointing_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _failing_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda p: usage._replace(free=0))
    with pytest.raises(WriteError, match="the disk is full") as info:
        train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2"))
    assert str(tmp_path / "checkpoints" / "step_0000002") in str(info.value)
    assert "basic_ios::clear" in str(info.value) and "--resume" in str(info.value)
    assert _folders(tmp_path) == []  # the half-written folder is gone (and its space with it)
    assert not (tmp_path / "checkpoints" / "latest").exists()


def test_failed_write_with_free_space_says_so_and_names_the_file(tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("last.pt.tmp"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WriteError, match=r"writing .*last\.pt failed \(OSError") as info:
        train(_cfg(tmp_path, "meta.outer_steps=2", "run.checkpoint_every=2"))
    assert "disk is full" not in str(info.value) and "MiB free" in str(info.value)
    assert not (tmp_path / "last.pt.tmp").exists()


def test_no_space_left_is_a_full_disk_whatever_the_free_space_says(tmp_path, monkeypatch):
    def save(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WriteError, match="the disk is full"):
        train(_cfg(tmp_path, "meta.outer_steps=2", "run.checkpoint_every=2"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_run_checkpointed_on_a_gpu_resumes_on_the_cpu(tmp_path):
    """A run meta-trained on a GPU lease continues on a CPU machine (experiments/reference_recipe_gpu.sh): the
    checkpoint's task pool, meta-parameters and Adam state are read onto the CPU whatever device wrote them."""
    train(_cfg(tmp_path, "meta.outer_steps=2", "run.checkpoint_every=2", "run.device='cuda'"))
    pool = torch.load(tmp_path / "checkpoints" / "step_0000002" / "pool_rank0.pt", weights_only=True)
    assert pool["pool"]["tasks"][0]["params"].is_cuda  # the checkpoint holds CUDA tensors
    train(_cfg(tmp_path, "meta.outer_steps=4", "run.checkpoint_every=2", "run.device='cpu'"), resume=True)
    steps = [m["step"] for m in _metrics(tmp_path)]
    assert steps == [1, 2, 3, 4] and all(math.isfinite(m["meta_loss"]) for m in _metrics(tmp_path))
    assert _finite_file(tmp_path / "last.pt")
