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
import errno
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError
from safetensors.torch import load_file

from l2o.optim import build_optimizer, save_checkpoint
from tasks import RegressionFamily, RegressionTask, TaskFamily, TaskFamilyProtocol, TaskProtocol, get_task

from .config import Config, check_device
from .estimators import Estimate, Estimator, build_estimator
from .inner_train import train_optimizee
from .progress import Progress
from .unroll import TaskPool

# What a run writes into run.out_dir (and --overwrite deletes): other files in the folder are left alone.
RUN_FILES = ("checkpoints", "metrics.jsonl", "best.pt", "last.pt", "config.json", "tb", "metrics.jsonl.tmp",
             "best.pt.tmp", "last.pt.tmp", "config.json.tmp")
# The settings a resumed run may change: how long it runs, how often it checkpoints, validates and logs, when it
# gives up, where its folder is and which device it runs on. Everything else (the optimizer and task sections, the
# seed, the estimator and its truncation, horizon, tasks per process, meta-loss, outer optimizer, validation task...)
# defines what the run computes, so the checkpoint means something else under another value: resuming is refused.
RESUMABLE_CHANGES = frozenset({("meta", "outer_steps"), ("meta", "max_bad_steps"), ("run", "out_dir"),
                               ("run", "checkpoint_every"), ("run", "validate_every"), ("run", "max_minutes"),
                               ("run", "log_every"), ("run", "device")})
LOW_DISK_BYTES = 100 * 2**20  # a write failing with less free space than this is reported as a full disk


class TrainingError(RuntimeError):
    """Meta-training cannot start or go on; the message says why and what to do (the CLI prints it, exit status 1)."""


class RunDirError(TrainingError):
    """``run.out_dir`` holds another run and neither ``--resume`` nor ``--overwrite`` says what to do with it."""


class ResumeError(TrainingError):
    """``--resume`` is refused: no checkpoint loads, or it was written by another config or number of processes."""


class DivergedError(TrainingError):
    """The run stopped making progress, or non-finite weights were about to be written."""


class WriteError(TrainingError):
    """Writing a checkpoint, the metrics or an optimizer file failed (full disk, read-only folder, ...)."""


