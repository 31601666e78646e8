"""The full Fashion-MNIST -> CIFAR-10 results, end to end, resumable (``make results``).

    python -m meta_train.transfer [--stages train eval sweep report] [--steps 1000] [--seeds 5]

Stages (each skips what is already done, so a killed run continues where it stopped; ``ship`` re-copies the
checkpoints of finished runs and rewrites their model cards without training):

1. ``train``: meta-train every shipped optimizer (:data:`SHIPPED`: NG-GNN with three meta-training seeds, NG-T,
   DNG, NFN, FF, LSTM) on the Fashion-MNIST family with the same budget (``meta_train/configs/fmnist.toml`` through
   each family's config), keep each run's checkpoint with the best Fashion-MNIST validation accuracy as
   ``results/checkpoints/<name>.pt`` with a model card ``<name>.md``, and copy the best graph optimizer (by that
   same validation accuracy) to ``results/checkpoints/default.pt``, the default of ``NeuralGraphOptimizer(model)``.
2. ``eval``: Fashion-MNIST (in distribution) and CIFAR-10 (transfer), ``--steps`` steps x ``--seeds`` seeds, every
   shipped optimizer plus Adam, AdamW and SGD-momentum tuned on the validation split -> ``results/eval/<task>/``.
3. ``sweep``: the default optimizer against tuned Adam on the CIFAR-10 CNN at widths 16..128 and depths 1..5
   -> ``results/eval/sweep/<task>/`` and the figure ``results/sweep.png``. Points run cheapest first (``--sweep-tasks``
   picks some); a point records test accuracy at the end only, and its Adam tuning is a local search over the grid
   that starts from the main CIFAR-10 evaluation's tuned rate (the width-128 point costs about 25 min per Adam run
   and 40 per learned run on one core, so a full grid there would take most of a day). ``--sweep-every-family`` adds
   one shipped optimizer of each other family; the width-32 / depth-3 point has every family from stage 2.
4. ``report``: ``results/transfer.json`` / ``transfer.md`` (the records of stages 2 and 3 with the published
   numbers beside them) and ``results/sweep.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "meta_train" / "configs"
RESULTS = ROOT / "results"
CHECKPOINTS = RESULTS / "checkpoints"
PRETRAINED = Path(__file__).resolve().parents[1] / "l2o" / "pretrained"

# name -> (config file, meta-training seed). Every config extends fmnist.toml: one shared budget.
# Trained in this order (one of each family first, then the extra NG-GNN seeds).
SHIPPED = {
    "ng-gnn": ("ng-gnn.toml", 0),
    "dng": ("dng.toml", 0),
    "ff": ("ff.toml", 0),
    "lstm": ("lstm.toml", 0),
    "nfn": ("nfn.toml", 0),
    "ng-t": ("ng-t.toml", 0),
    "ng-gnn-seed1": ("ng-gnn.toml", 1),
    "ng-gnn-seed2": ("ng-gnn.toml", 2),
}
GRAPH_FAMILIES = ("ng-gnn", "ng-t", "dng", "nfn")
# One shipped optimizer per family (meta-training seed 0): what the sweep compares across families.
FAMILY_REPRESENTATIVES = tuple(name for name, (_, seed) in SHIPPED.items() if seed == 0)
TASKS = ("fmnist-conv", "cifar10-conv")
SWEEP = tuple(f"cifar10-conv-w{w}" for w in (16, 32, 64, 128)) + tuple(f"cifar10-conv-d{d}" for d in range(1, 6))
# The order the sweep stage runs them in: cheapest first (measured per-step cost on one CPU core), so an interrupted
# sweep has the most points.
SWEEP_RUN_ORDER = ("cifar10-conv-w16", "cifar10-conv-d1", "cifar10-conv-d2", "cifar10-conv-d4", "cifar10-conv-d5",
                   "cifar10-conv-w64", "cifar10-conv-w128")
# Sweep points that are the CIFAR-10 task itself (same layout): read from the main evaluation instead of rerun.
SWEEP_ALIASES = {"cifar10-conv-w32": "cifar10-conv", "cifar10-conv-d3": "cifar10-conv"}


# ---------------------------------------------------------------------------------------------- stage 1: train
def train_all(names: list[str], runs: Path, data_root: str | None = None, max_minutes: float = 0.0) -> None:
    from .config import load_config
    from .train import train

    for name in names:
        config, seed = SHIPPED[name]
        out = runs / name
        overrides = [f"run.out_dir='{out}'", f"run.seed={seed}"]
        if max_minutes:
            overrides.append(f"run.max_minutes={max_minutes}")
        cfg = load_config(CONFIGS / config, overrides)
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
    from .config import load_config

    for name in names:
        cfg = load_config(CONFIGS / SHIPPED[name][0], [])
        if _finished(runs / name, cfg.meta.outer_steps):
            ship(name, runs / name)
    choose_default()


def _finished(run: Path, outer_steps: int) -> bool:
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return False
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    return bool(lines) and json.loads(lines[-1])["step"] >= outer_steps


def ship(name: str, run: Path) -> Path:
    """Copy a finished run's ``best.pt`` to ``results/checkpoints/<name>.pt`` and write its model card."""
    from l2o.optim import read_checkpoint

    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    dst = CHECKPOINTS / f"{name}.pt"
    shutil.copyfile(run / "best.pt", dst)
    payload = read_checkpoint(dst)
    summary, cfg = payload["summary"], payload["config"]
    meta = json.loads(summary.get("meta", "{}"))
    m, t = meta.get("meta", {}), meta.get("tasks", {})
    n_params = sum(v.numel() for v in payload["state_dict"].values())
    card = [
        f"# `{name}.pt`: {cfg['family']} learned optimizer", "",
        (f"- **Family / config:** `{cfg['family']}`, hidden {cfg['hidden']}, depth {cfg['depth']}, head hidden "
        f"{cfg['head_hidden']}, Adam residual {cfg['adam_residual']} (initial "
        f"{'relative rate' if cfg.get('relative') else 'lr'} {cfg['adam_lr']}, per-element "
        f"multiplier range e^+-{cfg.get('adam_scale', 0.0)}, additive term {cfg.get('additive', True)}), features "
        f"`{cfg['preprocess']}`, encoder options {cfg['encoder_options'] or '{}'}; {n_params:,} meta-parameters."),
        (f"- **Meta-training data:** Fashion-MNIST CNN family `{t.get('family')}` (width multipliers "
        f"{t.get('widths')}, depths {t.get('depths')}), training split only; validation on `fmnist-conv` "
        f"({meta.get('run', {}).get('validation_steps')} inner steps, validation split)."),
        (f"- **Budget:** {m.get('outer_steps')} outer steps x {m.get('tasks_per_process')} tasks x truncation "
        f"{m.get('truncation')} ({m.get('estimator')}"
        f"{', window ' + str(m.get('window')) if m.get('estimator') == 'window' else ''}, horizons "
        f"{m.get('horizon')}..{m.get('horizon_max')}), "
        f"meta-lr {m.get('lr')}, meta-training seed {meta.get('run', {}).get('seed')}."),
        (f"- **Selected:** outer step {summary.get('best_step')} of {m.get('outer_steps')} by Fashion-MNIST "
        f"validation accuracy {_pct(summary.get('best_val_score'))}."),
        f"- **Wall time:** {_run_minutes(run):.1f} min for the whole run on {summary.get('machine')} (shared with "
        f"other jobs, so an upper bound).",
        f"- **Commit:** `{summary.get('commit')}`.",
        (f"- **Reproduce:** `python -m meta_train.transfer --stages train --only {name}` "
        f"(config `meta_train/configs/{SHIPPED[name][0]}`, seed {SHIPPED[name][1]})."), ""]
    dst.with_suffix(".md").write_text("\n".join(card))
    print(f"   shipped {dst} (+ model card)")
    return dst


