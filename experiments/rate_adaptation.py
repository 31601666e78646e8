"""A learned rule whose per-tensor rates adapt online (hypergradient descent), and where those rates go.

    python -m experiments.rate_adaptation tune --source results/checkpoints/relative-category-capped.pt \\
        --betas 0 0.003 0.01 0.03 0.1 0.3
    python -m experiments.rate_adaptation write --source results/checkpoints/relative-category-capped.pt \\
        --beta 0.03 --out results/experiments/rate-adaptation/checkpoints/capped-adapt0.03.pt
    python -m experiments.rate_adaptation trace --checkpoint results/experiments/rate-adaptation/checkpoints/... \\
        --tasks cifar10-conv-d1 cifar10-conv cifar10-conv-d5 --steps 300

Why: the shipped rule takes one effective rate everywhere, but CIFAR-10 wants about 1.0 (relative Adam) at depth 1
and 0.05 at depth 5, a dependence Fashion-MNIST (the meta-training data) does not share
(``results/experiments/hand-designed-adam``), so the default loses to tuned Adam at depth 1 of the sweep.
``optimizer.rate_adapt = beta`` (``l2o/optim/rate_adaptation.py``) multiplies each tensor's learned step by a rate
that follows its own run: ``log_rate -= beta * cos(g_t, u_{t-1})``, within ``[min_ratio, 10]`` times the rule's step
(``--min-ratio 1``: upward only, the shipped default's setting).

``write`` copies a checkpoint with ``rate_adapt`` set (nothing else changes, so at ``beta -> 0`` it is the source
rule). ``trace`` runs a checkpoint on tasks and prints each tensor's rate (``exp(log_rate)``) at a few steps, with
the training loss: the check that the rates move the way the tuned rates of each shape say they should. ``tune``
picks ``beta`` as the evaluation tunes its baselines: one 1000-step run per value on the meta-training task's
validation split (seed 1000), never on CIFAR-10.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from l2o.optim.checkpoint import load_checkpoint, save_checkpoint
from l2o.optim.config import LEARNED_FAMILIES

OUT = Path("results/experiments/rate-adaptation")


def write_adaptive(source: Path, out: Path, beta: float, min_ratio: float = 0.1) -> None:
    """Write ``source``'s rule with ``rate_adapt = beta`` and ``rate_adapt_min = min_ratio``."""
    if not beta > 0:
        raise SystemExit(f"--beta must be > 0, got {beta}")
    if not 0 < min_ratio <= 1:
        raise SystemExit(f"--min-ratio must be in (0, 1], got {min_ratio}")
    optimizer, config, payload = load_checkpoint(source)
    if config.family not in LEARNED_FAMILIES:
        raise SystemExit(f"{source}: rate adaptation is an option of the learned families, got {config.family!r}")
    if config.rate_adapt:
        raise SystemExit(f"{source} already adapts its rates (rate_adapt = {config.rate_adapt:g})")
    optimizer.rate_adapt, optimizer.rate_adapt_min = beta, min_ratio
    config = replace(config, rate_adapt=beta, rate_adapt_min=min_ratio)
    note = (f"{source} with its per-tensor rates adapted online, rate_adapt = {beta:g}, rate_adapt_min = "
            f"{min_ratio:g} (experiments/rate_adaptation.py)")
    save_checkpoint(out, optimizer, config, {**payload.get("summary", {}), "warm_start_note": note})
    print(note, "->", out)


def trace_rates(checkpoint: Path, task_name: str, steps: int, seed: int = 0, every: int = 50) -> dict:
    """Run ``checkpoint`` on ``task_name`` for ``steps`` steps as the evaluation does (same model seed, batches and
    update); every ``every`` steps the training loss and each tensor's adapted rate (``exp(log_rate)``)."""
    from meta_train.inner_train import loss_and_grad, start_optimizee
    from tasks import get_task

    optimizer, _, _ = load_checkpoint(checkpoint)
    if not optimizer.rate_adapt:
        raise SystemExit(f"{checkpoint} does not adapt its rates (rate_adapt = 0): write one with `write`")
    task = get_task(task_name)
    model, ctx, params, state = start_optimizee(optimizer, task, seed, torch.device("cpu"))
    stream = task.batches("train", seed=seed)
    out = {"task": task_name, "seed": seed, "tensors": list(ctx.names), "steps": [], "loss": [], "rates": []}
    with torch.no_grad():
        for step in range(steps):
            x, y = stream.batch(step)
            loss, grad = loss_and_grad(model, ctx, task.loss, params, x, y)
            params, state = optimizer.update(ctx, params, grad, state, 1.0)
            if (step + 1) % every == 0 or step + 1 == steps:
                out["steps"].append(step + 1)
                out["loss"].append(float(loss))
                out["rates"].append([float(t.reshape(-1)[0].exp()) for t in ctx.split(state["log_rate"])])
    return out


