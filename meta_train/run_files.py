"""What a meta-training run keeps in its folder, written so that nothing is lost and read back so that nothing
wrong is trusted: the run's errors, the folder rules (refuse a used folder, ``--overwrite``), checkpoint folders
(read back completely before use, the previous complete one when the newest is damaged), durable writes (temp file
+ rename + fsync, a full disk named), and the metrics log (torn last lines dropped on resume).

Used by :func:`meta_train.train.train`; the outer loop itself stays in ``train.py``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError
from safetensors.torch import load_file

from l2o.optim import save_checkpoint
from .config import Config
from .estimators import Estimator
from .unroll import TaskPool

# What a run writes into run.out_dir (and --overwrite deletes): other files in the folder are left alone.
RUN_FILES = ("checkpoints", "metrics.jsonl", "best.pt", "last.pt", "config.json", "tb", "metrics.jsonl.tmp",
             "best.pt.tmp", "last.pt.tmp", "config.json.tmp")
# The settings a resumed run may change: how long it runs, how often it checkpoints, validates and logs, when it
# gives up, where its folder is, which device it runs on and whether the pool vectorises its tasks (the same
# computation up to float rounding). Everything else (the optimizer and task sections, the
# seed, the estimator and its truncation, horizon, tasks per process, meta-loss, outer optimizer, validation task...)
# defines what the run computes, so the checkpoint means something else under another value: resuming is refused.
RESUMABLE_CHANGES = frozenset({("meta", "outer_steps"), ("meta", "max_bad_steps"), ("run", "out_dir"),
                               ("run", "checkpoint_every"), ("run", "validate_every"), ("run", "max_minutes"),
                               ("run", "log_every"), ("run", "device"), ("meta", "vectorize"),
                               ("run", "keep_validated")})
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


class Unreadable(Exception):
    """One checkpoint file cannot be read back (internal: the resume falls back to an older checkpoint)."""


def clear_run(out: Path) -> None:
    """Delete the run in ``out`` (``--overwrite``): its checkpoints, metrics, optimizer files, config and TensorBoard
    logs. Files the run did not write stay."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_unused(out: Path) -> None:
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


def check_resumable_config(out: Path, cfg: Config) -> list[tuple]:
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


def checkpoint_folders(ckpt_root: Path, main: bool) -> list[Path]:
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


