"""Evaluation: any set of optimizers on a task for N steps over S seeds, with tuned hand-designed baselines.

    python -m meta_train evaluate --task cifar10-conv --steps 1000 --seeds 5 \\
        --optimizers adam adamw sgdm results/checkpoints/ng-gnn.pt --out results/eval/cifar10

Every optimizer sees the same seeds (a seed fixes the optimizee initialisation and the data order). The training
loss is recorded every step, test accuracy on the full test set every ``--eval-every`` steps and at the end.
Hand-designed baselines are tuned, not defaulted: a learning-rate grid (and weight decay for AdamW) is run on the
validation split at the same horizon, and the best setting by validation accuracy is used (and printed).
Writes ``results.json`` (every curve; its records are :mod:`meta_train.eval_records`), ``table.md`` (mean +- std
over seeds) and two PNG figures.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from l2o.optim import OptimizerConfig, build_optimizer, load_checkpoint
from l2o.optim.learned import Optimizer

from .eval_records import OptimizerRuns, SeedRun, results_from_json, write_results
from .inner_train import train_optimizee
from .progress import Progress

# Learning-rate grids for tuning (log-spaced, covering the usual optima for these CNNs at 100..1000 steps).
GRIDS = {
    "adam": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)],
    "adamw": [{"lr": lr, "weight_decay": wd} for lr in (1e-3, 3e-3, 1e-2) for wd in (1e-4, 1e-2, 1e-1)],
    "sgdm": [{"lr": lr} for lr in (0.01, 0.03, 0.1, 0.3)],
    # relative rates (x each tensor's initial RMS): by hand 0.05 .. 1.0 were best across depths and data sets
    "relative-adam": [{"lr": lr} for lr in (0.03, 0.06, 0.1, 0.2, 0.3, 0.6, 1.0)],
}


@dataclass
class Candidate:
    """One optimizer to evaluate: a label, how to build it, and where it came from."""

    label: str
    family: str
    checkpoint: str | None = None
    hyper: dict | None = None  # hand-designed: fixed hyperparameters (skip tuning)

    def build(self, hyper: dict | None = None) -> Optimizer:
        if self.checkpoint:
            return load_checkpoint(self.checkpoint)[0]
        return build_optimizer(OptimizerConfig(family=self.family, **(hyper or self.hyper or {})))


def _on(device, optimizer):
    """``optimizer`` moved to ``device``: train_optimizee moves the model and the data there, not the optimizer (a
    learned one's network is built on the CPU)."""
    return optimizer.to(device) if isinstance(optimizer, torch.nn.Module) else optimizer


def parse_spec(spec: str) -> Candidate:
    """``adam`` (tuned), ``adam:lr=1e-3`` (fixed), ``path/to/ckpt.pt`` or ``label=path/to/ckpt.pt``."""
    if spec.endswith(".pt"):
        label, _, path = spec.rpartition("=")
        payload_family = load_checkpoint(path)[1].family
        return Candidate(label or Path(path).stem, payload_family, checkpoint=path)
    family, _, rest = spec.partition(":")
    if family not in GRIDS:
        raise ValueError(f"unknown optimizer spec {spec!r}: use adam/adamw/sgdm/relative-adam[:lr=..,weight_decay=..] or a .pt file")
    hyper = None
    if rest:
        hyper = {k: float(v) for k, v in (kv.split("=") for kv in rest.split(","))}
    return Candidate(family if hyper is None else spec, family, hyper=hyper)


def tune(cand: Candidate, task, steps: int, device, seed: int = 1000, cached: list[dict] | None = None,
         start: dict | None = None, on_trial=None) -> tuple[dict, list[dict]]:
    """Best grid point on the validation split (one seed, distinct from the evaluation seeds).

    ``cached``: trials of an earlier call (``{**hyper, "val_acc"}``); only the grid points missing from it are run,
    so a grown grid costs just its new points and trials outside the grid are dropped.

    ``start``: a grid point to start a local search from instead of running the whole grid. The search runs the
    point and its grid neighbours and moves to the best of them until the point it stands on is the best; on a
    validation accuracy that is unimodal along the (ordered) grid this finds the grid's best point in 3-4 runs
    instead of all of them. Used where a run is expensive (the width/depth sweep).

    ``on_trial(trials)`` is called after every new run (to save them: a kill then loses only the run in progress)."""
    grid = GRIDS[cand.family]
    if start is not None and (start not in grid or len(start) != 1):
        raise ValueError(f"tune start {start} must be a point of the one-parameter {cand.family} grid {grid}")
    strip = lambda t: {k: v for k, v in t.items() if k != "val_acc"}
    trials = [t for t in (cached or []) if strip(t) in grid]

    def val_acc(hyper: dict) -> float:
        for t in trials:
            if strip(t) == hyper:
                return t["val_acc"]
        desc = f"tune {cand.family} " + ",".join(f"{k}={v:g}" for k, v in hyper.items())
        with Progress(steps, desc, unit="step", leave=False) as bar:
            r = train_optimizee(_on(device, cand.build(hyper)), task, steps, seed=seed, device=device, eval_split="val",
                                progress=lambda step, loss: bar.update(1, loss=loss))
        acc = r["acc"] if math.isfinite(r["acc"]) else -1.0
        print(f"{desc}: validation accuracy {100 * acc:.2f} %", flush=True)
        trials.append({**hyper, "val_acc": acc})
        if on_trial is not None:
            on_trial(trials)
        return acc

    if start is None:
        have = [strip(t) for t in trials]
        for hyper in [h for h in grid if h not in have]:
            val_acc(hyper)
    else:
        i = grid.index(start)
        score = {i: val_acc(grid[i])}
        while True:
            for j in (i - 1, i + 1):
                if 0 <= j < len(grid) and j not in score:
                    score[j] = val_acc(grid[j])
            best = max(sorted(score), key=score.get)
            if best == i:
                break
            i = best
    best = max(trials, key=lambda t: t["val_acc"])
    return strip(best), trials


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (first 16 hex digits): tells a retrained checkpoint from the one evaluated before."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _previous(out: Path, task_name: str, steps: int, seeds: int) -> dict | None:
    """The results of an earlier call with the same task, steps and seeds (for ``resume``), else None."""
    path = out / "results.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    same = (old.get("task"), old.get("steps"), old.get("seeds")) == (task_name, steps, seeds)
    return results_from_json(old) if same else None


def evaluate(task_name: str, specs: list[str], steps: int, seeds: int | list[int], out: Path, eval_every: int = 100,
             tune_steps: int | None = None, device: str = "cpu", tuned: dict | None = None,
             resume: bool = False, tune_from: dict | None = None) -> dict:
    """Run every optimizer over ``seeds`` seeds (``0..seeds-1``, or the given list, e.g. to split seeds over two
    processes writing to two folders); returns (and writes) the results dict, its ``runs`` values
    :class:`~meta_train.eval_records.OptimizerRuns` (``results.json`` holds them as plain dicts).

    With ``resume``, optimizers already complete in ``out/results.json`` (same task, steps and seeds, same
    checkpoint file, same hyperparameters) are kept instead of rerun, one cut short by a kill continues from its
    first missing seed, and earlier tuning results are reused. ``tune_from`` maps a baseline family to the grid
    point its tuning starts a local search from (see ``tune``); without it the whole grid runs.
    """
    from tasks import get_task

    task = get_task(task_name)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(x) for x in seeds]
    results = {"task": task_name, "steps": steps, "seeds": seeds, "runs": {}, "tuning": {}}
    old = _previous(out, task_name, steps, seeds) if resume else None
    for spec in specs:
        cand = parse_spec(spec)
        done: OptimizerRuns | None = (old or {}).get("runs", {}).get(cand.label)
        digest = file_digest(cand.checkpoint) if cand.checkpoint else None
        hyper = None
        if cand.checkpoint is None and cand.hyper is None:  # a tuned hand-designed baseline
            if tuned and cand.family in tuned:
                hyper = tuned[cand.family]
            else:
                cached = (old or {}).get("tuning", {}).get(cand.family, [])

                def save(trials: list[dict], family: str = cand.family) -> None:
                    results["tuning"][family] = list(trials)
                    _save_partial(out, results, old)

                hyper, trials = tune(cand, task, tune_steps or steps, device, cached=cached,
                                     start=(tune_from or {}).get(cand.family), on_trial=save)
                save(trials)
            print(f"{cand.label}: tuned on validation -> {hyper}")
        runs: list[SeedRun] = []  # finished seeds of an earlier call are kept, by seed number
        if (done and _same_file(done.checkpoint, cand.checkpoint) and done.digest == digest
                and done.hyper == (hyper or cand.hyper)):
            runs = [r for r in done.runs if r.seed in seed_list]
        todo = [s for s in seed_list if s not in {r.seed for r in runs}]
        if not todo:
            print(f"{cand.label}: kept from {out / 'results.json'}")
            results["runs"][cand.label] = replace(done, runs=sorted(runs, key=lambda r: seed_list.index(r.seed)))
            continue
        if runs:
            print(f"{cand.label}: seeds {sorted(r.seed for r in runs)} kept from {out / 'results.json'}")
        for s in todo:
            desc = f"{cand.label} on {task_name}, seed {s} ({seed_list.index(s) + 1}/{len(seed_list)})"
            with Progress(steps, desc, unit="step", leave=False) as bar:
                r = train_optimizee(_on(device, cand.build(hyper)), task, steps, seed=s, device=device,
                                    eval_split="test", eval_every=eval_every,
                                    progress=lambda step, loss, bar=bar: bar.update(1, loss=loss))
            runs.append(SeedRun(seed=s, losses=r["losses"], evals=r["evals"], acc=r["acc"], step_ms=r["step_ms"],
                                diverged=r["diverged"]))
            runs.sort(key=lambda run: seed_list.index(run.seed))
            results["runs"][cand.label] = OptimizerRuns(family=cand.family, checkpoint=cand.checkpoint, digest=digest,
                                                        hyper=hyper or cand.hyper, runs=list(runs))
            _save_partial(out, results, old)  # a kill loses at most the seed in progress
    write_results(out / "results.json", results)  # exactly the optimizers asked for
    write_report(results, out)
    return results