class _Unreadable(Exception):
    """One checkpoint file cannot be read back (internal: the resume falls back to an older checkpoint)."""


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
        if m.warmup and step < m.warmup:
            return (step + 1) / m.warmup
        progress = (step - m.warmup) / max(1, m.outer_steps - m.warmup)
        return m.min_lr_ratio + (1 - m.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

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
    changes = _check_resumable_config(out, cfg) if resume else []
    if not resume and not overwrite:
        _check_unused(out)
    torch.manual_seed(cfg.run.seed)  # the same initial meta-parameters on every process
    learned = build_optimizer(cfg.optimizer)
    if not any(p.requires_grad for p in learned.parameters()):
        raise ValueError(f"optimizer family {cfg.optimizer.family!r} has no meta-parameters to train")
    outer = torch.optim.AdamW if cfg.meta.outer_optimizer == "adamw" else torch.optim.Adam
    meta_opt = outer(learned.parameters(), lr=cfg.meta.lr, weight_decay=cfg.meta.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(meta_opt, lr_lambda(cfg))
    learned, meta_opt, sched = acc.prepare(learned, meta_opt, sched)
    core = acc.unwrap_model(learned)  # the estimators call its functional update directly (no DDP forward)
    n = cfg.meta.tasks_per_process
    slots = list(range(acc.process_index * n, (acc.process_index + 1) * n))
    pool = TaskPool(make_task_sampler(cfg), core, slots, cfg.meta.horizon, cfg.meta.horizon_max, seed=cfg.run.seed,
                    batch_size=None if cfg.tasks.family == "regression" or cfg.tasks.batch_sizes else
                    cfg.tasks.batch_size, device=acc.device)
    estimator = build_estimator(cfg.meta, core)
    start, best, counters = 0, {"score": -math.inf, "step": 0}, {"blowups": 0, "skipped": 0, "wall_s": 0.0}

    resumed = _load_newest_checkpoint(acc, ckpt_root, pool, estimator) if resume else None
    if resumed is not None:
        meta = resumed[1]
        start, best, counters = meta["step"], meta["best"], meta["counters"]
    counters.setdefault("bad_streak", 0)  # outer steps in a row without progress (older checkpoints lack it)
    acc.wait_for_everyone()  # every process has read what it needs: from here on the main process writes
    if main:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        with _writing(out / "config.json"):
            _write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        if resumed is not None:
            torn = _truncate_metrics(out / "metrics.jsonl", start)
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
                _truncate_metrics(out / "metrics.jsonl", 0)  # lines of a run that never reached a checkpoint
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
        _require_finite(core, ckdir)
        if main and ckdir.exists():  # half-written by an earlier attempt at this step (`latest` never names it)
            shutil.rmtree(ckdir)
        acc.wait_for_everyone()
        with _writing(ckdir, cleanup=ckdir):
            acc.save_state(str(ckdir))
            # Per process: its tasks, and the estimator's per-task state (PES pairs, window credit buffers).
            torch.save({"pool": pool.state_dict(), "estimator": estimator.state_dict()},
                       ckdir / f"pool_rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if main:
            with _writing(ckdir / "meta.pt", cleanup=ckdir):
                torch.save({"step": step, "best": best, "counters": counters, "num_processes": acc.num_processes,
                            "config": json.dumps(cfg.to_dict())}, ckdir / "meta.pt")
                _fsync_tree(ckdir)
            _write_pointer(ckpt_root / "latest", name)  # the pointer moves only once the checkpoint is complete
            for old in ckpt_root.glob("step_*"):
                if old.name not in (name, previous["name"]):
                    shutil.rmtree(old, ignore_errors=True)
            _save_optimizer(out / "last.pt", core, cfg, _summary(cfg, step, best, counters))
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
        with _writing(out / "metrics.jsonl"):
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
                        _save_optimizer(out / "best.pt", core, cfg, _summary(cfg, step + 1, best, counters))
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
        _save_optimizer(out / "best.pt", core, cfg, _summary(cfg, done, best, counters))
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
    if all(bool(torch.isfinite(p).all()) for p in params):
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


def clear_run(out: Path) -> None:
    """Delete the run in ``out`` (``--overwrite``): its checkpoints, metrics, optimizer files, config and TensorBoard
    logs. Files the run did not write stay."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _check_unused(out: Path) -> None:
    """Refuse a fresh run in a folder that holds something: its checkpoints would be rotated together with the
    other run's (which sort after them) and its metrics appended to theirs."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"run.out_dir {out} is a file, not a folder; choose another --out-dir")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries:
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise RunDirError(f"run.out_dir {out} is not empty (it holds {shown}): continue that run with --resume, "
                          f"replace it with --overwrite (deletes its checkpoints and metrics), or choose another "
                          f"--out-dir")


def _check_resumable_config(out: Path, cfg: Config) -> list[tuple]:
    """Compare ``cfg`` with the run's saved ``config.json``; refuse changes outside :data:`RESUMABLE_CHANGES`.

    Returns the allowed changes ``(section, key, old, new)``. Without a saved config there is no run to compare with.
    """
    path = out / "config.json"
    if not path.exists():
        return []
    try:
        saved = Config.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError) as exc:
        raise ResumeError(f"--resume: the run's config {path} cannot be read ({type(exc).__name__}: {exc}), so the "
                          f"resumed run cannot be checked against it. Restore the file, or start over with "
                          f"--overwrite.") from exc
    now = cfg.to_dict()
    changes = [(section, key, saved[section].get(key), now[section].get(key))
               for section in now for key in sorted(set(now[section]) | set(saved[section]))
               if saved[section].get(key) != now[section].get(key)]
    refused = [c for c in changes if (c[0], c[1]) not in RESUMABLE_CHANGES]
    if refused:
        what = "; ".join(f"{s}.{k}: {a!r} -> {b!r}" for s, k, a, b in refused)
        allowed = ", ".join(f"{s}.{k}" for s, k in sorted(RESUMABLE_CHANGES))
        raise ResumeError(f"--resume refused: the config differs from the run's {path} in settings that change what "
                          f"the run computes ({what}). Resume with the run's values, or start a new run (another "
                          f"--out-dir, or --overwrite to replace this one). Only these may change on resume: "
                          f"{allowed}.")
    return [c for c in changes if c not in refused]


def _checkpoint_folders(ckpt_root: Path, main: bool) -> list[Path]:
    """Complete checkpoint folders to try, newest first: the one ``latest`` names, then the older ones.

    Complete means ``meta.pt`` was written (the main process writes it last). Folders newer than ``latest`` are never
    used: ``latest`` moves only once a checkpoint is complete. Without a usable ``latest``, every complete folder.
    """
    steps = {}
    for d in ckpt_root.glob("step_*") if ckpt_root.is_dir() else []:
        number = d.name[len("step_"):]
        if d.is_dir() and number.isdigit() and (d / "meta.pt").is_file():
            steps[int(number)] = d
    top = None
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        number = name[len("step_"):] if name.startswith("step_") else ""
        if number.isdigit() and int(number) in steps:
            top = int(number)
        elif main:
            print(f"warning: {pointer} names {name!r}, which is not a complete checkpoint; trying the complete "
                  f"ones ({', '.join(steps[s].name for s in sorted(steps, reverse=True)) or 'none'})", file=sys.stderr)
    return [steps[s] for s in sorted(steps, reverse=True) if top is None or s <= top]


def _read(path: Path, loader):
    """``loader(path)``, with any failure (EOFError, SafetensorError, OSError 22, ...) turned into one naming the
    file."""
    if not path.is_file():
        raise _Unreadable(f"{path} is missing")
    try:
        return loader(path)
    except Exception as exc:
        raise _Unreadable(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc


def _read_checkpoint_files(ckdir: Path, rank: int, num_processes: int) -> tuple[dict, dict]:
    """Read back every file of ``ckdir`` this process will load: ``(meta, {"pool": ..., "estimator": ...})``.

    Done before anything is loaded into the run, because ``Accelerator.load_state`` fails without naming the file
    (EOFError, SafetensorError, "pytorch_model.bin not found" for a missing model.safetensors), and skips an unreadable
    random-states file silently (the run would go on with other random numbers). Weights that are not finite count
    as damaged. A checkpoint written by another number of processes is refused: each process's task pool (and its
    estimator's per-task state) is in its own ``pool_rank{r}.pt``, and loading fewer of them silently drops tasks.
    """
    meta = _read(ckdir / "meta.pt", lambda p: torch.load(p, weights_only=True))
    if not isinstance(meta, dict) or not {"step", "best", "counters"} <= set(meta):
        raise _Unreadable(f"{ckdir / 'meta.pt'} is not a checkpoint summary (keys step, best, counters)")
    written = meta.get("num_processes") or len(list(ckdir.glob("pool_rank*.pt")))
    if not written:
        raise _Unreadable(f"{ckdir} holds no task pool (pool_rank<r>.pt)")
    if written != num_processes:
        raise ResumeError(f"checkpoint {ckdir} was written by {written} process{'es' if written != 1 else ''}, but "
                          f"this run has {num_processes}: each process's task pool is in its own pool_rank<r>.pt, so "
                          f"resuming with another number would drop or lack tasks. Resume with --num-processes "
                          f"{written} (or accelerate launch --num_processes {written}), or start over with "
                          f"--overwrite.")
    weights = ckdir / "model.safetensors"
    if weights.exists() or not (ckdir / "pytorch_model.bin").exists():
        state = _read(weights, load_file)
    else:
        weights = ckdir / "pytorch_model.bin"
        state = _read(weights, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise _Unreadable(f"{weights} holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    for name in ("optimizer.bin", "scheduler.bin"):
        _read(ckdir / name, lambda p: accelerate_load(p, map_location="cpu"))
    rng_file = ckdir / f"random_states_{rank}.pkl"
    rng = _read(rng_file, accelerate_load)
    if not isinstance(rng, dict) or not {"random_state", "torch_manual_seed"} <= set(rng):
        raise _Unreadable(f"{rng_file} holds no random states")
    pool_file = ckdir / f"pool_rank{rank}.pt"
    pool_state = _read(pool_file, lambda p: torch.load(p, weights_only=True))
    if not isinstance(pool_state, dict) or not {"pool", "estimator"} <= set(pool_state):
        raise _Unreadable(f"{pool_file} holds no task pool and estimator state (written by an older version?)")
    return meta, pool_state


def _load_newest_checkpoint(acc: Accelerator, ckpt_root: Path, pool: TaskPool, estimator: Estimator
                            ) -> tuple[Path, dict] | None:
    """Load the newest checkpoint every process can read back in full: ``(folder, meta)``, or None without any.

    A damaged newest checkpoint is reported and the previous complete one is used (the processes agree on which);
    when none can be read the run stops with a :class:`ResumeError` naming the damaged files.
    """
    main = acc.is_main_process
    folders = _checkpoint_folders(ckpt_root, main)
    damaged = []
    for ckdir in folders:
        try:
            meta, pool_state = _read_checkpoint_files(ckdir, acc.process_index, acc.num_processes)
            problem = None
        except _Unreadable as exc:
            problem = str(exc)
            print(f"warning: checkpoint {ckdir} cannot be loaded: {problem}", file=sys.stderr)
        readable = problem is None
        if acc.num_processes > 1:  # every process must load the same checkpoint
            votes = acc.reduce(torch.tensor([float(readable)], device=acc.device), reduction="sum")
            readable = int(round(float(votes))) == acc.num_processes
        if not readable:
            damaged.append(problem or f"{ckdir}: a file of another process cannot be read")
            continue
        try:
            acc.load_state(str(ckdir))
        except Exception as exc:
            raise ResumeError(f"loading checkpoint {ckdir} failed ({type(exc).__name__}: {exc}) although its files "
                              f"read back, so it does not fit this run (another optimizer config?). Resume with the "
                              f"run's config, or start over with --overwrite.") from exc
        pool.load_state_dict(pool_state["pool"])
        estimator.load_state_dict(pool_state["estimator"])
        if damaged and main:
            print(f"warning: resuming from the previous complete checkpoint {ckdir} (outer step {meta['step']}) "
                  f"instead", file=sys.stderr)
        return ckdir, meta
    if damaged:
        raise ResumeError(f"--resume: no checkpoint in {ckpt_root} can be loaded: " + "; ".join(damaged) + ". They "
                          f"are damaged (a run killed, or a disk filled, while writing them?). Restore the files, "
                          f"delete the damaged folders to start from an older one, or start over with --overwrite.")
    return None


def _require_finite(core: torch.nn.Module, path: Path) -> None:
    """Non-finite weights are never written: a checkpoint of them could only be resumed into more NaNs."""
    bad = [k for k, v in core.state_dict().items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise DivergedError(f"refusing to write {path}: the learned optimizer's weights {', '.join(bad[:3])} are not "
                            f"finite. Lower meta.lr or meta.clip_norm and start again with --overwrite.")


def _save_optimizer(path: Path, core: torch.nn.Module, cfg: Config, summary: dict) -> None:
    """:func:`l2o.optim.save_checkpoint` of finite weights, a failed write named as such."""
    _require_finite(core, path)
    with _writing(path, cleanup=path.with_name(path.name + ".tmp")):
        save_checkpoint(path, core, cfg.optimizer, summary)


@contextmanager
def _writing(path: Path, cleanup: Path | None = None):
    """Turn a failed write into a :class:`WriteError` naming ``path`` and the free disk space.

    Savers fail with messages that name neither (``basic_ios::clear: iostream error`` from torch.save on a full
    disk). ``cleanup`` (a half-written file or folder) is deleted first, which also gives back the space it took.
    """
    try:
        yield
    except TrainingError:
        raise
    except Exception as exc:
        if not isinstance(exc, (OSError, RuntimeError, SafetensorError)):
            raise
        if cleanup is not None:
            if cleanup.is_dir():
                shutil.rmtree(cleanup, ignore_errors=True)
            else:
                cleanup.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: Exception) -> WriteError:
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    space = f"{free / 2**20:.0f} MiB free on the disk of {where}" if free is not None else "free space unknown"
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) or (
        free is not None and free < LOW_DISK_BYTES)
    if full:
        return WriteError(f"writing {path} failed: the disk is full ({space}; {type(exc).__name__}: {exc}). Free some "
                          f"space or move run.out_dir to a larger disk, then continue with --resume (the last "
                          f"complete checkpoint is intact).")
    return WriteError(f"writing {path} failed ({type(exc).__name__}: {exc}; {space}). Check that the folder is "
                      f"writable and the disk healthy, then continue with --resume (the last complete checkpoint is "
                      f"intact).")


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temp file + rename): a crash leaves the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (new files, renames) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of a checkpoint folder, and the folder, before ``latest`` may name it."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _write_pointer(path: Path, name: str) -> None:
    """Point ``latest`` at ``name`` durably: temp file written and flushed, renamed over the old pointer, and the
    rename flushed (fsync of the folder), so after a crash or power loss it names a complete checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with _writing(path, cleanup=tmp):
        with open(tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


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
        state = (_read(weights, load_file) if weights.exists() else
                 _read(ckdir / "pytorch_model.bin", lambda p: torch.load(p, weights_only=True)))
        meta = _read(ckdir / "meta.pt", lambda p: torch.load(p, weights_only=True))
    except _Unreadable as exc:
        raise ResumeError(f"cannot export {ckdir}: {exc}. Export an older checkpoint folder's weights, or resume the "
                          f"run (--resume falls back to the previous complete checkpoint).") from exc
    learned.load_state_dict(state)
    return save_checkpoint(out, learned, cfg.optimizer, _summary(cfg, meta["step"], meta["best"], meta["counters"]))


def _summary(cfg: Config, step: int, best: dict, counters: dict) -> dict:
    return {"outer_step": step, "best_val_score": best["score"] if math.isfinite(best["score"]) else None,
            "best_step": best["step"], "wall_s": counters["wall_s"], "blowups": counters["blowups"],
            "meta": json.dumps(cfg.to_dict()), "machine": f"{platform.machine()} {os.cpu_count()} cpus "
            f"torch {torch.__version__}", "commit": git_commit()}


def _truncate_metrics(path: Path, step: int) -> int:
    """Drop metric lines written after the checkpoint we resume from (the resumed run writes them again), and lines
    that do not parse: the last one is torn when a run is killed while writing it. Returns how many were dropped as
    unreadable."""
    if not path.exists():
        return 0
    keep, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        if record_step <= step:
            keep.append(line)
    _write_text(path, "".join(line + "\n" for line in keep))
    return torn


def _tensorboard(out: Path):
    try:  # imported only here: tensorboard is optional, and slow to import
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out / "tb"))