def _run_minutes(run: Path) -> float:
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] if (
        run / "metrics.jsonl").exists() else []
    return json.loads(lines[-1])["wall_s"] / 60 if lines else float("nan")


def _pct(x) -> str:
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "n/a"


def reference_validation(config: str = "ng-gnn.toml") -> dict:
    """The meta-training validation score of the *untrained* optimizer: the line every meta-trained checkpoint has to
    clear. With the shared budget's zero-initialised head every family's untrained optimizer is exactly the same
    (relative) Adam, so it is measured with the cheapest family (FF). Cached in ``results/checkpoints/reference.json``."""
    from dataclasses import replace

    from l2o.optim import build_optimizer

    from .config import load_config
    from .train import validate

    path = CHECKPOINTS / "reference.json"
    cfg = load_config(CONFIGS / config, [])
    o = cfg.optimizer
    key = {"validation_task": cfg.run.validation_task, "validation_steps": cfg.run.validation_steps,
           "validation_seeds": cfg.run.validation_seeds, "adam_lr": o.adam_lr, "relative": o.relative}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    untrained = build_optimizer(replace(o, family="ff"))
    label = f"{'relative ' if o.relative else ''}Adam at {'rate' if o.relative else 'lr'} {o.adam_lr:g}"
    ref = {"key": key, "optimizer": label, "val_score": validate(untrained, cfg, "cpu")}
    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref, indent=2) + "\n")
    return ref