def _same_file(a: str | None, b: str | None) -> bool:
    """Two checkpoint paths (or two Nones, for hand-designed optimizers) naming the same file."""
    if a is None or b is None:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _save_partial(out: Path, results: dict, old: dict | None) -> None:
    """Write what is done so far, keeping the earlier call's finished runs and tuning trials that this call has not
    reached yet: a kill midway must not lose them."""
    old = old or {}
    merged = {**results, "runs": {**old.get("runs", {}), **results["runs"]},
              "tuning": {**old.get("tuning", {}), **results["tuning"]}}
    write_results(out / "results.json", merged)


def summarise(results: dict) -> list[dict]:
    """One record per optimizer (the rows of ``summary.json``): test accuracy mean/std over seeds, step time.
    ``results``: as :func:`evaluate` returns it or :func:`~meta_train.eval_records.read_results` reads it."""
    rows = []
    for label, entry in results["runs"].items():
        accs = [r.acc for r in entry.runs]
        ok = [a for a in accs if math.isfinite(a)]
        rows.append({
            "task": results["task"], "optimizer": label, "family": entry.family,
            "checkpoint": entry.checkpoint, "hyper": entry.hyper, "steps": results["steps"],
            "seeds": len(accs), "test_accs": [100 * a for a in accs],
            "test_acc_mean": 100 * statistics.mean(ok) if ok else float("nan"),
            "test_acc_std": 100 * statistics.stdev(ok) if len(ok) > 1 else 0.0,
            "diverged": sum(r.diverged for r in entry.runs),
            "step_ms": statistics.mean(r.step_ms for r in entry.runs),
        })
    return rows


