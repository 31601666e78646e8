"""The meta-training outer loop: plain PyTorch under Accelerate, read top to bottom.

    python -m meta_train train --config meta_train/configs/quick.toml [--set meta.lr=1e-4 ...] [--resume | --overwrite]
    accelerate launch --cpu --num_processes 2 -m meta_train train --config ...

Each process owns a TaskPool (its own tasks, its own RNG stream) and an estimator, which advances the pool by one
truncation per outer step and returns a meta-gradient; the meta-gradients are averaged across processes, written to
the learned optimizer's ``.grad``, clipped, and the outer AdamW steps (warm-up then cosine). The main process shows a
progress bar, appends metrics to ``metrics.jsonl`` (and TensorBoard when installed), validates on a fresh
``fmnist-conv`` (validation split) every ``validate_every`` steps keeping ``best.pt``, and every ``checkpoint_every``
steps, at the end, on SIGTERM/SIGINT and when ``max_minutes`` runs out, all processes write a resumable checkpoint
(Accelerate ``save_state`` plus each process's task pool and estimator state). ``--resume`` continues from the newest
complete checkpoint with the same outer-step count, schedules and RNG streams, so the metrics continue exactly those
of an uninterrupted run.

What can go wrong, and what happens then (every error is a :class:`TrainingError` whose message names the file or
setting and says what to do; the CLI prints it and exits with status 1):

* ``run.out_dir`` already holds a run: refused unless ``--resume`` (continue it) or ``--overwrite`` (delete its
  checkpoints and metrics first), so a second run never mixes its checkpoints and metrics with the first one's.
* ``--resume`` with a config that changes what the run computes (see :data:`RESUMABLE_CHANGES` for what may change),
  or with another number of processes than the checkpoint was written by: refused before anything is written.
* A damaged checkpoint (truncated, missing or non-finite file): every file is read back before anything is loaded; the
  run continues from the previous complete checkpoint with a warning, or stops with an error naming the file.
* A meta-update that would make the weights non-finite is undone (counted in ``skipped``); when no outer step makes
  progress for ``meta.max_bad_steps`` steps in a row, the run stops with :class:`DivergedError`. Non-finite weights
  are never written.
* A failed write (full disk, ...) raises :class:`WriteError` naming the file and the free space.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from l2o.optim import build_optimizer, save_checkpoint, warm_start
from l2o.schedules import warmup_cosine
from tasks import RegressionFamily, RegressionTask, TaskFamily, TaskFamilyProtocol, TaskProtocol, get_task

from .config import Config, check_device
from .estimators import Estimate, build_estimator
from .inner_train import train_optimizee
from .progress import Progress
from .run_files import (DivergedError, ResumeError, RunDirError, TrainingError, Unreadable,
                        WriteError, check_resumable_config, check_unused, clear_run, fsync_tree,
                        load_newest_checkpoint, read_back, require_finite, save_optimizer, truncate_metrics,
                        write_pointer, write_text, writing)  # noqa: F401 (RunDirError, WriteError: train()'s errors)
from .unroll import TaskPool


def outer_param_groups(learned: torch.nn.Module, meta) -> list[dict]:
    """The outer optimizer's parameter groups: one, or with ``meta.rate_lr_scale != 1`` the learned category rates
    (``*.log_rate``) apart, at ``lr * rate_lr_scale`` and without weight decay (it would pull them toward rate 1)."""
    named = list(learned.named_parameters())
    rates = [p for n, p in named if n.split(".")[-1] == "log_rate"]
    if meta.rate_lr_scale == 1 or not rates:
        return [{"params": [p for _, p in named]}]
    return [{"params": [p for n, p in named if n.split(".")[-1] != "log_rate"]},
            {"params": rates, "lr": meta.lr * meta.rate_lr_scale, "weight_decay": 0.0}]


def make_task_sampler(cfg: Config):
    """``generator -> task`` for the configured task family (reads nothing but the generator)."""
    t = cfg.tasks
    family: TaskFamilyProtocol
    if t.family == "fmnist":
        family = TaskFamily(widths=tuple(t.widths), depths=tuple(t.depths), batch_size=t.batch_size,
                            batch_sizes=tuple(t.batch_sizes) if t.batch_sizes else None)
        return family.sample
    if t.family == "regression":
        family = RegressionFamily(tuple(t.regression_dims))
        return family.sample
    if t.family.startswith("task:"):
        task: TaskProtocol = get_task(t.family[len("task:"):])
        return lambda generator: task
    raise ValueError(f"unknown task family {t.family!r}: use 'fmnist', 'regression' or 'task:<registered name>'")


def lr_lambda(cfg: Config):
    m = cfg.meta

    def f(step: int) -> float:
        return warmup_cosine(step, warmup=m.warmup, total=m.outer_steps, min_ratio=m.min_lr_ratio)

    return f


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def validate(core, cfg: Config, device) -> float:
    """Mean validation accuracy (fmnist tasks) or minus the final loss (regression) of fresh optimizees."""
    name = cfg.run.validation_task
    scores = []
    for s in range(cfg.run.validation_seeds):
        if name == "regression":
            task = RegressionTask(8, 424242 + s)
            r = train_optimizee(core, task, cfg.run.validation_steps, seed=10_000 + s, device=device, eval_split="val")
            scores.append(-r["loss"])
        else:
            r = train_optimizee(core, get_task(name), cfg.run.validation_steps, seed=10_000 + s, device=device)
            scores.append(r["acc"])
    return sum(scores) / len(scores)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Meta-train as ``cfg`` says. ``resume``: continue the run in ``run.out_dir`` from its newest loadable checkpoint
    (from scratch when it has none); ``overwrite``: delete the run in ``run.out_dir`` first. Without either, the
    folder must be empty or absent."""
    # ------------------------------------------------------------------ setup
    if resume and overwrite:
        raise TrainingError("--resume continues the run in run.out_dir and --overwrite deletes it: pass only one")
    check_device(cfg.run)
    cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
    acc = Accelerator(cpu=cpu, step_scheduler_with_optimizer=False)
    main = acc.is_main_process
    out = Path(cfg.run.out_dir)
    ckpt_root = out / "checkpoints"
    # Every process checks before any process writes, so a refused start leaves the folder exactly as it was.
    changes = check_resumable_config(out, cfg) if resume else []
    if not resume and not overwrite:
        check_unused(out)
    torch.manual_seed(cfg.run.seed)  # the same initial meta-parameters on every process
    learned = build_optimizer(cfg.optimizer)
    if not any(p.requires_grad for p in learned.parameters()):
        raise ValueError(f"optimizer family {cfg.optimizer.family!r} has no meta-parameters to train")
    if cfg.meta.init_from:
        warm_start(learned, cfg.optimizer, cfg.meta.init_from)
    outer = torch.optim.AdamW if cfg.meta.outer_optimizer == "adamw" else torch.optim.Adam
    meta_opt = outer(outer_param_groups(learned, cfg.meta), lr=cfg.meta.lr, weight_decay=cfg.meta.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(meta_opt, lr_lambda(cfg))
    learned, meta_opt, sched = acc.prepare(learned, meta_opt, sched)
    core = acc.unwrap_model(learned)  # the estimators call its functional update directly (no DDP forward)
    n = cfg.meta.tasks_per_process
    slots = list(range(acc.process_index * n, (acc.process_index + 1) * n))
    pool = TaskPool(make_task_sampler(cfg), core, slots, cfg.meta.horizon, cfg.meta.horizon_max, seed=cfg.run.seed,
                    batch_size=None if cfg.tasks.family == "regression" or cfg.tasks.batch_sizes else
                    cfg.tasks.batch_size, device=acc.device,
                    vectorize=acc.device.type == "cuda" if cfg.meta.vectorize == "auto" else cfg.meta.vectorize)
    estimator = build_estimator(cfg.meta, core)
    start, best, counters = 0, {"score": -math.inf, "step": 0}, {"blowups": 0, "skipped": 0, "wall_s": 0.0}

    resumed = load_newest_checkpoint(acc, ckpt_root, pool, estimator) if resume else None
    if resumed is not None:
        meta = resumed[1]
        start, best, counters = meta["step"], meta["best"], meta["counters"]
    counters.setdefault("bad_streak", 0)  # outer steps in a row without progress (older checkpoints lack it)
    acc.wait_for_everyone()  # every process has read what it needs: from here on the main process writes
    if main:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        with writing(out / "config.json"):
            write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if resumed is not None:
            torn = truncate_metrics(out / "metrics.jsonl", start)
            if torn:
                print(f"warning: dropped {torn} unreadable line(s) of {out / 'metrics.jsonl'} (a run killed while "
                      f"writing it)", file=sys.stderr)
            if changes:
                print("resuming with changed settings: " + "; ".join(f"{s}.{k} {a!r} -> {b!r}" for s, k, a, b in
                                                                     changes), file=sys.stderr)
            print(f"resumed from {resumed[0]} at outer step {start}")
        else:
            if resume:
                print(f"--resume: no checkpoint in {ckpt_root}, starting from scratch")
                truncate_metrics(out / "metrics.jsonl", 0)  # lines of a run that never reached a checkpoint
                shutil.rmtree(ckpt_root, ignore_errors=True)  # no complete checkpoint in it (else it would load)
            elif (out / "metrics.jsonl").exists():
                (out / "metrics.jsonl").unlink()
    acc.wait_for_everyone()

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the current outer step, checkpoint, exit
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    writer = _tensorboard(out) if main else None
    # The rotation keeps the checkpoint just written and the one `latest` named before it (this run's previous one,
    # or the one it resumed from); folders of another run or of an abandoned attempt are deleted whatever their step.
    previous = {"name": resumed[0].name if resumed is not None else None}

    def checkpoint(step: int) -> None:
        name = f"step_{step:07d}"
        ckdir = ckpt_root / name
        require_finite(core, ckdir)
        if main and ckdir.exists():  # half-written by an earlier attempt at this step (`latest` never names it)
            shutil.rmtree(ckdir)
        acc.wait_for_everyone()
        with writing(ckdir, cleanup=ckdir):
            acc.save_state(str(ckdir))
            # Per process: its tasks, and the estimator's per-task state (PES pairs, window credit buffers).
            torch.save({"pool": pool.state_dict(), "estimator": estimator.state_dict()},
                       ckdir / f"pool_rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if main:
            with writing(ckdir / "meta.pt", cleanup=ckdir):
                torch.save({"step": step, "best": best, "counters": counters, "num_processes": acc.num_processes,
                            "config": json.dumps(cfg.to_dict())}, ckdir / "meta.pt")
                fsync_tree(ckdir)
            write_pointer(ckpt_root / "latest", name)  # the pointer moves only once the checkpoint is complete
            for old in ckpt_root.glob("step_*"):
                if old.name not in (name, previous["name"]):
                    shutil.rmtree(old, ignore_errors=True)
            save_optimizer(out / "last.pt", core, cfg, _summary(cfg, step, best, counters))
        previous["name"] = name
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    # Stop when no outer step made progress (every inner step blew up, or the meta-update was skipped) for this many
    # steps in a row: a run in that state only burns time, and its weights will not get better.
    patience = min(cfg.meta.max_bad_steps, cfg.meta.outer_steps)
    params = list(core.parameters())
    t_start = time.time() - counters["wall_s"]
    # A bar on a terminal; in a log file one plain line every 30 s (never carriage-return redraws).
    bar = Progress(cfg.meta.outer_steps, f"meta-train {cfg.optimizer.family}", initial=start, unit="outer",
                   disable=not main)

    def log(record: dict) -> None:  # main process: metrics.jsonl (+ TensorBoard)
        with writing(out / "metrics.jsonl"):
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, record["step"])

    step = start
    try:
        for step in range(start, cfg.meta.outer_steps):
            t0 = time.time()
            stats, grad_norm = _set_meta_gradient(acc, core, estimator.step(pool))
            # A non-finite meta-gradient never reaches the weights, and neither does a step that overflows them.
            updated = math.isfinite(grad_norm) and _meta_update(params, meta_opt, cfg.meta.clip_norm)
            sched.step()
            if not updated:
                counters["skipped"] += 1
            counters["blowups"] += stats["blowups"]
            progress = updated and math.isfinite(stats["meta_loss"])
            counters["bad_streak"] = 0 if progress else counters["bad_streak"] + 1
            counters["wall_s"] = time.time() - t_start
            record = {"step": step + 1, "meta_loss": stats["meta_loss"], "inner_loss": stats["inner_loss"],
                      "grad_norm": grad_norm, "lr": sched.get_last_lr()[0], "blowups": counters["blowups"],
                      "skipped": counters["skipped"], "resets": pool.resets,
                      "inner_steps_per_s": stats["inner_steps"] * acc.num_processes / (time.time() - t0),
                      "wall_s": counters["wall_s"]}
            last_step = step + 1 == cfg.meta.outer_steps
            if cfg.run.validate_every and ((step + 1) % cfg.run.validate_every == 0 or last_step):
                if main:
                    record["val_score"] = score = validate(core, cfg, acc.device)
                    if score > best["score"]:
                        best = {"score": score, "step": step + 1}
                        save_optimizer(out / "best.pt", core, cfg, _summary(cfg, step + 1, best, counters, score))
                    if cfg.run.keep_validated:  # its own score in its summary: a kept file can be shipped alone
                        save_optimizer(out / "validated" / f"step_{step + 1:07d}.pt", core, cfg,
                                       _summary(cfg, step + 1, best, counters, score))
                acc.wait_for_everyone()
            if main:
                if (step + 1) % cfg.run.log_every == 0 or last_step or counters["bad_streak"] >= patience:
                    log(record)
                bar.update(1, meta_loss=stats["meta_loss"], steps_s=record["inner_steps_per_s"],
                           blowups=counters["blowups"])
            if counters["bad_streak"] >= patience:  # the same decision on every process: its inputs were reduced
                raise _no_progress_error(cfg, patience, step + 1, counters, out, previous["name"])
            out_of_time = bool(cfg.run.max_minutes) and counters["wall_s"] > 60 * cfg.run.max_minutes
            stop_now = _any_process(acc, bool(stop["signal"]) or out_of_time)
            if (step + 1) % cfg.run.checkpoint_every == 0 or last_step or stop_now:
                checkpoint(step + 1)
            if stop_now:
                if main:
                    why = f"signal {stop['signal']}" if stop["signal"] else f"time budget of {cfg.run.max_minutes} min"
                    print(f"\nstopped at outer step {step + 1} ({why}); checkpoint written, continue with --resume")
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()
    done = step + 1 if cfg.meta.outer_steps > start else start
    # Without a validation score, best.pt is the newest weights (rewritten by every run segment, so a resumed run
    # never leaves an older segment's weights there).
    if main and (not math.isfinite(best["score"]) or not (out / "best.pt").exists()):
        save_optimizer(out / "best.pt", core, cfg, _summary(cfg, done, best, counters))
    return {"step": done, "best": best, "counters": counters, "out_dir": str(out)}


def _set_meta_gradient(acc: Accelerator, core: torch.nn.Module, estimate: Estimate) -> tuple[dict, float]:
    """Write an outer step's meta-gradient to the ``.grad`` of ``core``'s parameters, averaged across processes;
    return the statistics (across processes too) and the meta-gradient's norm.

    The meta-loss averages the processes that have one (a process whose inner steps all blew up has none), so one bad
    process does not hide the others' progress; blow-ups are summed.
    """
    stats = dict(estimate.stats)
    flat = torch.cat([estimate.grads.get(n, torch.zeros_like(p)).reshape(-1) for n, p in core.named_parameters()])
    if acc.num_processes > 1:
        flat = acc.reduce(flat, reduction="mean")
        ok = math.isfinite(stats["meta_loss"])
        local = torch.tensor([stats["meta_loss"] if ok else 0.0, float(ok), float(stats["blowups"])], device=acc.device)
        total = acc.reduce(local, reduction="sum")
        stats["meta_loss"] = float(total[0] / total[1]) if float(total[1]) > 0 else float("nan")
        stats["blowups"] = int(round(float(total[2])))
    offset = 0
    for p in core.parameters():
        p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return stats, float(torch.linalg.vector_norm(flat))


def _any_process(acc: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process: every process must take the same decision (to stop), or the next
    reduce hangs."""
    if acc.num_processes > 1:
        return float(acc.reduce(torch.tensor([float(flag)], device=acc.device), "sum")) > 0
    return flag


def _no_progress_error(cfg: Config, patience: int, step: int, counters: dict, out: Path,
                       last_checkpoint: str | None) -> DivergedError:
    last = f"checkpoints/{last_checkpoint}" if last_checkpoint else "none was written"
    return DivergedError(
        f"meta-training stopped making progress: in each of the last {patience} outer steps (up to step "
        f"{step}) every inner step blew up (a non-finite loss, or one above meta.loss_clip = "
        f"{cfg.meta.loss_clip:g}) or the meta-update was skipped (a non-finite meta-gradient, or weights "
        f"it would have made non-finite; {counters['skipped']} skipped in all). Nothing was saved from "
        f"these steps (last checkpoint in {out}: {last}). Lower meta.lr (now {cfg.meta.lr:g}) or "
        f"meta.clip_norm, check the task family, and start again with --overwrite (meta.max_bad_steps = "
        f"{cfg.meta.max_bad_steps} sets how many such steps are tolerated).")


def _meta_update(params: list[torch.nn.Parameter], meta_opt, clip_norm: float) -> bool:
    """One outer step that never leaves non-finite weights; returns whether it was kept.

    A finite meta-gradient can still overflow the weights (a huge meta.lr, or AdamW's decay factor 1 - lr * wd far
    below -1 growing them geometrically): then the weights and the outer optimizer's state are put back as they were
    before the step, so the run continues from its last finite point instead of saving NaNs.
    """
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    inner = getattr(meta_opt, "optimizer", meta_opt)  # the torch optimizer inside Accelerate's wrapper
    before = [p.detach().clone() for p in params]
    # Per-parameter state (Adam's moments and step count) by copy: much cheaper than deepcopy(state_dict()).
    state = {p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in inner.state[p].items()}
             for p in params if p in inner.state}
    meta_opt.step()
    if bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):  # one host sync, not one per tensor
        return True
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    for p in params:
        if p in state:
            inner.state[p] = state[p]
        else:  # this was its first step: it had no state
            inner.state.pop(p, None)
    return False


def export_run(run: Path, out: Path) -> Path:
    """Rebuild the learned optimizer of a run's newest checkpoint (Accelerate state) and save it as a checkpoint."""
    latest = run / "checkpoints" / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}; was the run started with this out_dir?")
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    ckdir = run / "checkpoints" / latest.read_text().strip()
    learned = build_optimizer(cfg.optimizer)
    weights = ckdir / "model.safetensors"
    try:
        state = (read_back(weights, load_file) if weights.exists() else
                 read_back(ckdir / "pytorch_model.bin", lambda p: torch.load(p, map_location="cpu", weights_only=True)))
        meta = read_back(ckdir / "meta.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True))
    except Unreadable as exc:
        raise ResumeError(f"cannot export {ckdir}: {exc}. Export an older checkpoint folder's weights, or resume the "
                          f"run (--resume falls back to the previous complete checkpoint).") from exc
    learned.load_state_dict(state)
    return save_checkpoint(out, learned, cfg.optimizer, _summary(cfg, meta["step"], meta["best"], meta["counters"]))


def _summary(cfg: Config, step: int, best: dict, counters: dict, val_score: float | None = None) -> dict:
    """The checkpoint's summary; ``val_score``: the saved weights' own validation score (when validated)."""
    return {"outer_step": step, "val_score": val_score,
            "best_val_score": best["score"] if math.isfinite(best["score"]) else None,
            "best_step": best["step"], "wall_s": counters["wall_s"], "blowups": counters["blowups"],
            "meta": json.dumps(cfg.to_dict()), "machine": f"{platform.machine()} {os.cpu_count()} cpus "
            f"torch {torch.__version__}", "commit": git_commit()}


def _tensorboard(out: Path):
    try:  # imported only here: tensorboard is optional, and slow to import
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out / "tb"))
