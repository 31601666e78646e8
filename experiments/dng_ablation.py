"""DNG's design claims put to the test where DNG stays behind NG-GNN: MNIST INR classification, INR editing and CNN
generalization prediction (GitHub issue 19).

On the weight-space tasks (``results/weight_space.md``) DNG trails NG-GNN on INR classification and on predicting
the test accuracy of the CNN zoos' networks. The DNG paper credits its recurrent memory (GRU), the bidirectional
traversal, probe features and the multi-head convolution message. This study removes one piece at a time,
everything else as shipped, with the task's default budget, and reports which piece, if any, closes the gap:

* ``--task classify --dataset mnist`` (the default): MNIST INR classification, ``default_spec("classify", "mnist",
  ...)``: 2,500 train / 500 val / 2,000 test INRs, 5 epochs, lr 3e-3, 128 probe points, hidden 32, depth 2; metric
  the test accuracy (gaps in percentage points).
* ``--task edit --dataset mnist`` (or ``fmnist``): INR dilation editing, ``default_spec("edit", dataset, ...)``:
  1,000 train / 300 val / 500 test INRs, 5 epochs, lr 1e-3, 32 probe points; metric the test MSE of the edited
  images against the dilated targets (lower is better). DNG falls behind NG-GNN here at 10,000 training INRs
  (``--train-size 10000``; 0.0467 against 0.0374 in ``results/weight_space/editing_10k/``).
* ``--task generalization --dataset cifar10`` (or ``fmnist``): CNN generalization prediction,
  ``default_spec("generalization", dataset, ...)``: the CNN zoo's 1,050 train / 150 val / 300 test networks (25
  architectures, 3x3 and 5x5 kernels), 20 epochs, lr 1e-3, no probe features, hidden 32, depth 2; metric the test
  Kendall's tau between predicted and true test accuracies (gaps as differences of tau).

============================  ==============================================================
variant                       what changes (``RunSpec``)
============================  ==============================================================
ng-gnn                        the reference (NG-GNN, with probes on INRs, as in the main table)
dng                           DNG as shipped: GRU cell, bidirectional, sum aggregation, one message map per kernel
                              slot, probes on INRs
recurrence=rnn                ``encoder_options={"recurrence": "rnn"}`` (tanh RNN cell)
recurrence=none               ``encoder_options={"recurrence": "none"}`` (memory + message sum)
bidirectional=False           ``encoder_options={"bidirectional": False}`` (forward traversal only)
probes=0                      ``probes=0`` (no probe features; INR classification only: generalization runs have none)
aggregation=mean              ``encoder_options={"aggregation": "mean"}`` (mean of the messages)
heads=shared                  ``encoder_options={"heads": "shared"}`` (one message map for every kernel slot instead
                              of one per slot: the paper's multi-head message)
rounds=2                      ``encoder_options={"rounds": 2}`` (the traversals twice: every node updated
                              twice per direction, as NG-GNN's two layers update it twice)
aggregation=mean+             editing only: ``{"aggregation": "mean", "recurrence": "none"}``, the two pieces
recurrence=none               whose removal came closest to NG-GNN on editing, together
depth=4                       editing only: ``depth=4``, a 4-layer edge decoder (DNG never updates edges; the
                              per-weight edit is read off the decoder)
============================  ==============================================================

The multi-head message matters on the CNN zoos (kmax 5: a 5x5 kernel has 25 slots, a 3x3 one 9, each with its own
map). On INRs (MLPs, kmax 1: one kernel slot) the message is single-headed anyway: there ``heads=shared`` is the
same model as ``dng`` (same parameters, same initialisation), listed so that both tables have the same rows.

    python -m experiments.dng_ablation                                   # MNIST INRs: 3 seeds x 9 variants (resumable)
    python -m experiments.dng_ablation --seeds 0 1 2 --device cuda       # the runs on a GPU
    python -m experiments.dng_ablation report                            # only rebuild the table from the records
    python -m experiments.dng_ablation --task generalization --dataset cifar10    # CNN zoo: 3 seeds x 8 variants
    python -m experiments.dng_ablation --task generalization --dataset fmnist
    python -m experiments.dng_ablation report --task generalization --dataset cifar10

Each run is one ``tasks.weight_space.task_runs.run`` (through ``meta_train.pipelines.weight_space.run_many``) and
writes its record to ``--out`` (default ``runs/dng-ablation`` for every task), named like every weight-space record
(``<task>-<dataset>-<label>-s<seed>.json``, e.g. ``classify-mnist-dng[recurrence=rnn]+probe128-s0.json`` or
``generalization-cifar10-dng[heads=shared]-s1.json``); an existing record is skipped, so an interrupted study
resumes where it stopped. Seeds are outermost, so an interrupted study still covers every variant. The table, in
``--results`` (default ``results/weight_space``): ``dng_ablation.md`` / ``.json`` for MNIST INR classification,
``dng_ablation_<task>_<dataset>.md`` / ``.json`` otherwise (``dng_ablation_generalization_cifar10.md``): mean ±
sample std of the test metric over the seeds present, the number of seeds, the gap to NG-GNN and to DNG as shipped,
and training seconds per run. The main runs' records (``--out runs/weight-space``) have the same names for the
reference and DNG as shipped (``ng-gnn+probe128``, ``dng+probe128``, (seed 0) ``dng``; ``ng-gnn``, ``dng`` on the
CNN zoos), so pointing ``--out`` there reuses them (their timings were taken at another time, though). Cost, from
the main table's seconds per epoch on one CPU thread: INR classification about 2.5 min per NG-GNN run and under a
minute per DNG run, about 20 min for three seeds; CNN generalization about 50 s per NG-GNN run and 25-40 s per DNG
run, about 15 min for three seeds, once the CNN zoo is built (``python -m tasks.weight_space.cnn_zoo --dataset
cifar10``; the first run builds it otherwise, which takes far longer than the study).

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

TASK, DATASET = "classify", "mnist"  # the default study (its outputs keep the plain names dng_ablation.{md,json})
STUDY_TASKS = ("classify", "edit", "generalization")
TASK_NAMES = {"classify": "INR classification", "edit": "INR dilation editing", "generalization": "CNN generalization"}
DATASET_NAMES = {"mnist": "MNIST", "fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
OUT = Path("runs/dng-ablation")
RESULTS_DIR = RESULTS / "weight_space"
SEEDS = (0, 1, 2)
REFERENCE = "ng-gnn"  # the variant DNG is compared with
SHIPPED = "dng"  # DNG as shipped
MULTI_HEAD_NOTE = ("The multi-head convolution message (`l2o.encoders.dng.KernelMessage`: one message map per kernel "
                   "slot) is ablated by heads=shared (one map for every slot) on the CNN zoos (`--task "
                   "generalization`: kmax 5, 3x3 and 5x5 kernels); on INRs (MLPs, kmax 1: one kernel slot) the message "
                   "is single-headed anyway, so there heads=shared is the same model as dng.")


@dataclass(frozen=True)
class Variant:
    """One row of the study: a model and the ``RunSpec`` settings that differ from the task's defaults."""

    name: str
    model: str
    overrides: dict = field(default_factory=dict)
    change: str = ""


