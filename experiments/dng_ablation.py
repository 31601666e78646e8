"""DNG's design claims put to the test where DNG stays behind NG-GNN: MNIST INR classification (GitHub issue 19).

On the weight-space tasks (``results/weight_space.md``) DNG trails NG-GNN on INR classification. The DNG paper
credits its recurrent memory (GRU), the bidirectional traversal and probe features. This study removes one piece at
a time, everything else as shipped, on MNIST INR classification with the task's default budget
(``default_spec("classify", "mnist", ...)``: 2,500 train / 500 val / 2,000 test INRs, 5 epochs, lr 3e-3, 128 probe
points, hidden 32, depth 2), and reports which piece, if any, closes the gap:

============================  ==============================================================
variant                       what changes (``RunSpec``)
============================  ==============================================================
ng-gnn                        the reference (NG-GNN with probes, as in the main table)
dng                           DNG as shipped: GRU cell, bidirectional, sum aggregation, probes
recurrence=rnn                ``encoder_options={"recurrence": "rnn"}`` (tanh RNN cell)
recurrence=none               ``encoder_options={"recurrence": "none"}`` (memory + message sum)
bidirectional=False           ``encoder_options={"bidirectional": False}`` (forward traversal only)
probes=0                      ``probes=0`` (no probe features)
aggregation=mean              ``encoder_options={"aggregation": "mean"}`` (mean of the messages)
rounds=2                      ``encoder_options={"rounds": 2}`` (the traversals twice: every node updated
                              twice per direction, as NG-GNN's two layers update it twice)
============================  ==============================================================

The paper's multi-head convolution message has no switch in ``l2o.encoders.dng`` (``KernelMessage`` always has one
head per kernel slot), and on INRs (MLPs, kmax 1: one kernel slot) the message is single-headed anyway, so it is not
ablated here.

    python -m experiments.dng_ablation                                   # 3 seeds x 8 variants (resumable)
    python -m experiments.dng_ablation --seeds 0 1 2 --device cuda       # the runs on a GPU
    python -m experiments.dng_ablation report                            # only rebuild the table from the records

Each run is one ``tasks.weight_space.task_runs.run`` (through ``meta_train.pipelines.weight_space.run_many``) and
writes its record to ``--out`` (default ``runs/dng-ablation``), named like every weight-space record
(``classify-mnist-<label>-s<seed>.json``; labels such as ``dng[recurrence=rnn]+probe128``); an existing record is
skipped, so an interrupted study resumes where it stopped. Seeds are outermost, so an interrupted study still covers
every variant. The table, ``dng_ablation.md`` and ``dng_ablation.json`` in ``--results`` (default
``results/weight_space``): mean ± sample std of the test accuracy over the seeds present, the number of seeds, the
gap to NG-GNN and to DNG as shipped (percentage points), and training seconds per run. The main runs' records
(``--out runs/weight-space``) have the same names for ``ng-gnn+probe128``, ``dng+probe128`` and (seed 0) ``dng``, so
pointing ``--out`` there reuses them (their timings were taken at another time, though). Cost, from the main
table's seconds per epoch on one CPU thread: about 2.5 min per NG-GNN run and under a minute per DNG run, about
20 min for three seeds.

``--train-size`` / ``--epochs`` (and ``--val-size`` / ``--test-size``) shrink the budget for a smoke run: use another
``--out`` then, since the records are named by model and seed, not by budget.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments import RESULTS
from tasks.weight_space.task_report import mean_std

TASK, DATASET = "classify", "mnist"
OUT = Path("runs/dng-ablation")
RESULTS_DIR = RESULTS / "weight_space"
SEEDS = (0, 1, 2)
REFERENCE = "ng-gnn"  # the variant DNG is compared with
SHIPPED = "dng"  # DNG as shipped
MULTI_HEAD_NOTE = ("Not ablated: the multi-head convolution message (`l2o.encoders.dng.KernelMessage` has one head per "
                   "kernel slot and no switch for it; on INRs, MLPs with kmax 1, the message is single-headed anyway).")


@dataclass(frozen=True)
class Variant:
    """One row of the study: a model and the ``RunSpec`` settings that differ from the task's defaults."""

    name: str
    model: str
    overrides: dict = field(default_factory=dict)
    change: str = ""


