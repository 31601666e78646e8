"""The meta-training outer loop: plain PyTorch under Accelerate, read top to bottom.

    python -m meta_train train --config meta_train/configs/quick.toml [--set meta.lr=1e-4 ...] [--resume]
    accelerate launch --cpu --num_processes 2 -m meta_train train --config ...

Each process owns a TaskPool (its own tasks, its own RNG stream) and advances it by one truncation per outer step;
the estimator leaves a meta-gradient on the learned optimizer; gradients are averaged across processes, clipped,
and the outer AdamW steps (warm-up then cosine). The main process shows a progress bar, appends metrics to
``metrics.jsonl`` (and TensorBoard when installed), validates on a fresh ``fmnist-conv`` (validation split) every
``validate_every`` steps keeping ``best.pt``, and every ``checkpoint_every`` steps, at the end, on SIGTERM/SIGINT and
when ``max_minutes`` runs out, all processes write a resumable checkpoint (Accelerate ``save_state`` plus each
process's task pool). ``--resume`` continues from the newest complete checkpoint with the same outer-step count,
schedules and RNG streams, so the metrics continue exactly those of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from l2o.optim import build_optimizer, save_checkpoint

from .config import Config
from .estimators import build_estimator
from .inner_train import train_optimizee
from .unroll import TaskPool


def make_task_sampler(cfg: Config):
    """``generator -> task`` for the configured task family (reads nothing but the generator)."""
    from tasks import TaskFamily, get_task
    from tasks.regression import RegressionFamily

    t = cfg.tasks
    if t.family == "fmnist":
        fam = TaskFamily(widths=tuple(t.widths), depths=tuple(t.depths), batch_size=t.batch_size,
                         batch_sizes=tuple(t.batch_sizes) if t.batch_sizes else None)
        return fam.sample
    if t.family == "regression":
        return RegressionFamily(tuple(t.regression_dims)).sample
    if t.family.startswith("task:"):
        task = get_task(t.family[len("task:"):])
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
    from tasks import get_task
    from tasks.regression import RegressionTask

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


def train(cfg: Config, resume: bool = False) -> dict:
    # ------------------------------------------------------------------ setup
    cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
    acc = Accelerator(cpu=cpu, step_scheduler_with_optimizer=False)
    main = acc.is_main_process
    out = Path(cfg.run.out_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    torch.manual_seed(cfg.run.seed)  # the same initial meta-parameters on every process
    learned = build_optimizer(cfg.optimizer)
    if not any(p.requires_grad for p in learned.parameters()):
        raise ValueError(f"optimizer family {cfg.optimizer.family!r} has no meta-parameters to train")
    outer = torch.optim.AdamW if cfg.meta.outer_optimizer == "adamw" else torch.optim.Adam
    meta_opt = outer(learned.parameters(), lr=cfg.meta.lr, weight_decay=cfg.meta.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(meta_opt, lr_lambda(cfg))
    learned, meta_opt, sched = acc.prepare(learned, meta_opt, sched)
    core = acc.unwrap_model(learned)  # the estimators call its functional update directly
    n = cfg.meta.tasks_per_process
    slots = list(range(acc.process_index * n, (acc.process_index + 1) * n))
    pool = TaskPool(make_task_sampler(cfg), core, slots, cfg.meta.horizon, cfg.meta.horizon_max, seed=cfg.run.seed,
                    batch_size=None if cfg.tasks.family == "regression" or cfg.tasks.batch_sizes else
                    cfg.tasks.batch_size, device=acc.device)
    estimator = build_estimator(cfg.meta, core)
    start, best, counters = 0, {"score": -math.inf, "step": 0}, {"blowups": 0, "skipped": 0, "wall_s": 0.0}

    ckpt_root = out / "checkpoints"
    if resume:
        latest = ckpt_root / "latest"
        if latest.is_file():
            ckdir = ckpt_root / latest.read_text().strip()
            acc.load_state(str(ckdir))
            pool.load_state_dict(torch.load(ckdir / f"pool_rank{acc.process_index}.pt", weights_only=True))
            meta = torch.load(ckdir / "meta.pt", weights_only=True)
            estimator.load_state_dict(meta["estimator"])
            start, best, counters = meta["step"], meta["best"], meta["counters"]
            if main:
                _truncate_metrics(out / "metrics.jsonl", start)
                print(f"resumed from {ckdir} at outer step {start}")
        elif main:
            print(f"--resume: no checkpoint in {ckpt_root}, starting from scratch")
    elif main and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the current outer step, checkpoint, exit
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    writer = _tensorboard(out) if main else None

    def checkpoint(step: int) -> None:
        name = f"step_{step:07d}"
        ckdir = ckpt_root / name
        acc.save_state(str(ckdir))
        torch.save(pool.state_dict(), ckdir / f"pool_rank{acc.process_index}.pt")
        acc.wait_for_everyone()
        if main:
            torch.save({"step": step, "best": best, "counters": counters, "estimator": estimator.state_dict()},
                       ckdir / "meta.pt")
            tmp = ckpt_root / "latest.tmp"
            tmp.write_text(name)
            os.replace(tmp, ckpt_root / "latest")  # the pointer moves only once the checkpoint is complete
            for old in sorted(ckpt_root.glob("step_*"))[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            save_checkpoint(out / "last.pt", core, cfg.optimizer, _summary(cfg, step, best, counters))
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    t_start = time.time() - counters["wall_s"]
    bar = tqdm(range(start, cfg.meta.outer_steps), initial=start, total=cfg.meta.outer_steps,
               disable=not main, desc=f"meta-train {cfg.optimizer.family}", unit="outer")
    step = start
    for step in bar:
        t0 = time.time()
        meta_opt.zero_grad(set_to_none=False)
        stats = estimator.step(pool)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in core.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if acc.num_processes > 1:
            flat = acc.reduce(flat, reduction="mean")  # meta-gradients averaged across processes
            local = torch.tensor([stats["meta_loss"], float(stats["blowups"])], device=acc.device)
            local = acc.reduce(local, reduction="mean")
            stats["meta_loss"], stats["blowups"] = float(local[0]), int(round(float(local[1]) * acc.num_processes))
        offset = 0
        for p in core.parameters():
            p.grad = flat[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        grad_norm = float(torch.linalg.vector_norm(flat))
        if math.isfinite(grad_norm):
            if cfg.meta.clip_norm:
                torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.meta.clip_norm)
            meta_opt.step()
        else:  # a non-finite meta-gradient never reaches the weights
            counters["skipped"] += 1
        sched.step()
        counters["blowups"] += stats["blowups"]
        dt = time.time() - t0
        counters["wall_s"] = time.time() - t_start
        record = {"step": step + 1, "meta_loss": stats["meta_loss"], "inner_loss": stats["inner_loss"],
                  "grad_norm": grad_norm, "lr": sched.get_last_lr()[0], "blowups": counters["blowups"],
                  "skipped": counters["skipped"], "resets": pool.resets,
                  "inner_steps_per_s": stats["inner_steps"] * acc.num_processes / dt, "wall_s": counters["wall_s"]}
        last_step = step + 1 == cfg.meta.outer_steps
        if cfg.run.validate_every and ((step + 1) % cfg.run.validate_every == 0 or last_step):
            if main:
                score = validate(core, cfg, acc.device)
                record["val_score"] = score
                if score > best["score"]:
                    best = {"score": score, "step": step + 1}
                    save_checkpoint(out / "best.pt", core, cfg.optimizer, _summary(cfg, step + 1, best, counters))
            acc.wait_for_everyone()
        if main:
            if (step + 1) % cfg.run.log_every == 0 or last_step:
                with (out / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k, v in record.items():
                        if k != "step" and isinstance(v, (int, float)):
                            writer.add_scalar(k, v, step + 1)
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.4g}", steps_s=f"{record['inner_steps_per_s']:.1f}",
                            blowups=counters["blowups"])
        out_of_time = cfg.run.max_minutes and counters["wall_s"] > 60 * cfg.run.max_minutes
        if acc.num_processes > 1:  # every process must agree to stop, or the next reduce hangs
            flag = acc.reduce(torch.tensor([float(bool(stop["signal"]) or bool(out_of_time))], device=acc.device), "sum")
            stop_now = float(flag) > 0
        else:
            stop_now = bool(stop["signal"]) or bool(out_of_time)
        if (step + 1) % cfg.run.checkpoint_every == 0 or last_step or stop_now:
            checkpoint(step + 1)
        if stop_now:
            if main:
                why = f"signal {stop['signal']}" if stop["signal"] else f"time budget of {cfg.run.max_minutes} min"
                print(f"\nstopped at outer step {step + 1} ({why}); checkpoint written, continue with --resume")
            break
    bar.close()
    for s, h in old_handlers.items():
        signal.signal(s, h)
    if writer is not None:
        writer.close()
    done = step + 1 if cfg.meta.outer_steps > start else start
    if main and (out / "best.pt").exists() is False:
        save_checkpoint(out / "best.pt", core, cfg.optimizer, _summary(cfg, done, best, counters))
    return {"step": done, "best": best, "counters": counters, "out_dir": str(out)}


def export_run(run: Path, out: Path) -> Path:
    """Rebuild the learned optimizer of a run's newest checkpoint (Accelerate state) and save it as a checkpoint."""
    from safetensors.torch import load_file

    latest = run / "checkpoints" / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"no checkpoint in {run / 'checkpoints'}; was the run started with this out_dir?")
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    ckdir = run / "checkpoints" / latest.read_text().strip()
    learned = build_optimizer(cfg.optimizer)
    weights = ckdir / "model.safetensors"
    state = load_file(weights) if weights.exists() else torch.load(ckdir / "pytorch_model.bin", weights_only=True)
    learned.load_state_dict(state)
    meta = torch.load(ckdir / "meta.pt", weights_only=True)
    return save_checkpoint(out, learned, cfg.optimizer, _summary(cfg, meta["step"], meta["best"], meta["counters"]))


def _summary(cfg: Config, step: int, best: dict, counters: dict) -> dict:
    return {"outer_step": step, "best_val_score": best["score"] if math.isfinite(best["score"]) else None,
            "best_step": best["step"], "wall_s": counters["wall_s"], "blowups": counters["blowups"],
            "meta": json.dumps(cfg.to_dict()), "machine": f"{platform.machine()} {os.cpu_count()} cpus "
            f"torch {torch.__version__}", "commit": git_commit()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (the resumed run writes them again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out / "tb"))