# The DNG pieces both tasks ablate; probe features exist on INRs only (generalization runs have probes=0 already).
_RNN = Variant("recurrence=rnn", "dng", {"encoder_options": {"recurrence": "rnn"}}, "tanh RNN cell instead of the GRU")
_NO_CELL = Variant("recurrence=none", "dng", {"encoder_options": {"recurrence": "none"}},
                   "no recurrent cell: memory + summed messages")
_FORWARD = Variant("bidirectional=False", "dng", {"encoder_options": {"bidirectional": False}},
                   "forward traversal only (no output -> input pass)")
_NO_PROBES = Variant("probes=0", "dng", {"probes": 0}, "no probe features")
_MEAN = Variant("aggregation=mean", "dng", {"encoder_options": {"aggregation": "mean"}},
                "mean of the incoming messages instead of their sum")
_SHARED_HEADS = Variant("heads=shared", "dng", {"encoder_options": {"heads": "shared"}},
                        "one message map for every kernel slot instead of one per slot (the paper's multi-head "
                        "message)")
# Not a piece of the paper's: DNG updates each node once per direction, NG-GNN once per layer (two here).
_ROUNDS = Variant("rounds=2", "dng", {"encoder_options": {"rounds": 2}},
                  "both traversals twice, the second round from the first's memories (not in the paper)")