def read_back(path: Path, loader):
    """``loader(path)``, with any failure (EOFError, SafetensorError, OSError 22, ...) turned into one naming the
    file."""
    if not path.is_file():
        raise Unreadable(f"{path} is missing")
    try:
        return loader(path)
    except Exception as exc:
        raise Unreadable(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc


def read_checkpoint_files(ckdir: Path, rank: int, num_processes: int) -> tuple[dict, dict]:
    """Read back every file of ``ckdir`` this process will load: ``(meta, {"pool": ..., "estimator": ...})``.

    Done before anything is loaded into the run, because ``Accelerator.load_state`` fails without naming the file
    (EOFError, SafetensorError, "pytorch_model.bin not found" for a missing model.safetensors), and skips an unreadable
    random-states file silently (the run would go on with other random numbers). Weights that are not finite count
    as damaged. A checkpoint written by another number of processes is refused: each process's task pool (and its
    estimator's per-task state) is in its own ``pool_rank{r}.pt``, and loading fewer of them silently drops tasks.
    """
    meta = read_back(ckdir / "meta.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True))
    if not isinstance(meta, dict) or not {"step", "best", "counters"} <= set(meta):
        raise Unreadable(f"{ckdir / 'meta.pt'} is not a checkpoint summary (keys step, best, counters)")
    written = meta.get("num_processes") or len(list(ckdir.glob("pool_rank*.pt")))
    if not written:
        raise Unreadable(f"{ckdir} holds no task pool (pool_rank<r>.pt)")
    if written != num_processes:
        raise ResumeError(f"checkpoint {ckdir} was written by {written} process{'es' if written != 1 else ''}, but "
                          f"this run has {num_processes}: each process's task pool is in its own pool_rank<r>.pt, so "
                          f"resuming with another number would drop or lack tasks. Resume with --num-processes "
                          f"{written} (or accelerate launch --num_processes {written}), or start over with "
                          f"--overwrite.")
    weights = ckdir / "model.safetensors"
    if weights.exists() or not (ckdir / "pytorch_model.bin").exists():
        state = read_back(weights, load_file)
    else:
        weights = ckdir / "pytorch_model.bin"
        state = read_back(weights, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise Unreadable(f"{weights} holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    for name in ("optimizer.bin", "scheduler.bin"):
        read_back(ckdir / name, lambda p: accelerate_load(p, map_location="cpu"))
    rng_file = ckdir / f"random_states_{rank}.pkl"
    rng = read_back(rng_file, accelerate_load)
    if not isinstance(rng, dict) or not {"random_state", "torch_manual_seed"} <= set(rng):
        raise Unreadable(f"{rng_file} holds no random states")
    pool_file = ckdir / f"pool_rank{rank}.pt"
    # on the CPU first: a run meta-trained on a GPU continues on a CPU-only machine (the pool and the estimator move
    # their tensors to the run's device when they load them)
    pool_state = _migrate_pool_state(read_back(pool_file, lambda p: torch.load(p, map_location="cpu",
                                                                             weights_only=True)))
    if not isinstance(pool_state, dict) or not {"pool", "estimator"} <= set(pool_state):
        raise Unreadable(f"{pool_file} holds no task pool and estimator state (written by an older version?)")
    return meta, pool_state


def _migrate_pool_state(sd):
    """A task pool written before the estimators owned their state (the pool's dict itself, with each task's
    ``pes`` and ``credit`` entries) -> ``{"pool": ..., "estimator": {}}``. Only pools whose tasks carry no
    estimator state (greedy and tbptt runs) convert; others are returned unchanged and reported as unreadable."""
    if not isinstance(sd, dict) or "tasks" not in sd or "pool" in sd:
        return sd
    if any(rec.get("pes") or rec.get("credit") for rec in sd["tasks"]):
        return sd
    tasks = [{k: v for k, v in rec.items() if k not in ("pes", "credit")} for rec in sd["tasks"]]
    return {"pool": {**sd, "tasks": tasks}, "estimator": {}}


def load_newest_checkpoint(acc: Accelerator, ckpt_root: Path, pool: TaskPool, estimator: Estimator
                            ) -> tuple[Path, dict] | None:
    """Load the newest checkpoint every process can read back in full: ``(folder, meta)``, or None without any.

    A damaged newest checkpoint is reported and the previous complete one is used (the processes agree on which);
    when none can be read the run stops with a :class:`ResumeError` naming the damaged files.
    """
    main = acc.is_main_process
    folders = checkpoint_folders(ckpt_root, main)
    damaged = []
    for ckdir in folders:
        try:
            meta, pool_state = read_checkpoint_files(ckdir, acc.process_index, acc.num_processes)
            problem = None
        except Unreadable as exc:
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


def require_finite(core: torch.nn.Module, path: Path) -> None:
    """Non-finite weights are never written: a checkpoint of them could only be resumed into more NaNs."""
    bad = [k for k, v in core.state_dict().items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise DivergedError(f"refusing to write {path}: the learned optimizer's weights {', '.join(bad[:3])} are not "
                            f"finite. Lower meta.lr or meta.clip_norm and start again with --overwrite.")


def save_optimizer(path: Path, core: torch.nn.Module, cfg: Config, summary: dict) -> None:
    """:func:`l2o.optim.save_checkpoint` of finite weights, a failed write named as such."""
    require_finite(core, path)
    with writing(path, cleanup=path.with_name(path.name + ".tmp")):
        save_checkpoint(path, core, cfg.optimizer, summary)


@contextmanager
def writing(path: Path, cleanup: Path | None = None):
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
        raise write_error(path, exc) from exc


def write_error(path: Path, exc: Exception) -> WriteError:
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


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temp file + rename): a crash leaves the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (new files, renames) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file of a checkpoint folder, and the folder, before ``latest`` may name it."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


def write_pointer(path: Path, name: str) -> None:
    """Point ``latest`` at ``name`` durably: temp file written and flushed, renamed over the old pointer, and the
    rename flushed (fsync of the folder), so after a crash or power loss it names a complete checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path, cleanup=tmp):
        with open(tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


def truncate_metrics(path: Path, step: int) -> int:
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
    write_text(path, "".join(line + "\n" for line in keep))
    return torn
