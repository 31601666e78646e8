"""The full Fashion-MNIST -> CIFAR-10 results, end to end, resumable (``make results``).

    python -m meta_train results [--stages train eval sweep report] [--steps 1000] [--seeds 5]

Stages (each skips what is already done, so a killed run continues where it stopped; ``ship`` re-copies the
checkpoints of finished runs and rewrites their model cards without training):

1. ``train``: meta-train every shipped optimizer (``results_plan.SHIPPED``: NG-GNN with three meta-training seeds,
   NG-T, DNG, NFN, FF, LSTM) on the Fashion-MNIST family with the same budget (``meta_train/configs/fmnist.toml``
   through each family's config), keep each run's checkpoint with the best Fashion-MNIST validation accuracy as
   ``results/checkpoints/<name>.pt`` with a model card ``<name>.md``, and copy the best graph optimizer (by that
   same validation accuracy) to ``results/checkpoints/default.pt``, the default of ``NeuralGraphOptimizer(model)``
   (:mod:`model_cards`).
2. ``eval``: Fashion-MNIST (in distribution) and CIFAR-10 (transfer), ``--steps`` steps x ``--seeds`` seeds, every
   shipped optimizer plus Adam, AdamW and SGD-momentum tuned on the validation split -> ``results/eval/<task>/``.
3. ``sweep``: the default optimizer against tuned Adam on the CIFAR-10 CNN at widths 16..128 and depths 1..5
   -> ``results/eval/sweep/<task>/`` and the figure ``results/sweep.png``. Points run cheapest first (``--sweep-tasks``
   picks some); a point records test accuracy at the end only, and its Adam tuning is a local search over the grid
   that starts from the main CIFAR-10 evaluation's tuned rate (the width-128 point costs about 25 min per Adam run
   and 40 per learned run on one core, so a full grid there would take most of a day). ``--sweep-every-family`` adds
   one shipped optimizer of each other family; the width-32 / depth-3 point has every family from stage 2.
4. ``report``: ``results/transfer.json`` / ``transfer.md`` (the records of stages 2 and 3 with the published
   numbers beside them) and ``results/sweep.{json,md,png}`` (:mod:`sweep_report`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import load_config
from ..eval_records import read_results
from ..evaluate import GRIDS, evaluate, file_digest, write_report
from ..train import train
from . import results_plan as plan
from .model_cards import choose_default, ship, shipped_names
from .sweep_report import write_sweep
from .transfer_report import write as write_transfer


# ---------------------------------------------------------------------------------------------- stage 1: train
def train_all(names: list[str], runs: Path, max_minutes: float = 0.0, device: str | None = None) -> None:
    """Meta-train (or resume) each shipped optimizer in ``names``; ship each finished run. ``device`` (cpu | cuda)
    sets ``run.device`` (None: each config's own; a device change does not block resuming a run)."""
    for name in names:
        config, seed = plan.SHIPPED[name]
        out = runs / name
        overrides = [f"run.out_dir='{out}'", f"run.seed={seed}"]
        if device:
            overrides.append(f"run.device='{device}'")
        if max_minutes:
            overrides.append(f"run.max_minutes={max_minutes}")
        cfg = load_config(plan.CONFIGS / config, overrides)
        if _finished(out, cfg.meta.outer_steps):
            print(f"== {name}: meta-training finished earlier ({out})")
        else:
            print(f"== {name}: meta-training {cfg.optimizer.family} (seed {seed}) -> {out}")
            train(cfg, resume=True)
            if not _finished(out, cfg.meta.outer_steps):
                print(f"== {name}: stopped before the end of its budget; rerun to continue")
                continue
        ship(name, out)
        choose_default()  # after every run, so the evaluation stages can start before all families are done


def ship_finished(names: list[str], runs: Path) -> None:
    """Stage ``ship``: re-ship every finished run in ``names`` (checkpoint and card), then choose the default."""
    for name in names:
        cfg = load_config(plan.CONFIGS / plan.SHIPPED[name][0], [])
        if _finished(runs / name, cfg.meta.outer_steps):
            ship(name, runs / name)
    choose_default()


def _finished(run: Path, outer_steps: int) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return False
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return bool(lines) and json.loads(lines[-1])["step"] >= outer_steps


# ----------------------------------------------------------------------------------------------- stage 2, 3
def shipped_specs() -> list[str]:
    """``name=path`` of every shipped checkpoint, the default's source first (it matters most if time runs out)."""
    names = [n for n in shipped_names() if (plan.CHECKPOINTS / f"{n}.pt").exists()]
    default = plan.CHECKPOINTS / "default.pt"
    if default.exists():
        digest = file_digest(default)
        names.sort(key=lambda n: file_digest(plan.CHECKPOINTS / f"{n}.pt") != digest)
    return [f"{n}={plan.CHECKPOINTS / (n + '.pt')}" for n in names]


def eval_all(steps: int, seeds: int, out: Path, tasks=plan.TASKS, device: str = "cpu") -> None:
    """Tuned Adam, then the shipped optimizers (default first), then tuned AdamW and SGD-momentum."""
    for task in tasks:
        print(f"== {task}: {steps} steps x {seeds} seeds")
        evaluate(task, ["adam"] + shipped_specs() + ["adamw", "sgdm"], steps, seeds, out / task, resume=True,
                 device=device)


def sweep_all(steps: int, seeds: int, out: Path, tasks=plan.SWEEP_RUN_ORDER, every_family: bool = False,
              device: str = "cpu") -> None:
    """Tuned Adam and the default at each sweep point; with ``every_family`` also one shipped optimizer of each other
    family (a point that has them from an earlier call keeps them either way)."""
    default = plan.CHECKPOINTS / "default.pt"
    if not default.exists():
        raise FileNotFoundError(f"{default} not found: run the train stage first")
    digest = file_digest(default)
    others = [spec for spec in shipped_specs() if spec.split("=")[0] in plan.FAMILY_REPRESENTATIVES
              and file_digest(spec.split("=", 1)[1]) != digest]
    for task in tasks:
        if task not in plan.SWEEP:
            raise ValueError(f"{task!r} is not a sweep point; choose from {plan.SWEEP}")
        if task in plan.SWEEP_ALIASES:
            print(f"== sweep {task}: the same network as {plan.SWEEP_ALIASES[task]}, read from its evaluation")
            continue
        path = out / "sweep" / task / "results.json"
        present = set(json.loads(path.read_text())["runs"]) if path.exists() else set()  # labels only: no records
        specs = ["adam", f"default={default}"] + [s for s in others if every_family or s.split("=")[0] in present]
        print(f"== sweep {task}: {steps} steps x {seeds} seeds")
        evaluate(task, specs, steps, seeds, out / "sweep" / task, eval_every=0, resume=True,
                 tune_from={"adam": main_tuned("adam", out)}, device=device)


def main_tuned(family: str, out: Path) -> dict | None:
    """The hyperparameters the main CIFAR-10 evaluation tuned for ``family``: where the sweep's tuning starts its
    local search. None (tune on the whole grid) before that evaluation has them."""
    path = out / "cifar10-conv" / "results.json"
    if path.exists():
        entry = read_results(path)["runs"].get(family)
        if entry is not None and entry.hyper in GRIDS[family]:
            return entry.hyper
    return None


# ---------------------------------------------------------------------------------------------- stage 4: report
def report_all(out: Path) -> None:
    """Tables and figures from whatever finished, also when an evaluation was stopped midway."""
    for t in plan.TASKS:
        path = out / t / "results.json"
        results = read_results(path) if path.exists() else None
        if results and results["runs"]:
            write_report(results, out / t)
    dirs = [out / t for t in plan.TASKS if (out / t / "summary.json").exists()]
    if dirs:
        write_transfer(dirs, plan.RESULTS)
    write_sweep(out)


def run(args: argparse.Namespace) -> None:
    """``python -m meta_train results``: the stages in ``args.stages``, in their fixed order."""
    out = Path(args.out)
    device = args.device
    if "train" in args.stages:
        train_all(args.only or list(plan.SHIPPED), Path(args.runs), max_minutes=args.max_minutes, device=device)
    if "ship" in args.stages:
        ship_finished(args.only or list(plan.SHIPPED), Path(args.runs))
    if "eval" in args.stages:
        eval_all(args.steps, args.seeds, out, args.tasks, device)
    if "sweep" in args.stages:
        sweep_all(args.steps, args.sweep_seeds, out, args.sweep_tasks, args.sweep_every_family, device)
    if "report" in args.stages:
        report_all(out)
