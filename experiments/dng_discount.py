"""The effective relative rate of learned optimizers across data sets, depths and batch sizes.

Asks whether a meta-trained optimizer adapts its step to the problem. For each checkpoint and each of seven tasks
(Fashion-MNIST CNNs of depth 1 / 3 / 5 at batch 128 and depth 3 at batch 16; CIFAR-10 CNNs of depth 1 / 3 / 5),
runs ``meta_train.pipelines.step_stats`` in relative mode (reference: relative Adam at rate 1, so each ratio is
the optimizer's effective relative rate) for 300 steps and prints the mean ratio per layer category (first / hidden /
last weights) over those steps. An optimizer that adapts its step shows different rates across rows; the shipped
default shows about 0.13 everywhere. Used by the DNG discount and PES experiments (``runs/exp/dng-discount98``,
``runs/exp/dng-pes``, trained as their READMEs say) and, through ``experiments.family_rates``, for every shipped
optimizer.

Writes one row per (checkpoint, task) to ``results/experiments/dng-discount/rates.json`` (or ``--out``):

    python -m experiments.dng_discount results/checkpoints/default.pt \\
        runs/exp/dng-discount98/best.pt runs/exp/dng-discount98/last.pt
    python -m experiments.dng_discount --out PATH.json CHECKPOINT ...          # write elsewhere
    python -m experiments.dng_discount --device cuda CHECKPOINT ...            # the runs on a GPU

``--device`` (default cpu; cpu | cuda | cuda:N) is where the optimizer, the models and the batches go; a row measured
off the CPU records its ``device``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments import RESULTS
from l2o.optim import load_checkpoint
from meta_train.pipelines.step_stats import step_stats
from tasks import channels_for, conv_task
from tasks.devices import device_or_exit

OUT = RESULTS / "experiments" / "dng-discount" / "rates.json"
STEPS = 300
# (data, base channels, depth, batch)
TASKS = [("fashion-mnist", (16, 32, 32), d, bs) for d, bs in ((1, 128), (3, 128), (5, 128), (3, 16))] + \
        [("cifar10", (32, 64, 64), d, 128) for d in (1, 3, 5)]
CATS = ("in_weight", "hidden_weight", "out_weight")


def effective_rates(paths: list[str], steps: int = STEPS, device: str | torch.device = "cpu") -> list[dict]:
    """One row ``{"checkpoint", "task", "batch", <category>: mean effective relative rate}`` per (path, task), each
    run on ``device`` (off the CPU the row also holds its ``"device"``)."""
    device = torch.device(device)
    where = {} if device.type == "cpu" else {"device": str(device)}
    rows = []
    for path in paths:
        opt = load_checkpoint(path)[0]
        for data, base, depth, bs in TASKS:
            task = conv_task(data, channels_for(base, depth, 1.0), batch_size=bs)
            recs = step_stats(opt, task, steps, 1.0, seed=0, every=10, relative=True, device=device)
            rates = {c: sum(r[c]["ratio"] for r in recs if c in r) / len(recs) for c in CATS if c in recs[0]}
            rows.append({"checkpoint": path, "task": task.name, "batch": bs, **rates, **where})
            cells = "  ".join(f"{c} {v:.3f}" for c, v in rates.items())
            print(f"{Path(path).parent.name}/{Path(path).name:12s} {task.name:28s} bs {bs:3d}  {cells}", flush=True)
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m experiments.dng_discount", out: Path = OUT,
         checkpoints: list[str] | None = None, description: str | None = None) -> None:
    """Command line: measure the checkpoints given (or ``checkpoints``) and write all rows to ``--out``."""
    ap = argparse.ArgumentParser(prog=prog, description=description or __doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="*" if checkpoints else "+", default=checkpoints, metavar="CHECKPOINT",
                    help="optimizer checkpoints (.pt)" + (f"; default: {' '.join(checkpoints)}" if checkpoints else ""))
    ap.add_argument("--out", type=Path, default=out, help=f"results file (default {out.relative_to(RESULTS.parent)})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu): where the runs go")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    torch.set_num_threads(1)
    rows = effective_rates(args.checkpoints, device=device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
