"""How hard the evaluation subsets of the INR studies are, measured with a plain pixel classifier.

The default INR zoo holds INRs of the first 500 / 2,000 images of the "val" / official test splits; the published
INR-classification figures are on the whole official test set. MNIST's test set is not uniform (its first 5,000
images come from the NIST training writers, the rest from its test writers), so a figure on its first 2,000 images is
not comparable to one on all 10,000. This trains a 784-256-10 MLP on the ground-truth pixels of the 50,000 "train"
images (Adam 1e-3, batch 64, ``--epochs``; the same for every seed) and reports its accuracy on each subset, so the
offset between them is measured, not assumed:

    python -m experiments.test_subset_difficulty [--datasets mnist fmnist] [--seeds 0 1 2] [--epochs 8]

Writes ``results/weight_space/test_subset_difficulty.{md,json}`` (mean and sample std over the seeds).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn as nn

from experiments import RESULTS

OUT = RESULTS / "weight_space"
# (label, split, rows): the subsets the INR studies evaluate on, and the whole splits
SUBSETS = (("val, first 500", "val", slice(0, 500)), ("val, all", "val", slice(None)),
           ("test, first 2,000", "test", slice(0, 2000)), ("test, all", "test", slice(None)),
           ("test, last 5,000", "test", slice(5000, None)))


def _pixels(data) -> tuple[torch.Tensor, torch.Tensor]:
    x = data.images.float().flatten(1)
    return (x / 255.0 if data.images.dtype == torch.uint8 else x), data.labels.long()


def run(dataset: str, seed: int, epochs: int, root: str | None = None) -> dict[str, float]:
    """Test accuracy (%) of one seed's pixel MLP on every subset of ``SUBSETS``."""
    from tasks.data import load_dataset

    x_tr, y_tr = _pixels(load_dataset(dataset, "train", root=root))
    split = {name: _pixels(load_dataset(dataset, name, root=root)) for name in ("val", "test")}
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_tr.shape[1], 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_tr), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        correct = {name: (model(x).argmax(1) == y).float() for name, (x, y) in split.items()}
    return {label: 100 * float(correct[name][rows].mean()) for label, name, rows in SUBSETS}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.test_subset_difficulty",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fmnist"], choices=["mnist", "fmnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for ds in args.datasets:
        per_seed = [run(ds, s, args.epochs, args.data_root) for s in args.seeds]
        for label, _, _ in SUBSETS:
            vals = [r[label] for r in per_seed]
            rows.append({"dataset": ds, "subset": label, "accuracy_mean": statistics.mean(vals),
                         "accuracy_std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "per_seed": vals})
            print(f"{ds:7s} {label:18s} {rows[-1]['accuracy_mean']:.2f} +- {rows[-1]['accuracy_std']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": "784-256-10 MLP on pixels", "optimizer": "Adam 1e-3, batch 64", "epochs": args.epochs,
            "seeds": args.seeds, "threads": 1}
    (args.out / "test_subset_difficulty.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = ["# How hard the INR studies' evaluation subsets are (pixel MLP)", "",
             "Produced by `python -m experiments.test_subset_difficulty`: a 784-256-10 MLP trained on the pixels of "
             f"the 50,000 \"train\" images (Adam 1e-3, batch 64, {args.epochs} epochs), accuracy % on each subset, "
             f"mean +- sample std over seeds {args.seeds}. The default INR zoo evaluates on the first 500 val and "
             "first 2,000 test images; the published INR figures and `inr_scaling --full-zoo` on the whole test "
             "set.", "", "| data set | subset | accuracy % |", "|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['subset']} | {r['accuracy_mean']:.2f} +- {r['accuracy_std']:.2f} |" for r in rows]
    (args.out / "test_subset_difficulty.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