TUNE_SEED = 1000  # the evaluation's tuning seed (meta_train.evaluate.tune): distinct from the evaluation seeds


def tune_beta(source: Path, betas: list[float], tasks: list[str], steps: int, out: Path, min_ratio: float = 0.1
              ) -> dict:
    """Validation accuracy of ``source`` with ``rate_adapt = beta`` (and ``rate_adapt_min = min_ratio``) for each
    beta (0: ``source`` itself) on each of ``tasks`` after ``steps`` steps: the evaluation's tuning protocol (one
    run, seed 1000, the validation split). Written to ``out`` after every run (a rerun skips what it has). Returns
    ``{task: {beta: val_acc}}``."""
    from meta_train.inner_train import train_optimizee
    from tasks import get_task

    done = json.loads(out.read_text()) if out.exists() else {}
    if done and (done.get("source") != str(source) or done.get("steps") != steps
                 or done.get("min_ratio", 0.1) != min_ratio):
        raise SystemExit(f"{out} holds another study (source {done.get('source')}, {done.get('steps')} steps, "
                         f"min_ratio {done.get('min_ratio', 0.1)}): pass another --json")
    done = {"source": str(source), "steps": steps, "seed": TUNE_SEED, "min_ratio": min_ratio,
            "val_acc": done.get("val_acc", {})}
    for name in tasks:
        task = get_task(name)
        for beta in betas:
            key = f"{beta:g}"
            if key in done["val_acc"].get(name, {}):
                continue
            optimizer, _, _ = load_checkpoint(source)
            optimizer.rate_adapt, optimizer.rate_adapt_min = beta, min_ratio
            t0 = time.time()
            r = train_optimizee(optimizer, task, steps, seed=TUNE_SEED, eval_split="val")
            acc = r["acc"] if math.isfinite(r["acc"]) else -1.0
            print(f"{name}, rate_adapt {key}: validation accuracy {100 * acc:.2f} % ({time.time() - t0:.0f} s)",
                  flush=True)
            done["val_acc"].setdefault(name, {})[key] = acc
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(done, indent=1))
    return done["val_acc"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.rate_adaptation", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    wr = sub.add_parser("write", help="copy a checkpoint with rate_adapt set")
    wr.add_argument("--source", type=Path, required=True)
    wr.add_argument("--out", type=Path, required=True)
    wr.add_argument("--beta", type=float, required=True, help="largest change of a tensor's log-rate per step")
    wr.add_argument("--min-ratio", type=float, default=0.1, help="lowest rate (1: adapt upward only)")
    tr = sub.add_parser("trace", help="print each tensor's adapted rate along a run")
    tr.add_argument("--checkpoint", type=Path, required=True)
    tr.add_argument("--tasks", nargs="+", required=True)
    tr.add_argument("--steps", type=int, default=300)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--json", type=Path, default=None, help="also write the traces here")
    tu = sub.add_parser("tune", help="validation accuracy against beta (the evaluation's tuning protocol)")
    tu.add_argument("--source", type=Path, required=True)
    tu.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.003, 0.01, 0.03])
    tu.add_argument("--tasks", nargs="+", default=["fmnist-conv"])
    tu.add_argument("--steps", type=int, default=1000)
    tu.add_argument("--min-ratio", type=float, default=0.1, help="lowest rate (1: adapt upward only)")
    tu.add_argument("--json", type=Path, default=OUT / "tune.json")
    args = ap.parse_args(argv)
    if args.cmd == "write":
        write_adaptive(args.source, args.out, args.beta, args.min_ratio)
        return
    if args.cmd == "tune":
        if any(b < 0 for b in args.betas):
            ap.error("--betas must be >= 0")
        tune_beta(args.source, args.betas, args.tasks, args.steps, args.json, args.min_ratio)
        return
    traces = []
    for name in args.tasks:
        t = trace_rates(args.checkpoint, name, args.steps, args.seed)
        traces.append(t)
        print(f"{name} (seed {args.seed}): loss " + " ".join(f"{s}:{v:.3f}" for s, v in zip(t["steps"], t["loss"])))
        for i, n in enumerate(t["tensors"]):
            print(f"  {n:32s} " + " ".join(f"{r[i]:6.3f}" for r in t["rates"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(traces, indent=1))


if __name__ == "__main__":
    main()