VARIANTS = (  # INR classification
    Variant(REFERENCE, "ng-gnn", {}, "the reference: NG-GNN with probe features"),
    Variant(SHIPPED, "dng", {}, "DNG as shipped: GRU, bidirectional, sum aggregation, probe features"),
    _RNN, _NO_CELL, _FORWARD, _NO_PROBES, _MEAN, _SHARED_HEADS, _ROUNDS,
)
GENERALIZATION_VARIANTS = (
    Variant(REFERENCE, "ng-gnn", {}, "the reference: NG-GNN (no probe features on networks, as in the main table)"),
    Variant(SHIPPED, "dng", {}, "DNG as shipped: GRU, bidirectional, sum aggregation, one message map per kernel slot"),
    _RNN, _NO_CELL, _FORWARD, _MEAN, _SHARED_HEADS, _ROUNDS,
)
# The two pieces whose removal came closest to NG-GNN on editing (0.0446 and 0.0453 against 0.0467), together.
_MEAN_NO_CELL = Variant("aggregation=mean+recurrence=none", "dng",
                        {"encoder_options": {"aggregation": "mean", "recurrence": "none"}},
                        "mean of the messages and no recurrent cell, together (the two closest on editing)")
# Editing outputs one value per weight, read off DNG's edge decoder: DNG never updates an edge, NG-GNN updates every
# edge from both of its nodes once per layer. A deeper decoder is DNG's cheap place for that capacity.
_DEEP_DECODER = Variant("depth=4", "dng", {"depth": 4}, "a 4-layer edge decoder instead of 2 (edges are never "
                        "updated by DNG's traversals; NG-GNN updates them once per layer)")
# INR editing: the classification variants (probe features exist on INRs; 32 probes, the task's default), the
# combination of its two closest ones and the deeper edge decoder.
EDIT_VARIANTS = VARIANTS + (_MEAN_NO_CELL, _DEEP_DECODER)
VARIANTS_BY_TASK = {"classify": VARIANTS, "edit": EDIT_VARIANTS, "generalization": GENERALIZATION_VARIANTS}


@dataclass(frozen=True)
class Metric:
    """A study's test metric: where a record holds it, which way is better and how the table shows it. The rows
    hold ``<key>_mean``, ``<key>_std`` and the per-seed values under ``values``."""

    key: str  # rec["metrics"][key]
    values: str
    name: str  # in sentences: "test accuracy"
    column: str  # the table's header
    described: str  # the markdown's description of the numbers
    scale: float  # a shown value is scale * value
    decimals: int
    unit: str  # after a shown value
    gap_unit: str  # after a shown gap
    gaps: str  # the markdown's description of the gaps
    higher: bool = True  # whether a larger value is better (MSE: False)

    def better(self, gap: float) -> float:
        """``gap`` (variant minus another) signed so that positive means the variant is better."""
        return gap if self.higher else -gap

    def show(self, x: float | None, signed: bool = False) -> str:
        """``x`` as the table shows it (``n/a`` for None / NaN)."""
        if x is None or math.isnan(x):
            return "n/a"
        return f"{self.scale * x:{'+' if signed else ''}.{self.decimals}f}"


ACCURACY = Metric("accuracy", "accuracies", "test accuracy", "test accuracy %", "Test accuracy", 100.0, 2, " %",
                  " points", "gaps in percentage points")
KENDALL_TAU = Metric("kendall_tau", "kendall_taus", "test Kendall's tau", "test Kendall's tau",
                     "Test Kendall's tau (tau-b) between the predicted and the true test accuracies of the networks",
                     1.0, 3, "", " tau", "gaps as differences of tau")