VARIANTS = (
    Variant(REFERENCE, "ng-gnn", {}, "the reference: NG-GNN with probe features"),
    Variant(SHIPPED, "dng", {}, "DNG as shipped: GRU, bidirectional, sum aggregation, probe features"),
    Variant("recurrence=rnn", "dng", {"encoder_options": {"recurrence": "rnn"}}, "tanh RNN cell instead of the GRU"),
    Variant("recurrence=none", "dng", {"encoder_options": {"recurrence": "none"}},
            "no recurrent cell: memory + summed messages"),
    Variant("bidirectional=False", "dng", {"encoder_options": {"bidirectional": False}},
            "forward traversal only (no output -> input pass)"),
    Variant("probes=0", "dng", {"probes": 0}, "no probe features"),
    Variant("aggregation=mean", "dng", {"encoder_options": {"aggregation": "mean"}},
            "mean of the incoming messages instead of their sum"),
    # Not a piece of the paper's: DNG updates each node once per direction, NG-GNN once per layer (two here).
    Variant("rounds=2", "dng", {"encoder_options": {"rounds": 2}},
            "both traversals twice, the second round from the first's memories (not in the paper)"),
)


def variant_spec(variant: Variant, seed: int, budget: dict | None = None):
    """The ``RunSpec`` of ``variant`` at ``seed``: the task defaults, the variant's settings, then ``budget`` (the
    command line's size / epoch overrides; None values are ignored), in the order ``run_many`` applies them."""
    from tasks.weight_space.task_runs import default_spec

    budget = {k: v for k, v in (budget or {}).items() if v is not None}
    return default_spec(TASK, DATASET, variant.model, seed, **{**variant.overrides, **budget})


def variant_labels(variants=VARIANTS, budget: dict | None = None) -> dict[str, str]:
    """Variant name -> its run label (what the records' ``encoder`` field holds)."""
    return {v.name: variant_spec(v, 0, budget).label for v in variants}


