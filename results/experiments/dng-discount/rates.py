"""The effective relative rate of learned optimizers across data sets, depths and batch sizes.

For each checkpoint and each task, runs ``meta_train.step_stats`` in relative mode (reference: relative Adam at rate
1, so each ratio is the optimizer's effective relative rate) for 300 steps and prints the mean ratio per category
over those steps. An optimizer that adapts its step to the problem shows different rates across rows; the shipped
default shows about 0.13 everywhere.

    python results/experiments/dng-discount/rates.py results/checkpoints/default.pt runs/exp/X/best.pt
    python results/experiments/dng-discount/rates.py --out=PATH.json CHECKPOINT ...   # write elsewhere
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from l2o.optim import load_checkpoint  # noqa: E402
from meta_train.step_stats import step_stats  # noqa: E402
from tasks import channels_for, conv_task  # noqa: E402

torch.set_num_threads(1)
TASKS = [("fashion-mnist", (16, 32, 32), d, bs) for d, bs in ((1, 128), (3, 128), (5, 128), (3, 16))] + \
        [("cifar10", (32, 64, 64), d, 128) for d in (1, 3, 5)]
CATS = ("in_weight", "hidden_weight", "out_weight")


def main(paths: list[str], steps: int = 300) -> list[dict]:
    rows = []
    for path in paths:
        opt = load_checkpoint(path)[0]
        for data, base, depth, bs in TASKS:
            task = conv_task(data, channels_for(base, depth, 1.0), batch_size=bs)
            recs = step_stats(opt, task, steps, 1.0, seed=0, every=10, relative=True)
            rates = {c: sum(r[c]["ratio"] for r in recs if c in r) / len(recs) for c in CATS if c in recs[0]}
            row = {"checkpoint": path, "task": task.name, "batch": bs, **rates}
            rows.append(row)
            cells = "  ".join(f"{c} {v:.3f}" for c, v in rates.items())
            print(f"{Path(path).parent.name}/{Path(path).name:12s} {task.name:28s} bs {bs:3d}  {cells}", flush=True)
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    path = Path(args.pop(0).split("=", 1)[1]) if args and args[0].startswith("--out=") else \
        Path(__file__).with_name("rates.json")
    path.write_text(json.dumps(main(args), indent=1) + "\n")