MSE = Metric("mse", "mses", "test MSE", "test MSE", "Test MSE of the edited images against the dilated targets "
             "(lower is better)", 1.0, 4, "", "", "gaps as differences of MSE (negative: lower, better)", higher=False)
METRICS = {"classify": ACCURACY, "edit": MSE, "generalization": KENDALL_TAU}


@dataclass(frozen=True)
class Study:
    """One task and data set of the ablation: its variants, metric, records and output files."""

    task: str
    dataset: str

    @property
    def variants(self) -> tuple[Variant, ...]:
        return VARIANTS_BY_TASK[self.task]

    @property
    def metric(self) -> Metric:
        return METRICS[self.task]

    @property
    def title(self) -> str:
        """``MNIST INR classification``, ``CIFAR-10 CNN generalization``."""
        return f"{DATASET_NAMES.get(self.dataset, self.dataset)} {TASK_NAMES[self.task]}"

    @property
    def is_default(self) -> bool:
        return (self.task, self.dataset) == (TASK, DATASET)

    @property
    def stem(self) -> str:
        """The outputs' file name without suffix: ``dng_ablation`` (the default study, the name it always had),
        else ``dng_ablation_<task>_<dataset>``."""
        return "dng_ablation" if self.is_default else f"dng_ablation_{self.task}_{self.dataset}"

    @property
    def command(self) -> str:
        """The command line that runs this study."""
        flags = "" if self.is_default else f" --task {self.task} --dataset {self.dataset}"
        return f"python -m experiments.dng_ablation{flags}"


DEFAULT_STUDY = Study(TASK, DATASET)


def study_of(task: str = TASK, dataset: str | None = None) -> Study:
    """The study of ``task`` on ``dataset`` (default: the task's first data set, MNIST / CIFAR-10); ValueError for
    a task or data set the study does not cover."""
    from tasks.weight_space.task_runs import DATASETS

    if task not in STUDY_TASKS:
        raise ValueError(f"the DNG ablation covers the tasks {', '.join(STUDY_TASKS)}, got {task!r}")
    dataset = DATASETS[task][0] if dataset is None else dataset
    if dataset not in DATASETS[task]:
        raise ValueError(f"task {task!r} has no data set {dataset!r}; choose from {', '.join(DATASETS[task])}")
    return Study(task, dataset)


def variant_spec(variant: Variant, seed: int, budget: dict | None = None, study: Study = DEFAULT_STUDY):
    """The ``RunSpec`` of ``variant`` at ``seed``: the task defaults, the variant's settings, then ``budget`` (the
    command line's size / epoch overrides; None values are ignored), in the order ``run_many`` applies them."""
    from tasks.weight_space.task_runs import default_spec

    budget = {k: v for k, v in (budget or {}).items() if v is not None}
    return default_spec(study.task, study.dataset, variant.model, seed, **{**variant.overrides, **budget})


def variant_labels(variants=None, budget: dict | None = None, study: Study = DEFAULT_STUDY) -> dict[str, str]:
    """Variant name -> its run label (what the records' ``encoder`` field holds); ``variants``: the study's when
    None."""
    return {v.name: variant_spec(v, 0, budget, study).label for v in (study.variants if variants is None else variants)}


# ---------------------------------------------------------------------------------------------------------- running
def run_study(seeds=SEEDS, out: Path = OUT, device: str = "cpu", root: str | None = None, variants=None,
              budget: dict | None = None, progress: bool = True, force: bool = False,
              study: Study = DEFAULT_STUDY) -> list[Path]:
    """Every variant (the study's when ``variants`` is None) at every seed (seeds outermost), skipping existing
    records; returns the record paths."""
    from meta_train.pipelines.weight_space import run_many
    from tasks.weight_space.task_runs import record_path

    variants = study.variants if variants is None else variants
    specs = [(seed, v, variant_spec(v, seed, budget, study)) for seed in seeds for v in variants]  # bad ones fail here
    cache: dict = {}  # the task data, loaded once for every run
    metric = study.metric
    paths = []
    for i, (seed, v, spec) in enumerate(specs, 1):
        path = record_path(out, spec)
        state = "exists, skipped" if path.exists() and not force else "running"
        print(f"[{i}/{len(specs)}] seed {seed} {v.name}: {spec.label} ({state})", flush=True)
        t0 = time.time()
        paths += run_many([(study.task, study.dataset)], [v.model], [seed], out, budget or {}, force, root, progress,
                          item_overrides=v.overrides, device=device, data_cache=cache)
        if state == "running" and path.exists():
            rec = json.loads(path.read_text())
            print(f"[{i}/{len(specs)}] seed {seed} {v.name}: {metric.name} "
                  f"{metric.show(rec['metrics'][metric.key])}{metric.unit} ({time.time() - t0:.0f} s)", flush=True)
    return paths