# ---------------------------------------------------------------------------------------------------------- running
def run_study(seeds=SEEDS, out: Path = OUT, device: str = "cpu", root: str | None = None, variants=VARIANTS,
              budget: dict | None = None, progress: bool = True, force: bool = False) -> list[Path]:
    """Every variant at every seed (seeds outermost), skipping existing records; returns the record paths."""
    from meta_train.pipelines.weight_space import run_many
    from tasks.weight_space.task_runs import record_path

    specs = [(seed, v, variant_spec(v, seed, budget)) for seed in seeds for v in variants]  # bad settings fail here
    cache: dict = {}  # the task data, loaded once for every run
    paths = []
    for i, (seed, v, spec) in enumerate(specs, 1):
        path = record_path(out, spec)
        state = "exists, skipped" if path.exists() and not force else "running"
        print(f"[{i}/{len(specs)}] seed {seed} {v.name}: {spec.label} ({state})", flush=True)
        t0 = time.time()
        paths += run_many([(TASK, DATASET)], [v.model], [seed], out, budget or {}, force, root, progress,
                          item_overrides=v.overrides, device=device, data_cache=cache)
        if state == "running" and path.exists():
            rec = json.loads(path.read_text())
            print(f"[{i}/{len(specs)}] seed {seed} {v.name}: test accuracy {100 * rec['metrics']['accuracy']:.2f} % "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return paths


# ---------------------------------------------------------------------------------------------------------- table
def _train_sec(rec: dict) -> float:
    """Training seconds of a run (its epochs, without validation / test evaluation)."""
    hist = rec.get("history") or []
    if hist and all("sec" in h for h in hist):
        return float(sum(h["sec"] for h in hist))
    return float(rec["sec_per_epoch"]) * int(rec["epochs"])


def summarize(records: list[dict], labels: dict[str, str], variants=VARIANTS, earlier: dict | None = None) -> dict:
    """Records -> the study's table: one row per variant (in ``variants`` order) over the seeds present.

    ``earlier``: a previous table (its JSON). A variant that no record covers keeps that table's row of the same
    run label, marked ``"carried": True`` (the runs folder is not committed, so a later session that adds a
    variant has only its own records); the note then quotes the earlier table's set-up.

    ``labels``: variant name -> run label (:func:`variant_labels`); a record belongs to a variant when its task,
    data set and ``encoder`` (the label) match (one record per seed: a later duplicate is ignored). Accuracies and
    gaps are fractions (the markdown shows percentage points); ``gap_to_reference`` = variant - NG-GNN,
    ``gap_to_shipped`` = variant - DNG as shipped (NaN where either has no record)."""
    carried = {r["label"]: r for r in (earlier or {}).get("rows", [])}
    by_label: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("task") == TASK and r.get("dataset") == DATASET:
            by_label.setdefault(r["encoder"], {}).setdefault(int(r["seed"]), r)
    rows = []
    for v in variants:
        recs = [rec for _, rec in sorted(by_label.get(labels[v.name], {}).items())]
        mean, std = mean_std([r["metrics"].get("accuracy") for r in recs])
        rows.append({
            "variant": v.name, "label": labels[v.name], "model": v.model, "change": v.change,
            "overrides": v.overrides, "seeds": [r["seed"] for r in recs], "n_seeds": len(recs),
            "accuracy_mean": mean, "accuracy_std": std,
            "accuracies": [r["metrics"].get("accuracy") for r in recs],
            "train_sec_per_run": mean_std([_train_sec(r) for r in recs])[0],
            "total_sec_per_run": mean_std([r.get("total_sec", float("nan")) for r in recs])[0],
            "sec_per_epoch": mean_std([r.get("sec_per_epoch", float("nan")) for r in recs])[0],
            "params": recs[0]["params"] if recs else None,
        })
        old = carried.get(labels[v.name])
        if not recs and old is not None and old.get("n_seeds"):
            rows[-1] = {**rows[-1], **{k: _nan(old.get(k)) for k in _CARRIED}, "carried": True}
    ref = {r["variant"]: r["accuracy_mean"] for r in rows}
    for r in rows:
        r["gap_to_reference"] = r["accuracy_mean"] - ref.get(REFERENCE, float("nan"))
        r["gap_to_shipped"] = r["accuracy_mean"] - ref.get(SHIPPED, float("nan"))
    used = [rec for lab in labels.values() for rec in by_label.get(lab, {}).values()]
    note = setup_note(used)
    if any(r.get("carried") for r in rows):
        note += (" Rows marked * are carried from the previous table (their records are not in the runs folder); "
                 f"its set-up: {_carried_note(earlier)}")
    return {"task": TASK, "dataset": DATASET, "reference": REFERENCE, "shipped": SHIPPED, "rows": rows,
            "note": note, "not_ablated": MULTI_HEAD_NOTE, "verdict": verdict(rows)}


# What a carried row keeps of the earlier table's (the gaps are recomputed against this table's rows).
_CARRIED = ("seeds", "n_seeds", "accuracy_mean", "accuracy_std", "accuracies", "train_sec_per_run",
            "total_sec_per_run", "sec_per_epoch", "params")


def _nan(x):
    """``None`` (a NaN in the strict JSON written by :func:`write_table`) back to NaN."""
    return float("nan") if x is None else x


def _carried_note(earlier: dict) -> str:
    """The earlier table's own set-up line, without what it said about rows carried into it."""
    return earlier.get("note", "not recorded").split(" Rows marked * ")[0]


def setup_note(records: list[dict]) -> str:
    """One line on the data sizes, epochs, encoder size, device and threads of ``records`` (every distinct value)."""
    if not records:
        return "No records yet."

    def vals(get, recs=records) -> str:
        seen = sorted({str(get(r)) for r in recs})
        return " / ".join(seen) if len(seen) == 1 else "mixed: " + ", ".join(seen)

    cfg = lambda key: (lambda r: r.get("config", {}).get(key))  # noqa: E731
    probed = [r for r in records if (r.get("config", {}).get("probes") or 0) > 0] or records
    return (f"MNIST INR classification: {vals(lambda r: r['train_size'])} train / {vals(lambda r: r['val_size'])} val "
            f"/ {vals(lambda r: r['test_size'])} test INRs, epochs {vals(lambda r: r['epochs'])}, batch "
            f"{vals(cfg('batch_size'))}, lr {vals(cfg('lr'))}; encoders hidden {vals(cfg('hidden'))}, depth "
            f"{vals(cfg('depth'))}, {vals(cfg('probes'), probed)} probe points unless the row says otherwise; device "
            f"{vals(lambda r: r.get('device', 'cpu'))}, {vals(lambda r: r.get('torch_threads'))} torch thread(s); "
            f"{len(records)} runs.")


def verdict(rows: list[dict]) -> str:
    """One line: how far DNG as shipped is behind NG-GNN and which DNG variant comes closest."""
    by = {r["variant"]: r for r in rows}
    ref, shipped = by.get(REFERENCE), by.get(SHIPPED)
    dng = [r for r in rows if r["model"] == "dng" and not math.isnan(r["accuracy_mean"])]
    if not ref or math.isnan(ref["accuracy_mean"]) or not dng:
        return "Not enough records for a comparison yet."
    best = max(dng, key=lambda r: r["accuracy_mean"])
    line = ""
    if shipped and not math.isnan(shipped["accuracy_mean"]):
        line = f"DNG as shipped is {100 * shipped['gap_to_reference']:+.2f} points from NG-GNN. "
    line += (f"Closest DNG variant: {best['variant']} ({100 * best['accuracy_mean']:.2f} %, "
             f"{100 * best['gap_to_reference']:+.2f} points from NG-GNN")
    if best["variant"] != SHIPPED and shipped and not math.isnan(shipped["accuracy_mean"]):
        line += f", {100 * best['gap_to_shipped']:+.2f} vs DNG as shipped"
    noise = max(ref["accuracy_std"], best["accuracy_std"])
    if best["gap_to_reference"] >= 0:
        return line + "): at or above NG-GNN."
    if min(ref["n_seeds"], best["n_seeds"]) < 2:
        return line + "): one seed only, no spread to compare the gap with."
    within = best["gap_to_reference"] >= -noise
    return line + f"): {'within' if within else 'not within'} one seed std ({100 * noise:.2f} points) of NG-GNN."


def _pts(x: float, signed: bool = False) -> str:
    return "n/a" if x is None or math.isnan(x) else (f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}")


def row_cells(r: dict) -> tuple[str, str, str, str]:
    """A table row's accuracy (mean ± std, %), train s/run, s/epoch and params cells (``n/a`` where missing)."""
    acc = "n/a" if math.isnan(r["accuracy_mean"]) else f"{_pts(r['accuracy_mean'])} ± {_pts(r['accuracy_std'])}"
    t = r["train_sec_per_run"]
    train = "n/a" if math.isnan(t) else (f"{t:.0f}" if t >= 10 else f"{t:.1f}")
    epoch = "n/a" if math.isnan(r["sec_per_epoch"]) else f"{r['sec_per_epoch']:.1f}"
    params = "n/a" if r["params"] is None else f"{r['params']:,}"
    return acc, train, epoch, params


def markdown(table: dict) -> str:
    out = ["# DNG ablation: MNIST INR classification", "",
           "Produced by `python -m experiments.dng_ablation` (GitHub issue 19): DNG's design pieces removed one at a "
           "time, against NG-GNN. Test accuracy, mean ± sample std over the seeds present; gaps in percentage points "
           "(variant minus NG-GNN / minus DNG as shipped); train s/run: training time of one run (epochs only, "
           "mean over seeds).", "",
           "| variant | run label | test accuracy % | seeds | gap to NG-GNN | vs DNG as shipped | train s/run | "
           "s/epoch | params | what changes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        acc, train, epoch, params = row_cells(r)
        seeds = f"{r['n_seeds']}" + (" *" if r.get("carried") else "")
        out.append(f"| {r['variant']} | `{r['label']}` | {acc} | {seeds} | {_pts(r['gap_to_reference'], True)} "
                   f"| {_pts(r['gap_to_shipped'], True)} | {train} | {epoch} | {params} | {r['change']} |")
    out += ["", table["verdict"], "", f"Set-up: {table['note']}", "", table["not_ablated"], ""]
    return "\n".join(out)


def _no_nan(x):
    """``x`` with every NaN float as None (strict JSON)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def write_table(out: Path = OUT, results: Path = RESULTS_DIR, labels: dict[str, str] | None = None,
                carry: bool = True) -> dict:
    """Aggregate the records in ``out`` into ``results/dng_ablation.{md,json}``; returns the table. With ``carry``,
    the existing JSON's rows of variants that no record covers are kept (see :func:`summarize`)."""
    from tasks.weight_space.task_report import collect

    results = Path(results)
    previous = results / "dng_ablation.json"
    earlier = json.loads(previous.read_text()) if carry and previous.is_file() else None
    table = summarize(collect(out), labels or variant_labels(), earlier=earlier)
    results.mkdir(parents=True, exist_ok=True)
    (results / "dng_ablation.json").write_text(json.dumps(_no_nan(table), indent=1) + "\n")
    (results / "dng_ablation.md").write_text(markdown(table))
    return table


def add_run_arguments(ap: argparse.ArgumentParser, out: Path, outputs: str) -> None:
    """The options every weight-space study shares: where records and outputs go, device, threads, data, reruns."""
    ap.add_argument("--out", type=Path, default=out, help=f"folder of the per-run records (default {out})")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR,
                    help=f"where {outputs} go (default results/weight_space)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu): where the runs train")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the main table)")
    ap.add_argument("--data-root", default=None, help="data folder (default: $L2O_DATA)")
    ap.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.dng_ablation", description=__doc__.split("\n")[0])
    ap.add_argument("stage", nargs="?", default="run", choices=("run", "report"),
                    help="run: the runs not recorded yet, then the table (default); report: only the table")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], choices=[v.name for v in VARIANTS],
                    help="run only these variants (the table always lists all)")
    add_run_arguments(ap, OUT, "dng_ablation.{md,json}")
    for flag in ("--train-size", "--val-size", "--test-size", "--epochs"):
        ap.add_argument(flag, type=int, default=None, help="smoke runs only (use another --out): override the budget")
    ap.add_argument("--no-carry", action="store_true",
                    help="the table from the records in --out only (default: the existing table's rows of variants "
                         "that no record covers are kept, marked *)")
    args = ap.parse_args(argv)
    budget = {k: getattr(args, k) for k in ("train_size", "val_size", "test_size", "epochs")}
    if args.stage == "run":
        from tasks.devices import device_or_exit

        device = device_or_exit(ap, args.device)
        import torch

        torch.set_num_threads(args.threads)
        chosen = [v for v in VARIANTS if v.name in args.variants]
        run_study(args.seeds, args.out, root=args.data_root, variants=chosen, budget=budget, progress=not args.quiet,
                  force=args.force, device=str(device))
    table = write_table(args.out, args.results, variant_labels(VARIANTS, budget), carry=not args.no_carry)
    for r in table["rows"]:
        print(f"{r['variant']:20s} {r['label']:42s} {_pts(r['accuracy_mean']):>6s} ± {_pts(r['accuracy_std']):>5s} "
              f"({r['n_seeds']} seeds)  gap to NG-GNN {_pts(r['gap_to_reference'], True)}")
    print(table["verdict"])
    print(f"-> {args.results / 'dng_ablation.md'}, {args.results / 'dng_ablation.json'}")


if __name__ == "__main__":
    main()
