"""Collect evaluation summaries into ``results/transfer.json`` and the tables of ``results/README.md``.

    python -m meta_train report --evals results/eval/fmnist results/eval/cifar10 [--out results]

Reads each folder's ``summary.json`` (written by ``python -m meta_train evaluate``) and writes one record per
(task, optimizer) with ``task, optimizer, family, checkpoint, steps, seeds, test_acc_mean, test_acc_std, step_ms``,
the advantage over tuned Adam on the same seeds (``vs_adam_mean``, ``vs_adam_std``: mean and std of the per-seed
differences, in points) and the published numbers (Kofinas et al., ICLR 2024, section 5) for context.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

# Kofinas et al., section 5: test accuracy %, Fashion-MNIST (in distribution) / CIFAR-10 (transfer), 1000 steps.
PUBLISHED = {"adam": (80.97, 54.76), "ff": (85.08, 57.55), "lstm": (85.69, 59.10), "nfn": (83.78, 57.95),
             "ng-gnn": (85.91, 64.37), "ng-t": (86.52, 60.79)}
TASK_COLUMN = {"fmnist-conv": 0, "cifar10-conv": 1}


def collect(eval_dirs: list[Path]) -> list[dict]:
    records = []
    for d in eval_dirs:
        path = Path(d) / "summary.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m meta_train evaluate --out {d}` first")
        for row in json.loads(path.read_text()):
            col = TASK_COLUMN.get(row["task"])
            pub = PUBLISHED.get(row["family"])
            row["published_acc"] = pub[col] if pub is not None and col is not None else None
            records.append(row)
    for r in records:  # paired with tuned Adam on the same task and seeds
        adam = next((a for a in records if a["task"] == r["task"] and a["optimizer"] == "adam"), None)
        ours, ref = r.get("test_accs"), (adam or {}).get("test_accs")
        r["vs_adam_mean"] = r["vs_adam_std"] = None
        if ours and ref and len(ours) == len(ref) and r is not adam:
            diff = [x - y for x, y in zip(ours, ref)]
            r["vs_adam_mean"] = statistics.mean(diff)
            r["vs_adam_std"] = statistics.stdev(diff) if len(diff) > 1 else 0.0
    return records


def markdown(records: list[dict]) -> str:
    lines = ["| task | optimizer | test acc % (mean +- std) | vs tuned Adam, paired (points) | seeds | steps | "
             "update ms/step | tuned hyperparameters | published % |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        pub = f"{r['published_acc']:.2f}" if r.get("published_acc") is not None else ""
        vs = f"{r['vs_adam_mean']:+.2f} +- {r['vs_adam_std']:.2f}" if r.get("vs_adam_mean") is not None else ""
        hyper = ", ".join(f"{k} {v:g}" for k, v in (r.get("hyper") or {}).items()) if not r.get("checkpoint") else ""
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['test_acc_mean']:.2f} +- {r['test_acc_std']:.2f} | {vs} | "
                     f"{r['seeds']} | {r['steps']} | {r['step_ms']:.1f} | {hyper} | {pub} |")
    return "\n".join(lines) + "\n"


def write(eval_dirs: list[Path], out: Path) -> list[dict]:
    records = collect(eval_dirs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "transfer.md").write_text(markdown(records))
    print(markdown(records))
    return records
