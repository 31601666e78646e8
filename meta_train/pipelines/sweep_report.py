"""The width/depth sweep of ``python -m meta_train results``: paired records against tuned Adam, the Markdown tables
and the figure (``results/sweep.{json,md,png}``)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..eval_records import read_results
from ..evaluate import file_digest
from . import results_plan as plan


def sweep_records(out: Path) -> list[dict]:
    """One record per sweep point and learned optimizer: its accuracy, tuned Adam's, and the advantage (mean and std
    over paired seeds). The default is named ``default`` wherever its checkpoint appears (the main evaluation lists it
    under its source's name); records of an earlier default take the name of the shipped checkpoint they came from."""
    default = plan.CHECKPOINTS / "default.pt"
    if not default.exists():
        return []
    digest = file_digest(default)
    # records made under an earlier default (label "default", another digest): named after the checkpoint they are
    names = {file_digest(path): path.stem for path in (plan.CHECKPOINTS / f"{n}.pt" for n in plan.SHIPPED)
             if path.exists()}
    recs = []
    for task in plan.SWEEP:
        path = out / "sweep" / task / "results.json"
        if task in plan.SWEEP_ALIASES:
            path = out / plan.SWEEP_ALIASES[task] / "results.json"
        if not path.exists():
            continue
        res = read_results(path)
        if "adam" not in res["runs"]:
            continue
        adam = res["runs"]["adam"]
        a = [r.acc * 100 for r in adam.runs]
        learned = {}
        for label, e in res["runs"].items():
            name = "default" if e.digest == digest else names.get(e.digest, label) if label == "default" else label
            if e.digest and (name == "default" or name in plan.FAMILY_REPRESENTATIVES):
                learned[name] = e
        for name, e in sorted(learned.items(), key=lambda kv: kv[0] != "default"):
            recs.append(paired_record(task, name, e, adam, res["steps"]))
    return recs


def paired_record(task: str, name: str, runs, adam, steps: int) -> dict:
    """The sweep record of optimizer ``name``'s ``runs`` (:class:`~meta_train.eval_records.OptimizerRuns`) against
    tuned Adam's ``adam`` on ``task``: accuracies and the advantage over the seeds both ran, paired by seed."""
    mine = {r.seed: r.acc * 100 for r in runs.runs}
    theirs = {r.seed: r.acc * 100 for r in adam.runs}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        raise ValueError(f"{task}: {name} and tuned Adam share no seed ({sorted(mine)} vs {sorted(theirs)})")
    acc, a = [mine[s] for s in seeds], [theirs[s] for s in seeds]
    diff = [x - y for x, y in zip(acc, a)]
    return {"task": task, "optimizer": name, "same_as": plan.SWEEP_ALIASES.get(task), "steps": steps,
            "seeds": len(seeds), "adam_lr": adam.hyper["lr"], "adam_acc_mean": statistics.mean(a),
            "adam_acc_std": _std(a), "acc_mean": statistics.mean(acc), "acc_std": _std(acc),
            "advantage_mean": statistics.mean(diff), "advantage_std": _std(diff)}


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def plot_sweep(recs: list[dict], path: Path) -> None:
    """Advantage over tuned Adam vs width and depth: the default bold with error bars, other families thin."""
    # Imported here, not at the top: selecting the Agg backend is process-wide, and matplotlib takes about a second
    # to import (only the report stage plots).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    names = list(dict.fromkeys(r["optimizer"] for r in recs))
    for ax, key, label in ((axes[0], "-w", "width (channels of the first conv)"), (axes[1], "-d", "depth (conv layers)")):
        for name in names:
            rows = [r for r in recs if key in r["task"] and r["optimizer"] == name]
            if not rows:
                continue
            xs = [int(r["task"].rsplit(key, 1)[1]) for r in rows]
            ys = [r["advantage_mean"] for r in rows]
            if name == "default":
                ax.errorbar(xs, ys, yerr=[r["advantage_std"] for r in rows], marker="o", capsize=3, lw=2.2,
                            color="k", label="default - tuned Adam", zorder=3)
            else:
                ax.plot(xs, ys, marker=".", lw=0.9, alpha=0.8, label=name)
        ax.axhline(0, color="k", lw=0.8, ls=":")
        steps = next((r["steps"] for r in recs), "")
        ax.set(xlabel=label, title=f"CIFAR-10 CNN, {steps} steps")
        ticks = sorted({int(r["task"].rsplit(key, 1)[1]) for r in recs if key in r["task"]})
        if key == "-w":
            ax.set_xscale("log", base=2)
            ax.set_ylabel("advantage over tuned Adam (points)")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_markdown(recs: list[dict]) -> str:
    """Two tables: the advantage of each optimizer over tuned Adam per sweep point (the summary), then every record."""
    names = list(dict.fromkeys(r["optimizer"] for r in recs))
    by = {(r["task"], r["optimizer"]): r for r in recs}
    tasks = [t for t in plan.SWEEP if any(r["task"] == t for r in recs)]
    lines = ["Advantage over tuned Adam (test accuracy points, mean +- std of the per-seed difference):", "",
             "| sweep point | seeds | tuned Adam % (lr) | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for t in tasks:
        first = next(r for r in recs if r["task"] == t)
        cells = [f"{by[t, n]['advantage_mean']:+.2f} +- {by[t, n]['advantage_std']:.2f}" if (t, n) in by else ""
                 for n in names]
        lines.append(f"| {t}{' (= ' + first['same_as'] + ')' if first['same_as'] else ''} | {first['seeds']} | "
                     f"{first['adam_acc_mean']:.2f} +- {first['adam_acc_std']:.2f} ({first['adam_lr']:g}) | "
                     + " | ".join(cells) + " |")
    lines += ["", "Every record:", "",
              "| task | optimizer | seeds | tuned Adam % (lr) | optimizer % | advantage (points, paired) |",
              "|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['task']} | {r['optimizer']} | {r['seeds']} | {r['adam_acc_mean']:.2f} +- "
                     f"{r['adam_acc_std']:.2f} ({r['adam_lr']:g}) | {r['acc_mean']:.2f} +- {r['acc_std']:.2f} | "
                     f"{r['advantage_mean']:+.2f} +- {r['advantage_std']:.2f} |")
    return "\n".join(lines) + "\n"


def write_sweep(out: Path) -> None:
    """``results/sweep.{json,png,md}`` from the sweep evaluations under ``out`` that have finished (none: nothing)."""
    recs = sweep_records(out)
    if recs:
        (plan.RESULTS / "sweep.json").write_text(json.dumps(recs, indent=2) + "\n")
        plot_sweep(recs, plan.RESULTS / "sweep.png")
        md = sweep_markdown(recs)
        (plan.RESULTS / "sweep.md").write_text(md)
        print(md)
