"""The main job (``make run``): a short end-to-end run on real data.

1. Meta-train an NG-GNN optimizer on the Fashion-MNIST task family for a wall-time budget (default 10 minutes,
   ``meta_train/configs/quick.toml``); resumable, so a second ``make run`` continues it.
2. Train the CIFAR-10 CNN (never seen in meta-training) for 500 steps, 1 seed, with that optimizer, the shipped
   default (``results/checkpoints/default.pt``, when present) and Adam at the learning rate tuned for the full
   results (read from ``results/transfer.json`` when present, else 3e-3); print a table and write a PNG.
"""
from __future__ import annotations

import json
from pathlib import Path

from l2o.optim import DEFAULT_CHECKPOINT

from ..config import load_config
from ..evaluate import evaluate
from ..train import train

ROOT = Path(__file__).resolve().parents[2]


def tuned_adam_lr(task: str = "cifar10-conv", default: float = 3e-3) -> float:
    path = ROOT / "results" / "transfer.json"
    if path.exists():
        for rec in json.loads(path.read_text()):
            if rec.get("task") == task and rec.get("family") == "adam" and rec.get("hyper"):
                return float(rec["hyper"]["lr"])
    return default


def main_job(out: Path = ROOT / "runs" / "main", minutes: float = 10.0, steps: int = 500, seeds: int = 1,
             config: str = "quick.toml", resume: bool = True, device: str = "cpu") -> dict:
    """``device``: ``cpu`` or ``cuda`` for both steps (meta-training reads it as ``run.device``; evaluation also takes
    ``cuda:N``)."""
    cfg = load_config(ROOT / "meta_train" / "configs" / config,
                      [f"run.out_dir='{out / 'meta'}'", f"run.max_minutes={minutes}", f"run.device='{device}'"])
    print(f"== 1/2 meta-training {cfg.optimizer.family} on {device} for up to {minutes:g} min -> {out / 'meta'}")
    train(cfg, resume=resume)
    specs = [f"adam:lr={tuned_adam_lr()}", f"this-run={out / 'meta' / 'best.pt'}"]
    if DEFAULT_CHECKPOINT.exists():
        specs.append(f"shipped-default={DEFAULT_CHECKPOINT}")
    print(f"== 2/2 cifar10-conv, {steps} steps, {seeds} seed(s): {', '.join(specs)}")
    return evaluate("cifar10-conv", specs, steps, seeds, out / "eval", eval_every=100, device=device)