# ---------------------------------------------------------------------------------------------------------- table
def _train_sec(rec: dict) -> float:
    """Training seconds of a run (its epochs, without validation / test evaluation)."""
    hist = rec.get("history") or []
    if hist and all("sec" in h for h in hist):
        return float(sum(h["sec"] for h in hist))
    return float(rec["sec_per_epoch"]) * int(rec["epochs"])


def summarize(records: list[dict], labels: dict[str, str], variants=None, earlier: dict | None = None,
              study: Study = DEFAULT_STUDY) -> dict:
    """Records -> the study's table: one row per variant (in ``variants`` order, the study's when None) over the
    seeds present.

    ``earlier``: a previous table (its JSON). A variant that no record covers keeps that table's row of the same
    run label, marked ``"carried": True`` (the runs folder is not committed, so a later session that adds a
    variant has only its own records); the note then quotes the earlier table's set-up.

    ``labels``: variant name -> run label (:func:`variant_labels`); a record belongs to a variant when its task,
    data set and ``encoder`` (the label) match the study's (one record per seed: a later duplicate is ignored).
    Metric values and gaps are as recorded (fractions for accuracy, the markdown shows percentage points; Kendall's
    tau as is); ``gap_to_reference`` = variant - NG-GNN, ``gap_to_shipped`` = variant - DNG as shipped (NaN where
    either has no record). The rows' metric keys are ``<metric>_mean``, ``<metric>_std`` and the per-seed values
    (``accuracy_mean``, ``accuracy_std``, ``accuracies`` for INR classification; :class:`Metric`)."""
    variants = study.variants if variants is None else variants
    metric = study.metric
    mean_key, std_key = f"{metric.key}_mean", f"{metric.key}_std"
    carried = {r["label"]: r for r in (earlier or {}).get("rows", [])}
    by_label: dict[str, dict[int, dict]] = {}
    for r in records:
        if r.get("task") == study.task and r.get("dataset") == study.dataset:
            by_label.setdefault(r["encoder"], {}).setdefault(int(r["seed"]), r)
    rows = []
    for v in variants:
        recs = [rec for _, rec in sorted(by_label.get(labels[v.name], {}).items())]
        values = [r["metrics"].get(metric.key) for r in recs]
        mean, std = mean_std(values)
        rows.append({
            "variant": v.name, "label": labels[v.name], "model": v.model, "change": v.change,
            "overrides": v.overrides, "seeds": [r["seed"] for r in recs], "n_seeds": len(recs),
            mean_key: mean, std_key: std, metric.values: values,
            "train_sec_per_run": mean_std([_train_sec(r) for r in recs])[0],
            "total_sec_per_run": mean_std([r.get("total_sec", float("nan")) for r in recs])[0],
            "sec_per_epoch": mean_std([r.get("sec_per_epoch", float("nan")) for r in recs])[0],
            "params": recs[0]["params"] if recs else None,
        })
        old = carried.get(labels[v.name])
        if not recs and old is not None and old.get("n_seeds"):
            rows[-1] = {**rows[-1], **{k: _nan(old.get(k)) for k in _carried_keys(metric)}, "carried": True}
    ref = {r["variant"]: r[mean_key] for r in rows}
    for r in rows:
        r["gap_to_reference"] = r[mean_key] - ref.get(REFERENCE, float("nan"))
        r["gap_to_shipped"] = r[mean_key] - ref.get(SHIPPED, float("nan"))
    used = [rec for lab in labels.values() for rec in by_label.get(lab, {}).values()]
    note = setup_note(used, study)
    if any(r.get("carried") for r in rows):
        note += (" Rows marked * are carried from the previous table (their records are not in the runs folder); "
                 f"its set-up: {_carried_note(earlier, {r['label'] for r in rows if r.get('carried')})}")
    return {"task": study.task, "dataset": study.dataset, "reference": REFERENCE, "shipped": SHIPPED, "rows": rows,
            "note": note, "multi_head": MULTI_HEAD_NOTE, "verdict": verdict(rows, metric)}