def write_index() -> None:
    """``results/checkpoints/README.md``: every shipped checkpoint with its selection score beside the reference."""
    from l2o.optim import read_checkpoint

    ref = reference_validation()
    lines = ["# Shipped learned optimizers", "",
             "Meta-trained on the Fashion-MNIST CNN family with one shared budget (`meta_train/configs/fmnist.toml`) by "
             "`python -m meta_train.transfer --stages train`; each file has a model card (`<name>.md`). "
             "`default.pt` (the default of `NeuralGraphOptimizer(model)`) is the graph optimizer with the best "
             "Fashion-MNIST validation accuracy.", "",
             f"Validation: `{ref['key']['validation_task']}` validation split, {ref['key']['validation_steps']} inner "
             f"steps, {ref['key']['validation_seeds']} seeds. The untrained optimizer of every family is exactly "
             f"{ref.get('optimizer', 'Adam')}, which scores **{_pct(ref['val_score'])}**.", "",
             "| checkpoint | family | FMNIST validation | selected outer step | meta-parameters |", "|---|---|---|---|---|"]
    for name in SHIPPED:
        path = CHECKPOINTS / f"{name}.pt"
        if path.exists():
            payload = read_checkpoint(path)
            summary = payload["summary"]
            n = sum(v.numel() for v in payload["state_dict"].values())
            lines.append(f"| `{name}.pt` | {payload['family']} | {_pct(summary.get('best_val_score'))} | "
                         f"{summary.get('best_step')} | {n:,} |")
    (CHECKPOINTS / "README.md").write_text("\n".join(lines) + "\n")


def choose_default() -> Path | None:
    """The graph optimizer with the best Fashion-MNIST validation accuracy becomes ``default.pt``."""
    from l2o.optim import read_checkpoint

    scored = []
    for name in SHIPPED:
        path = CHECKPOINTS / f"{name}.pt"
        if path.exists():
            payload = read_checkpoint(path)
            if payload["family"] in GRAPH_FAMILIES and payload["summary"].get("best_val_score") is not None:
                scored.append((payload["summary"]["best_val_score"], name))
    if not scored:
        return None
    score, name = max(scored)
    dst = CHECKPOINTS / "default.pt"
    shutil.copyfile(CHECKPOINTS / f"{name}.pt", dst)
    shutil.copyfile(dst, PRETRAINED / "default.pt")  # the package data the wheel ships, with its card
    shutil.copyfile(CHECKPOINTS / f"{name}.md", PRETRAINED / "default.md")
    dst.with_suffix(".md").write_text(
        f"# `default.pt` = `{name}.pt`\n\nThe default of `NeuralGraphOptimizer(model)`: of the shipped graph "
        f"optimizers ({', '.join(n for _, n in sorted(scored, reverse=True))}), the one with the best Fashion-MNIST "
        f"validation accuracy ({_pct(score)}). See `{name}.md` for its card.\n")
    print(f"== default.pt = {name}.pt (Fashion-MNIST validation {_pct(score)})")
    write_index()
    return dst