def write_report(results: dict, out: Path) -> None:
    """``table.md``, ``summary.json`` and the figures in ``out`` from ``results`` (typed records, as for
    :func:`summarise`)."""
    rows = summarise(results)
    n = results["seeds"] if isinstance(results["seeds"], int) else len(results["seeds"])
    lines = [f"# {results['task']}: {results['steps']} steps, {n} seeds (test accuracy, full test set)",
             "", "| optimizer | test acc % (mean +- std) | diverged | update ms/step | hyperparameters |",
             "|---|---|---|---|---|"]
    for r in rows:
        hyper = format_hyper(r["hyper"]) if r["hyper"] else (Path(r["checkpoint"]).name if r["checkpoint"] else "")
        std = f"{r['test_acc_std']:.2f}" if r["seeds"] > 1 else "n/a"
        lines.append(f"| {r['optimizer']} | {r['test_acc_mean']:.2f} +- {std} | {r['diverged']} | "
                     f"{r['step_ms']:.1f} | {hyper} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_curves(results, out)
    print("\n".join(lines))


def format_hyper(hyper: dict) -> str:
    """``{"lr": 0.003, "weight_decay": 0.0001}`` -> ``lr=0.003, weight_decay=0.0001``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in hyper.items())


def _is_highlighted(label: str) -> bool:
    """The default learned optimizer and tuned Adam: drawn thick, the rest thin."""
    return "default" in label or label == "adam" or label.startswith("adam:")


def plot_curves(results: dict, out: Path) -> None:
    """``accuracy.png`` (test accuracy vs step, mean with a std band) and ``loss.png`` (log training loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_a, ax_a = plt.subplots(figsize=(8, 4.5))
    fig_l, ax_l = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab10" if len(results["runs"]) <= 10 else "tab20")
    for i, (label, entry) in enumerate(results["runs"].items()):
        runs = [r for r in entry.runs if not r.diverged]
        if not runs:
            continue
        style = dict(color=colours(i % colours.N), lw=2.4 if _is_highlighted(label) else 1.2,
                     zorder=3 if _is_highlighted(label) else 2, label=f"{label} ({len(runs)} seeds)")
        steps = [e[0] for e in runs[0].evals]
        accs = torch.tensor([[100 * e[1] for e in r.evals] for r in runs])
        mean, std = accs.mean(0), accs.std(0) if len(runs) > 1 else torch.zeros(len(steps))
        ax_a.plot(steps, mean, **style)
        ax_a.fill_between(steps, mean - std, mean + std, alpha=0.15, color=style["color"])
        n = min(len(r.losses) for r in runs)
        loss = torch.tensor([r.losses[:n] for r in runs]).log().mean(0)
        k = max(1, n // 50)  # moving average over ~2% of the run for readability
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, 1).flatten()
        ax_l.plot(range(k - 1, n), smooth, **style)
    ax_a.set(xlabel="step", ylabel="test accuracy (%)", title=f"{results['task']}: test accuracy (mean +- std)")
    ax_l.set(xlabel="step", ylabel="log training loss (moving average)", title=f"{results['task']}: training loss")
    for ax, fig, name in ((ax_a, fig_a, "accuracy.png"), (ax_l, fig_l, "loss.png")):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(12)
        ax.xaxis.label.set_fontsize(11)
        ax.yaxis.label.set_fontsize(11)
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # off the data
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