def _carried_keys(metric: Metric) -> tuple[str, ...]:
    """What a carried row keeps of the earlier table's (the gaps are recomputed against this table's rows)."""
    return ("seeds", "n_seeds", f"{metric.key}_mean", f"{metric.key}_std", metric.values, "train_sec_per_run",
            "total_sec_per_run", "sec_per_epoch", "params")


def _nan(x):
    """``None`` (a NaN in the strict JSON written by :func:`write_table`) back to NaN."""
    return float("nan") if x is None else x


def _carried_note(earlier: dict, labels: set[str]) -> str:
    """The set-up of the rows (run ``labels``) carried from the earlier table: its own set-up line, or, when it had
    carried all of them itself, the set-up it quoted for them (so rebuilding a table from the same records keeps its
    note); both when some were its own and some carried."""
    own, sep, quoted = earlier.get("note", "not recorded").partition(" Rows marked * ")
    quoted = quoted.partition("its set-up: ")[2] if sep else ""
    were_carried = {r["label"] for r in earlier.get("rows", []) if r.get("carried")}
    if not quoted or not labels & were_carried:
        return own
    if labels <= were_carried:
        return quoted
    return f"{own} (rows it had carried itself: {quoted})"


def setup_note(records: list[dict], study: Study = DEFAULT_STUDY) -> str:
    """One line on the data sizes, epochs, encoder size, inputs, device and threads of ``records`` (every distinct
    value): INRs and probe points for the INR tasks, networks and their zoo for CNN generalization."""
    if not records:
        return "No records yet."

    def vals(get, recs=records) -> str:
        seen = sorted({str(get(r)) for r in recs})
        return " / ".join(seen) if len(seen) == 1 else "mixed: " + ", ".join(seen)

    cfg = lambda key: (lambda r: r.get("config", {}).get(key))  # noqa: E731
    sizes = (f"{vals(lambda r: r['train_size'])} train / {vals(lambda r: r['val_size'])} val "
             f"/ {vals(lambda r: r['test_size'])} test")
    if study.task in ("classify", "edit"):
        probed = [r for r in records if (r.get("config", {}).get("probes") or 0) > 0] or records
        data = f"{sizes} INRs"
        inputs = f"{vals(cfg('probes'), probed)} probe points unless the row says otherwise"
    else:
        zoo = lambda key: (lambda r: (r.get("data") or {}).get(key))  # noqa: E731
        data = (f"{sizes} networks from a zoo of {vals(zoo('zoo_size'))} ({vals(zoo('architectures'))} "
                f"architectures)")
        inputs = f"raw-value input channel {vals(cfg('raw_channel'))}, no probe features"
    return (f"{study.title}: {data}, epochs {vals(lambda r: r['epochs'])}, batch {vals(cfg('batch_size'))}, lr "
            f"{vals(cfg('lr'))}; encoders hidden {vals(cfg('hidden'))}, depth {vals(cfg('depth'))}, {inputs}; device "
            f"{vals(lambda r: r.get('device', 'cpu'))}, {vals(lambda r: r.get('torch_threads'))} torch thread(s); "
            f"{len(records)} runs.")