# ----------------------------------------------------------------------------------------------- stage 2, 3
def shipped_specs() -> list[str]:
    """``name=path`` of every shipped checkpoint, the default's source first (it matters most if time runs out)."""
    from .evaluate import file_digest

    names = [n for n in SHIPPED if (CHECKPOINTS / f"{n}.pt").exists()]
    default = CHECKPOINTS / "default.pt"
    if default.exists():
        digest = file_digest(default)
        names.sort(key=lambda n: file_digest(CHECKPOINTS / f"{n}.pt") != digest)
    return [f"{n}={CHECKPOINTS / (n + '.pt')}" for n in names]


def eval_all(steps: int, seeds: int, out: Path, tasks=TASKS) -> None:
    """Tuned Adam, then the shipped optimizers (default first), then tuned AdamW and SGD-momentum."""
    from .evaluate import evaluate

    for task in tasks:
        print(f"== {task}: {steps} steps x {seeds} seeds")
        evaluate(task, ["adam"] + shipped_specs() + ["adamw", "sgdm"], steps, seeds, out / task, resume=True)


def sweep_all(steps: int, seeds: int, out: Path, tasks=SWEEP_RUN_ORDER, every_family: bool = False) -> None:
    """Tuned Adam and the default at each sweep point; with ``every_family`` also one shipped optimizer of each other
    family (a point that has them from an earlier call keeps them either way)."""
    from .evaluate import evaluate, file_digest

    default = CHECKPOINTS / "default.pt"
    if not default.exists():
        raise FileNotFoundError(f"{default} not found: run the train stage first")
    digest = file_digest(default)
    others = [spec for spec in shipped_specs() if spec.split("=")[0] in FAMILY_REPRESENTATIVES
              and file_digest(spec.split("=", 1)[1]) != digest]
    for task in tasks:
        if task not in SWEEP:
            raise ValueError(f"{task!r} is not a sweep point; choose from {SWEEP}")
        if task in SWEEP_ALIASES:
            print(f"== sweep {task}: the same network as {SWEEP_ALIASES[task]}, read from its evaluation")
            continue
        path = out / "sweep" / task / "results.json"
        present = set(json.loads(path.read_text())["runs"]) if path.exists() else set()
        specs = ["adam", f"default={default}"] + [s for s in others if every_family or s.split("=")[0] in present]
        print(f"== sweep {task}: {steps} steps x {seeds} seeds")
        evaluate(task, specs, steps, seeds, out / "sweep" / task, eval_every=0, resume=True,
                 tune_from={"adam": main_tuned("adam", out)})


def main_tuned(family: str, out: Path) -> dict | None:
    """The hyperparameters the main CIFAR-10 evaluation tuned for ``family``: where the sweep's tuning starts its
    local search. None (tune on the whole grid) before that evaluation has them."""
    from .evaluate import GRIDS

    path = out / "cifar10-conv" / "results.json"
    if path.exists():
        hyper = json.loads(path.read_text())["runs"].get(family, {}).get("hyper")
        if hyper in GRIDS[family]:
            return hyper
    return None


# ---------------------------------------------------------------------------------------------- stage 4: report
def sweep_records(out: Path) -> list[dict]:
    """One record per sweep point and learned optimizer: its accuracy, tuned Adam's, and the advantage (mean and std
    over paired seeds). The default is named ``default`` wherever its checkpoint appears (the main evaluation lists it
    under its source's name)."""
    from .evaluate import file_digest

    default = CHECKPOINTS / "default.pt"
    if not default.exists():
        return []
    digest = file_digest(default)
    recs = []
    for task in SWEEP:
        path = out / "sweep" / task / "results.json"
        if task in SWEEP_ALIASES:
            path = out / SWEEP_ALIASES[task] / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        if "adam" not in res["runs"]:
            continue
        adam = res["runs"]["adam"]
        a = [r["acc"] * 100 for r in adam["runs"]]
        learned = {("default" if e.get("digest") == digest else label): e for label, e in res["runs"].items()
                   if e.get("digest") and (e.get("digest") == digest or label in FAMILY_REPRESENTATIVES)}
        for name, e in sorted(learned.items(), key=lambda kv: kv[0] != "default"):
            acc = [r["acc"] * 100 for r in e["runs"]]
            diff = [x - y for x, y in zip(acc, a)]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
            recs.append({"task": task, "optimizer": name, "same_as": SWEEP_ALIASES.get(task), "steps": res["steps"],
                         "seeds": len(diff), "adam_lr": adam["hyper"]["lr"],
                         "adam_acc_mean": statistics.mean(a), "adam_acc_std": sd(a),
                         "acc_mean": statistics.mean(acc), "acc_std": sd(acc),
                         "advantage_mean": statistics.mean(diff), "advantage_std": sd(diff)})
    return recs


def plot_sweep(recs: list[dict], path: Path) -> None:
    """Advantage over tuned Adam vs width and depth: the default bold with error bars, other families thin."""
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


def report_all(out: Path) -> None:
    from .evaluate import write_report
    from .report import write

    for t in TASKS:  # tables and figures from whatever finished, also when an evaluation was stopped midway
        path = out / t / "results.json"
        if path.exists() and json.loads(path.read_text())["runs"]:
            write_report(json.loads(path.read_text()), out / t)
    dirs = [out / t for t in TASKS if (out / t / "summary.json").exists()]
    if dirs:
        write(dirs, RESULTS)
    recs = sweep_records(out)
    if recs:
        (RESULTS / "sweep.json").write_text(json.dumps(recs, indent=2) + "\n")
        plot_sweep(recs, RESULTS / "sweep.png")
        md = sweep_markdown(recs)
        (RESULTS / "sweep.md").write_text(md)
        print(md)


def sweep_markdown(recs: list[dict]) -> str:
    """Two tables: the advantage of each optimizer over tuned Adam per sweep point (the summary), then every record."""
    names = list(dict.fromkeys(r["optimizer"] for r in recs))
    by = {(r["task"], r["optimizer"]): r for r in recs}
    tasks = [t for t in SWEEP if any(r["task"] == t for r in recs)]
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


def main(argv: list[str] | None = None) -> None:
    from l2o.runtime import tune_cpu_allocator

    p = argparse.ArgumentParser(prog="python -m meta_train.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=["train", "eval", "sweep", "report"],
                   choices=["train", "ship", "eval", "sweep", "report"],
                   help="ship: re-copy the best checkpoints of finished runs and rewrite their model cards")
    p.add_argument("--only", nargs="+", choices=list(SHIPPED), help="train only these shipped optimizers")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sweep-seeds", type=int, default=3)
    p.add_argument("--sweep-tasks", nargs="+", default=list(SWEEP_RUN_ORDER), choices=list(SWEEP),
                   help="sweep points to run (default: all, cheapest first)")
    p.add_argument("--sweep-every-family", action="store_true",
                   help="sweep one shipped optimizer of every family, not only the default (6x the cost)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--runs", default=str(ROOT / "runs" / "transfer"), help="meta-training run folders")
    p.add_argument("--out", default=str(RESULTS / "eval"), help="evaluation folders")
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-time cap per meta-training call")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    if args.data_root:
        import os

        os.environ["L2O_DATA"] = args.data_root
    tune_cpu_allocator()
    out = Path(args.out)
    if "train" in args.stages:
        train_all(args.only or list(SHIPPED), Path(args.runs), max_minutes=args.max_minutes)
    if "ship" in args.stages:
        ship_finished(args.only or list(SHIPPED), Path(args.runs))
    if "eval" in args.stages:
        eval_all(args.steps, args.seeds, out, args.tasks)
    if "sweep" in args.stages:
        sweep_all(args.steps, args.sweep_seeds, out, args.sweep_tasks, args.sweep_every_family)
    if "report" in args.stages:
        report_all(out)


if __name__ == "__main__":
    main()