def verdict(rows: list[dict], metric: Metric = ACCURACY) -> str:
    """One line: how far DNG as shipped is behind NG-GNN and which DNG variant comes closest."""
    mean_key, std_key, show, unit = f"{metric.key}_mean", f"{metric.key}_std", metric.show, metric.gap_unit
    by = {r["variant"]: r for r in rows}
    ref, shipped = by.get(REFERENCE), by.get(SHIPPED)
    dng = [r for r in rows if r["model"] == "dng" and not math.isnan(r[mean_key])]
    if not ref or math.isnan(ref[mean_key]) or not dng:
        return "Not enough records for a comparison yet."
    best = max(dng, key=lambda r: metric.better(r[mean_key]))
    line = ""
    if shipped and not math.isnan(shipped[mean_key]):
        line = f"DNG as shipped is {show(shipped['gap_to_reference'], True)}{unit} from NG-GNN. "
    line += (f"Closest DNG variant: {best['variant']} ({show(best[mean_key])}{metric.unit}, "
             f"{show(best['gap_to_reference'], True)}{unit} from NG-GNN")
    if best["variant"] != SHIPPED and shipped and not math.isnan(shipped[mean_key]):
        line += f", {show(best['gap_to_shipped'], True)} vs DNG as shipped"
    noise = max(ref[std_key], best[std_key])
    if metric.better(best["gap_to_reference"]) >= 0:
        return line + f"): {'at or above' if metric.higher else 'at or below'} NG-GNN."
    if min(ref["n_seeds"], best["n_seeds"]) < 2:
        return line + "): one seed only, no spread to compare the gap with."
    within = metric.better(best["gap_to_reference"]) >= -noise
    return line + f"): {'within' if within else 'not within'} one seed std ({show(noise)}{unit}) of NG-GNN."


def _pts(x: float, signed: bool = False) -> str:
    return ACCURACY.show(x, signed)


def row_cells(r: dict, metric: Metric = ACCURACY) -> tuple[str, str, str, str]:
    """A table row's metric (mean ± std; accuracy in %), train s/run, s/epoch and params cells (``n/a`` where
    missing)."""
    mean, std = r[f"{metric.key}_mean"], r[f"{metric.key}_std"]
    value = "n/a" if math.isnan(mean) else f"{metric.show(mean)} ± {metric.show(std)}"
    t = r["train_sec_per_run"]
    train = "n/a" if math.isnan(t) else (f"{t:.0f}" if t >= 10 else f"{t:.1f}")
    epoch = "n/a" if math.isnan(r["sec_per_epoch"]) else f"{r['sec_per_epoch']:.1f}"
    params = "n/a" if r["params"] is None else f"{r['params']:,}"
    return value, train, epoch, params


def markdown(table: dict) -> str:
    """The table (:func:`summarize`) as markdown, titled and described for its task and data set."""
    study = Study(table["task"], table["dataset"])
    metric = study.metric
    out = [f"# DNG ablation: {study.title}", "",
           f"Produced by `{study.command}` (GitHub issue 19): DNG's design pieces removed one at a time, against "
           f"NG-GNN. {metric.described}, mean ± sample std over the seeds present; {metric.gaps} (variant minus "
           "NG-GNN / minus DNG as shipped); train s/run: training time of one run (epochs only, mean over seeds).", "",
           f"| variant | run label | {metric.column} | seeds | gap to NG-GNN | vs DNG as shipped | train s/run | "
           "s/epoch | params | what changes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        value, train, epoch, params = row_cells(r, metric)
        seeds = f"{r['n_seeds']}" + (" *" if r.get("carried") else "")
        gaps = f"{metric.show(r['gap_to_reference'], True)} | {metric.show(r['gap_to_shipped'], True)}"
        out.append(f"| {r['variant']} | `{r['label']}` | {value} | {seeds} | {gaps} | {train} | {epoch} | {params} "
                   f"| {r['change']} |")
    out += ["", table["verdict"], "", f"Set-up: {table['note']}", "", table["multi_head"], ""]
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
                carry: bool = True, study: Study = DEFAULT_STUDY) -> dict:
    """Aggregate the study's records in ``out`` into ``results/<stem>.{md,json}`` (``dng_ablation`` for MNIST INR
    classification, :attr:`Study.stem`); returns the table. With ``carry``, the existing JSON's rows of variants
    that no record covers are kept (see :func:`summarize`)."""
    from tasks.weight_space.task_report import collect

    results = Path(results)
    previous = results / f"{study.stem}.json"
    earlier = json.loads(previous.read_text()) if carry and previous.is_file() else None
    table = summarize(collect(out), labels or variant_labels(study=study), earlier=earlier, study=study)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{study.stem}.json").write_text(json.dumps(_no_nan(table), indent=1) + "\n")
    (results / f"{study.stem}.md").write_text(markdown(table))
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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and its arguments, with ``args.study`` (:class:`Study`) and ``args.run_variants`` (the
    :class:`Variant` s to run, in table order) resolved; a task, data set or variant the study does not cover is a
    usage error."""
    ap = argparse.ArgumentParser(prog="python -m experiments.dng_ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", nargs="?", default="run", choices=("run", "report"),
                    help="run: the runs not recorded yet, then the table (default); report: only the table")
    ap.add_argument("--task", default=TASK, choices=STUDY_TASKS,
                    help="classify: INR classification (default); edit: INR dilation editing; generalization: CNN "
                         "generalization prediction")
    ap.add_argument("--dataset", default=None,
                    help="data set (default mnist for classify and edit, which also take fmnist; cifar10 for "
                         "generalization, which also takes fmnist)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    names = list(dict.fromkeys(v.name for vs in VARIANTS_BY_TASK.values() for v in vs))
    ap.add_argument("--variants", nargs="+", default=None, choices=names, metavar="VARIANT",
                    help=f"run only these variants (default: all of the task's; the table always lists all): "
                         f"{', '.join(names)} (probes=0: INR tasks only)")
    add_run_arguments(ap, OUT, "dng_ablation.{md,json} (dng_ablation_<task>_<dataset>.{md,json} for other studies)")
    for flag in ("--train-size", "--val-size", "--test-size", "--epochs"):
        ap.add_argument(flag, type=int, default=None, help="override the task's budget, with another --out (the records "
                                                           "are named by model and seed, not by budget)")
    ap.add_argument("--no-carry", action="store_true",
                    help="the table from the records in --out only (default: the existing table's rows of variants "
                         "that no record covers are kept, marked *)")
    args = ap.parse_args(argv)
    try:
        args.study = study_of(args.task, args.dataset)
    except ValueError as err:
        ap.error(str(err))
    own = [v.name for v in args.study.variants]
    foreign = [n for n in args.variants or [] if n not in own]
    if foreign:
        ap.error(f"not a variant of the {args.task} study: {', '.join(foreign)} (its variants: {', '.join(own)})")
    args.run_variants = [v for v in args.study.variants if args.variants is None or v.name in args.variants]
    return ap, args


def main(argv: list[str] | None = None) -> None:
    ap, args = parse_args(argv)
    study, metric = args.study, args.study.metric
    budget = {k: getattr(args, k) for k in ("train_size", "val_size", "test_size", "epochs")}
    if args.stage == "run":
        from tasks.devices import device_or_exit

        device = device_or_exit(ap, args.device)
        import torch

        torch.set_num_threads(args.threads)
        run_study(args.seeds, args.out, root=args.data_root, variants=args.run_variants, budget=budget,
                  progress=not args.quiet, force=args.force, device=str(device), study=study)
    table = write_table(args.out, args.results, variant_labels(budget=budget, study=study), carry=not args.no_carry,
                        study=study)
    for r in table["rows"]:
        print(f"{r['variant']:20s} {r['label']:42s} {metric.show(r[f'{metric.key}_mean']):>6s} ± "
              f"{metric.show(r[f'{metric.key}_std']):>5s} ({r['n_seeds']} seeds)  gap to NG-GNN "
              f"{metric.show(r['gap_to_reference'], True)}")
    print(table["verdict"])
    print(f"-> {args.results / (study.stem + '.md')}, {args.results / (study.stem + '.json')}")


if __name__ == "__main__":
    main()
