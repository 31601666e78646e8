"""INR classification accuracy against the number of training INRs, for the best encoders (GitHub issue 19).

The main table (``results/weight_space.md``) trains on 2,500 of the zoo's 10,000 training INRs; the published
figures come from far larger budgets. This study trains the same task at growing training-set sizes, so that the
trend toward the published numbers is visible even where the full run does not fit:

    python -m experiments.inr_scaling                                     # MNIST, DNG + NG-GNN, 500 .. 10,000 INRs
    python -m experiments.inr_scaling --dataset fmnist --seeds 0 1 2      # Fashion-MNIST, three seeds
    python -m experiments.inr_scaling --sizes 500 1000 2500 5000 10000 20000 --device cuda
    python -m experiments.inr_scaling --encoders dng --sizes 50000 --hidden 64 --depth 4   # a larger encoder
    python -m experiments.inr_scaling --encoders dng --sizes 50000 --hidden 64 --epochs 10 --full-zoo  # official test
    python -m experiments.inr_scaling plan                                # only the runs and their time estimates
    python -m experiments.inr_scaling report                              # only rebuild the table and figure

One run per size, seed and encoder (sizes outermost and smallest first, so an interrupted study has the cheap
points), each ``default_spec("classify", dataset, encoder, seed, train_size=N, tag="nN")``: the task's defaults
otherwise (5 epochs, lr 3e-3, batch 64, 128 probe points for graph encoders, hidden 32, depth 2), the first N
training INRs of the zoo, and at every size the same 500 validation INRs (epoch selection) and the same 2,000 test
INRs. ``RunSpec.tag`` puts the size into the label (``dng+probe128+n1000``; ``-e<epochs>`` is appended when
``--epochs`` differs from the task's default: ``dng+probe128+n1000-e10``), so every size has its own record
(``<out>/classify-<dataset>-<label>-s<seed>.json``) and the main runs' labels are untouched.

Optimisation steps: every size trains for the same number of epochs (the task default, 5, unless ``--epochs``), so
the steps grow with the data: ceil(N / 64) x 5, i.e. 40 steps at 500 INRs and 785 at 10,000. The small sizes are
therefore short of steps as well as of examples; the curve shows what the task's recipe gives at each size.

Zoos: sizes up to the cached zoo's 10,000 training INRs (``build_inr_zoo``'s default) use that zoo, as the main
runs do (loaded, or fitted on first use: 13,000 INRs). A larger size needs a zoo with more training INRs: the study
fits one with ``n_train`` = the largest size asked for (up to 50,000, the images of the "train" split; val / test
INRs as in the default zoo, so the same 500 / 2,000 evaluation INRs) before the first run that needs it, at about
35 INRs/s on one CPU core, resumable in chunks; without it the task would silently train on 10,000 INRs only.

``--full-zoo`` uses the zoo of every image instead (``full_zoo_sizes``: MNIST 50,000 / 10,000 / 10,000) at every size
and tests on its whole test split, the official test set, as the published figures do; the tag gets ``-t<N>`` and
the table a ``+test<N>`` row. The first 2,000 MNIST test images are harder than the set as a whole (a pixel MLP
scores 0.6 points less on them: ``results/weight_space/test_subset_difficulty.md``), so the default zoo's figures
understate the comparable ones.

Before each run the study prints an estimate of its time: seconds per training INR and epoch (and per evaluated
INR) from this study's own records of the same encoder and device when there are any, else from the main table's
one-thread CPU timings (``CPU_MS_PER_INR_EPOCH``). Existing records are skipped (resumable; ``--force`` reruns).

Outputs in ``--results`` (default ``results/weight_space``), rebuilt from every record in ``--out`` (default
``runs/inr-scaling``) of the data set and epoch setting: ``inr_scaling_<dataset>.md`` / ``.json`` (``_e<epochs>``
after the data set for a non-default ``--epochs``; per encoder and size: mean ± sample std of the test accuracy over
the seeds present, the seeds, training seconds per run; a least-squares trend in points per doubling of the training
INRs) and ``inr_scaling_<dataset>.png`` (test accuracy against training INRs on a log axis, one line per encoder,
error bars where there is more than one seed, the published figures of the same data set as dashed lines and the
issue's target as a dotted one). The runs folder is not committed, so a later session has only its own records: the
rows of the existing JSON that no record covers are kept as they were, marked ``*`` in the table (``--no-carry``
drops them).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from experiments import RESULTS
from experiments.dng_ablation import _no_nan, _pts, _train_sec, add_run_arguments, row_cells
from tasks.weight_space.task_report import base_encoder, display_name, encoder_colour, mean_std

TASK = "classify"
DATASETS = ("mnist", "fmnist", "cifar10")
DATASET_NAMES = {"mnist": "MNIST", "fmnist": "Fashion-MNIST"}
ENCODERS = ("dng", "ng-gnn")
SIZES = (500, 1000, 2500, 5000, 10000)
SEEDS = (0,)
OUT = Path("runs/inr-scaling")
RESULTS_DIR = RESULTS / "weight_space"
TAG_RE = re.compile(r"^n(?P<size>\d+)(?:-e(?P<epochs>\d+))?(?:-t(?P<test>\d+))?$")

# Training milliseconds per INR and epoch on one CPU thread (128 probe points, hidden 32, depth 2; batch 64): the
# main table's sec/epoch at 2,500 training INRs (results/weight_space.md) / 2,500. Evaluation (val after every
# epoch, test once) costs about EVAL_FRACTION of that per INR (from the main runs' total vs training seconds).
CPU_MS_PER_INR_EPOCH = {"ng-gnn": 11.6, "ng-t": 9.5, "dng": 2.5, "nfn": 1.6, "mlp": 0.16, "statnn": 0.12}
EVAL_FRACTION = 0.4
ZOO_INRS_PER_SEC = 35.0  # SIREN fitting on one CPU core (100 Adam steps per INR)


@dataclass(frozen=True)
class Reference:
    """A published accuracy (%), drawn as a horizontal line; ``encoder``: whose line colour it takes (or None)."""

    value: float
    label: str
    encoder: str | None = None
    kind: str = "published"  # "published" (dashed) or "target" (dotted)


# Published INR classification accuracies (encoder alone), per data set, and the targets.
PUBLISHED = {
    "mnist": (Reference(96.6, "DNG, DNG paper (Wu et al., TMLR 2026)", "dng"),
              Reference(79.6, "NG-GNN, DNG paper's comparison", "ng-gnn"),
              Reference(83.4, "NG-T, DNG paper's comparison", "ng-t"),
              Reference(97.0, "target, GitHub issue 19", None, "target")),
    "fmnist": (Reference(78.4, "DNG, DNG paper (Wu et al., TMLR 2026)", "dng"),
               Reference(71.1, "NG-GNN, DNG paper's comparison", "ng-gnn"),
               Reference(72.1, "NG-T, DNG paper's comparison", "ng-t"),
               Reference(80.0, "target, GitHub issue 19", None, "target")),
    "cifar10": (Reference(54.0, "DNG, DNG paper (Wu et al., TMLR 2026)", "dng"),
                Reference(43.9, "NG-GNN, DNG paper's comparison", "ng-gnn"),
                Reference(44.7, "NG-T, DNG paper's comparison", "ng-t"),
                Reference(55.0, "target, GitHub issue 19", None, "target")),
}


# ---------------------------------------------------------------------------------------------------------- specs
def default_epochs() -> int:
    from tasks.weight_space.task_runs import TASK_DEFAULTS

    return int(TASK_DEFAULTS[TASK]["epochs"])


def size_tag(size: int, epochs: int | None = None, test: int | None = None) -> str:
    """The ``RunSpec.tag`` of a size: ``n<size>``, plus ``-e<epochs>`` when ``epochs`` is not the task's default,
    plus ``-t<test>`` for runs tested on ``test`` INRs of the full zoo (``--full-zoo``) instead of the 2,000."""
    if size <= 0:
        raise ValueError(f"a training-set size must be positive, got {size}")
    tag = f"n{size}" if epochs is None or epochs == default_epochs() else f"n{size}-e{epochs}"
    return tag + (f"-t{test}" if test else "")


def full_zoo_sizes(dataset: str) -> dict[str, int]:
    """``build_inr_zoo``'s split sizes for one INR per image: the whole "train" and "val" splits and the official
    test set (MNIST / Fashion-MNIST 50,000 / 10,000 / 10,000; CIFAR-10 45,000 / 5,000 / 10,000)."""
    from tasks.data import dataset_info

    info = dataset_info(dataset)
    return {"n_train": info.train_count - info.val_count, "n_val": info.val_count, "n_test": info.test_count}


def run_spec(dataset: str, encoder: str, size: int, seed: int, budget: dict | None = None,
             full_test: int | None = None):
    """The ``RunSpec`` of one point: the task defaults, ``train_size=size``, the size tag, then ``budget`` (the
    command line's ``epochs`` / ``val_size`` / ``test_size`` / model options; None values are ignored).
    ``full_test``: the test INRs of the full zoo (``full_zoo_sizes``), named in the tag."""
    from tasks.weight_space.task_runs import default_spec

    return default_spec(TASK, dataset, encoder, seed, **_settings(size, budget, full_test))


def _settings(size: int, budget: dict | None, full_test: int | None = None) -> dict:
    budget = {k: v for k, v in (budget or {}).items() if v is not None}
    return {**budget, "train_size": size, "tag": size_tag(size, budget.get("epochs"), full_test)}


def _tested(n_test: int, budget: dict | None) -> int:
    """The test INRs a full-zoo run evaluates: the zoo's test split, or ``--test-size`` of it when that is smaller
    (the ``-t<N>`` tag names what was tested)."""
    cap = (budget or {}).get("test_size")
    return min(n_test, cap) if cap else n_test


def _cache_key(spec) -> tuple:
    """The key under which ``run_many`` keeps a spec's task data in its ``data_cache`` (checked by the tests)."""
    return (spec.task, spec.dataset, spec.train_size, spec.val_size, spec.test_size)


def zoo_defaults() -> dict[str, int]:
    """The split sizes of the cached zoo that ``load_task_data`` uses (``build_inr_zoo``'s defaults)."""
    from tasks.weight_space.inr_zoo import build_inr_zoo

    params = inspect.signature(build_inr_zoo).parameters
    return {k: int(params[k].default) for k in ("n_train", "n_val", "n_test")}


def max_train_size(dataset: str) -> int:
    """Training images of the data set's "train" split (the official training set less the val carve-out)."""
    from tasks.data import dataset_info

    info = dataset_info(dataset)
    return info.train_count - info.val_count


def big_zoo_train_size(sizes) -> int | None:
    """``n_train`` of the zoo the sizes beyond the default zoo need (the largest size), or None when none does."""
    top = max(sizes)
    return top if top > zoo_defaults()["n_train"] else None


# ---------------------------------------------------------------------------------------------------------- estimates
def calibration(records: list[dict], device: str = "cpu") -> dict[str, tuple[float, float, str]]:
    """Run label without its size tag -> (ms per training INR-epoch, ms per evaluated INR, source), from the
    study's records on ``device``'s type (the largest training set of each encoder wins)."""
    import torch

    kind = torch.device(device).type
    best: dict[str, tuple[int, tuple[float, float, str]]] = {}
    for r in records:
        parsed = _parse(r)
        if parsed is None or torch.device(r.get("device", "cpu")).type != kind:
            continue
        label, _, _ = parsed
        n, done = int(r["train_size"]), int(r["epochs"])
        train = _train_sec(r)
        evaluated = int(r["val_size"]) * done + int(r["test_size"])
        if n <= 0 or done <= 0:
            continue
        ms = 1000 * train / (n * done)
        ev = 1000 * max(0.0, float(r.get("total_sec", train)) - train) / max(1, evaluated)
        if label not in best or n > best[label][0]:
            best[label] = (n, (ms, ev, f"this study's {label} record at {n} INRs"))
    return {k: v for k, (_, v) in best.items()}


def estimate_seconds(spec, calib: dict | None = None, device: str = "cpu", n_val: int = 1000,
                     n_test: int = 2000) -> tuple[float | None, str]:
    """(estimated seconds of one run, where the figure comes from); None when nothing is known for ``device``."""
    import torch

    from tasks.weight_space.task_runs import DEFAULT_DEPTH, DEFAULT_HIDDEN

    base_label = _strip_tag(spec.label, spec.tag)
    known = (calib or {}).get(base_label)
    if known is not None:
        ms, ev, source = known
    elif torch.device(device).type == "cpu" and spec.encoder in CPU_MS_PER_INR_EPOCH:
        ms = CPU_MS_PER_INR_EPOCH[spec.encoder]
        ev, source = EVAL_FRACTION * ms, "the main table's one-thread CPU timings"
        if (spec.hidden, spec.depth) != (DEFAULT_HIDDEN, DEFAULT_DEPTH):
            source += f" of hidden {DEFAULT_HIDDEN} / depth {DEFAULT_DEPTH} (a larger encoder takes longer)"
    else:
        return None, f"no timing of {base_label} on {device} yet"
    val = min(spec.val_size or n_val, n_val)
    test = min(spec.test_size or n_test, n_test)
    return (ms * spec.train_size * spec.epochs + ev * (val * spec.epochs + test)) / 1000, source


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _fmt_sec(sec: float | None) -> str:
    if sec is None:
        return "n/a"
    return f"{sec:.0f} s" if sec < 90 else (f"{sec / 60:.1f} min" if sec < 5400 else f"{sec / 3600:.1f} h")


# ---------------------------------------------------------------------------------------------------------- running
def plan(dataset: str = "mnist", encoders=ENCODERS, sizes=SIZES, seeds=SEEDS, budget: dict | None = None,
         full: bool = False) -> list:
    """``(size, seed, encoder, spec)`` of every run, sizes ascending (outermost), then seeds, then encoders.
    ``full``: every run uses the full zoo and is tested on all its test INRs (the official test set)."""
    full_test = _tested(full_zoo_sizes(dataset)["n_test"], budget) if full else None
    return [(size, seed, enc, run_spec(dataset, enc, size, seed, budget, full_test))
            for size in sorted(set(sizes)) for seed in seeds for enc in encoders]


def zoo_sizes(dataset: str, sizes, full: bool = False) -> dict[str, int]:
    """``build_inr_zoo``'s split sizes for the largest of ``sizes``: the full zoo, the default one, or the default
    one with ``n_train`` = the largest size."""
    if full:
        return full_zoo_sizes(dataset)
    return {**zoo_defaults(), "n_train": big_zoo_train_size(sizes) or zoo_defaults()["n_train"]}


def describe_plan(runs: list, out: Path, device: str = "cpu", force: bool = False,
                  zoo: dict[str, int] | None = None) -> tuple[float, list[str]]:
    """(estimated seconds of the runs still to do, one line per run) from the records already in ``out``;
    ``zoo``: the split sizes of the zoo the runs use (default: the default zoo's)."""
    from tasks.weight_space.task_report import collect
    from tasks.weight_space.task_runs import record_path

    calib = calibration(collect(out), device) if Path(out).is_dir() else {}
    zoo = zoo or zoo_defaults()
    total, lines = 0.0, []
    for i, (size, seed, enc, spec) in enumerate(runs, 1):
        exists = record_path(out, spec).exists() and not force
        sec, source = estimate_seconds(spec, calib, device, zoo["n_val"], zoo["n_test"])
        if not exists:
            total += sec or 0.0
        lines.append(f"[{i}/{len(runs)}] n={size} seed {seed} {enc}: {spec.label}, {_n(spec.epochs, 'epoch')} x "
                     f"{math.ceil(size / spec.batch_size)} steps/epoch; "
                     + ("exists" if exists else f"estimate {_fmt_sec(sec)} ({source})"))
    return total, lines


def _zoo_note(dataset: str, n_train: int, root: str | None, zoo: dict[str, int] | None = None) -> str | None:
    """A line about the zoo fitting a run will start with, or None when the zoo is cached; ``zoo``: its val /
    test sizes (default: the default zoo's)."""
    from tasks.weight_space.inr_zoo import zoo_path

    zoo = zoo or zoo_defaults()
    try:
        if zoo_path(dataset, root, n_train, zoo["n_val"], zoo["n_test"]).is_file():
            return None
    except Exception:  # no data root: the run itself will say so
        return None
    n = n_train + zoo["n_val"] + zoo["n_test"]
    return (f"the {dataset} INR zoo with {n_train:,} training INRs, {zoo['n_val']:,} val and {zoo['n_test']:,} test "
            f"is not cached: fitting {n:,} INRs first, "
            f"~{_fmt_sec(n / ZOO_INRS_PER_SEC)} at ~{ZOO_INRS_PER_SEC:.0f} INRs/s on one CPU core (resumable)")


def run_study(dataset: str = "mnist", encoders=ENCODERS, sizes=SIZES, seeds=SEEDS, out: Path = OUT,
              device: str = "cpu", root: str | None = None, budget: dict | None = None, progress: bool = True,
              force: bool = False, full: bool = False) -> list[Path]:
    """Every (size, seed, encoder) (sizes outermost, smallest first), skipping existing records; returns the
    record paths. Sizes beyond the default zoo use a zoo fitted with ``n_train`` = the largest size; with ``full``
    every size uses the full zoo (``full_zoo_sizes``) and its whole test split."""
    from meta_train.pipelines.weight_space import run_many
    from tasks.weight_space.task_report import collect
    from tasks.weight_space.task_runs import inr_task_data, record_path

    runs = plan(dataset, encoders, sizes, seeds, budget, full)  # bad settings fail here, before any data is loaded
    zoo = zoo_sizes(dataset, sizes, full)
    default_n, big_n = (0 if full else zoo_defaults()["n_train"]), zoo["n_train"]
    # named in the tag: run_many makes its spec (and record name) again
    full_test = _tested(zoo["n_test"], budget) if full else None
    cache: dict = {}  # the task data of the current size, loaded once for its runs
    big_zoo, current, noted = None, None, set()
    paths = []
    for i, (size, seed, enc, spec) in enumerate(runs, 1):
        path = record_path(out, spec)
        todo = force or not path.exists()
        if size != current:  # a new size: drop the previous size's data
            cache.clear()
            current = size
        if todo and size > default_n and _cache_key(spec) not in cache:
            if big_zoo is None:
                from tasks.weight_space.inr_zoo import InrZoo, build_inr_zoo

                note = _zoo_note(dataset, big_n, root, zoo)
                if note:
                    print(f"note: {note}", flush=True)
                micro = 1024 if str(device).startswith("cuda") else None  # GPU: larger micro-batches
                big_zoo = InrZoo.load(build_inr_zoo(dataset, root, device=device, **zoo,
                                                    **({"micro_batch": micro} if micro else {})))
            cache[_cache_key(spec)] = inr_task_data(big_zoo, TASK, spec.train_size, spec.val_size, spec.test_size)
        elif todo and size <= default_n and "default" not in noted:
            noted.add("default")
            note = _zoo_note(dataset, default_n, root)
            if note:
                print(f"note: {note}", flush=True)
        if todo:
            calib = calibration(collect(out), device) if Path(out).is_dir() else {}
            sec, source = estimate_seconds(spec, calib, device, zoo["n_val"], zoo["n_test"])
            state = f"running, estimate {_fmt_sec(sec)} ({source})"
        else:
            state = "exists, skipped"
        print(f"[{i}/{len(runs)}] n={size} seed {seed} {enc}: {spec.label}, {_n(spec.epochs, 'epoch')} x "
              f"{math.ceil(size / spec.batch_size)} steps/epoch ({state})", flush=True)
        t0 = time.time()
        paths += run_many([(TASK, dataset)], [enc], [seed], out, {}, force, root, progress,
                          item_overrides=_settings(size, budget, full_test), device=device,
                          data_cache=cache)
        if todo and path.exists():
            rec = json.loads(path.read_text())
            warn = "" if rec["train_size"] == size else f"; WARNING: trained on {rec['train_size']} INRs, not {size}"
            print(f"[{i}/{len(runs)}] n={size} seed {seed} {enc}: test accuracy {100 * rec['metrics']['accuracy']:.2f} "
                  f"% ({time.time() - t0:.0f} s{warn})", flush=True)
    return paths


# ---------------------------------------------------------------------------------------------------------- table
def _strip_tag(label: str, tag: str) -> str:
    return label[: -len(tag) - 1] if tag and label.endswith("+" + tag) else label


def _parse(rec: dict) -> tuple[str, int, int] | None:
    """(label without the size tag, size, epochs) of a study record, or None for any other record. A run tested
    on the full zoo's test split keeps ``+test<N>`` in its label: a different test set makes a different row."""
    tag = (rec.get("config") or {}).get("tag") or ""
    m = TAG_RE.match(tag)
    if rec.get("task") != TASK or m is None:
        return None
    epochs = int(m["epochs"]) if m["epochs"] else default_epochs()
    label = _strip_tag(rec["encoder"], tag) + (f"+test{m['test']}" if m["test"] else "")
    return label, int(m["size"]), epochs


def _encoder_order(label: str) -> tuple:
    from tasks.weight_space.task_report import _sort_key

    return _sort_key(label)


def trend(rows: list[dict]) -> float:
    """Least-squares slope of the mean accuracy (fraction) on log2(size): accuracy gained per doubling of the
    training INRs (NaN with fewer than two sizes)."""
    pts = [(math.log2(r["size"]), r["accuracy_mean"]) for r in rows if not math.isnan(r["accuracy_mean"])]
    if len({x for x, _ in pts}) < 2:
        return float("nan")
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def summarize(records: list[dict], dataset: str, epochs: int | None = None, earlier: list[dict] = ()) -> dict:
    """Records -> the study's table for ``dataset`` at ``epochs`` (default: the task's): one row per encoder label
    and size (encoders in the main table's order, sizes ascending) over the seeds present (one record per seed:
    a later duplicate is ignored). Accuracies are fractions; the markdown shows percentages.

    ``earlier``: rows of a previous table of the same data set and epochs. Each (encoder, size) that no record
    covers is kept as it was, marked ``"carried": True`` (the runs folder is not committed, so a later session
    that adds sizes has only its own records)."""
    epochs = default_epochs() if epochs is None else int(epochs)
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for r in records:
        parsed = _parse(r)
        if parsed is None or r.get("dataset") != dataset or parsed[2] != epochs:
            continue
        label, size, _ = parsed
        groups.setdefault((label, size), {}).setdefault(int(r["seed"]), r)
    rows = []
    for (label, size), by_seed in sorted(groups.items(), key=lambda kv: (_encoder_order(kv[0][0]), kv[0][1])):
        recs = [rec for _, rec in sorted(by_seed.items())]
        accs = [r["metrics"].get("accuracy") for r in recs]
        mean, std = mean_std(accs)
        rows.append({
            "encoder": label, "model": base_encoder(label), "name": display_name(label), "size": size,
            "train_sizes": sorted({int(r["train_size"]) for r in recs}),
            "seeds": [int(r["seed"]) for r in recs], "n_seeds": len(recs), "accuracies": accs,
            "accuracy_mean": mean, "accuracy_std": std,
            "train_sec_per_run": mean_std([_train_sec(r) for r in recs])[0],
            "total_sec_per_run": mean_std([r.get("total_sec", float("nan")) for r in recs])[0],
            "sec_per_epoch": mean_std([r.get("sec_per_epoch", float("nan")) for r in recs])[0],
            "epochs_done": max(int(r["epochs"]) for r in recs), "params": recs[0].get("params"),
            "records": [Path(r["_path"]).name for r in recs if "_path" in r],
        })
    have = {(r["encoder"], r["size"]) for r in rows}
    rows += [{**r, "carried": True} for r in earlier if (r["encoder"], r["size"]) not in have]
    rows.sort(key=lambda r: (_encoder_order(r["encoder"]), r["size"]))
    used = [rec for by_seed in groups.values() for rec in by_seed.values()]
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    trends = {}
    for enc in encoders:
        mine = [r for r in rows if r["encoder"] == enc]
        last = mine[-1]
        refs = [ref for ref in PUBLISHED.get(dataset, ()) if ref.encoder == last["model"] and ref.kind == "published"]
        trends[enc] = {"points_per_doubling": 100 * trend(mine), "largest_size": last["size"],
                       "accuracy_at_largest": last["accuracy_mean"],
                       "gap_to_published": [{"label": ref.label, "published": ref.value,
                                             "gap_points": 100 * last["accuracy_mean"] - ref.value} for ref in refs]}
    return {"task": TASK, "dataset": dataset, "epochs": epochs, "rows": rows, "trends": trends,
            "published": [{"value": ref.value, "label": ref.label, "encoder": ref.encoder, "kind": ref.kind}
                          for ref in PUBLISHED.get(dataset, ())],
            "setup": setup(used), "note": setup_note(used, dataset)}


def setup(records: list[dict]) -> dict:
    """The distinct settings of ``records`` (for the figure's title and the JSON)."""
    def vals(get) -> list:
        return sorted({get(r) for r in records}, key=str)

    cfg = lambda key: (lambda r: (r.get("config") or {}).get(key))  # noqa: E731
    probed = [r for r in records if (r.get("config") or {}).get("probes", 0) and base_encoder(r["encoder"]) in
              ("ng-gnn", "ng-t", "dng", "nfn")]
    return {"hidden": vals(cfg("hidden")), "depth": vals(cfg("depth")), "batch_size": vals(cfg("batch_size")),
            "lr": vals(cfg("lr")), "probes": sorted({r["config"]["probes"] for r in probed}),
            "val_size": vals(lambda r: r.get("val_size")), "test_size": vals(lambda r: r.get("test_size")),
            "device": vals(lambda r: r.get("device", "cpu")), "threads": vals(lambda r: r.get("torch_threads")),
            "zoo": vals(lambda r: Path((r.get("data") or {}).get("zoo") or "?").name), "runs": len(records)}


def _join(values: list) -> str:
    return " / ".join(str(v) for v in values) if len(values) == 1 else "mixed: " + ", ".join(str(v) for v in values)


def setup_note(records: list[dict], dataset: str) -> str:
    """One line on the evaluation splits, training settings, encoder size, device, threads and zoo of ``records``."""
    if not records:
        return "No records yet."
    s = setup(records)
    return (f"{DATASET_NAMES.get(dataset, dataset)} INR classification: {_join(s['val_size'])} val / "
            f"{_join(s['test_size'])} test INRs at every size, batch {_join(s['batch_size'])}, lr {_join(s['lr'])}; "
            f"encoders hidden {_join(s['hidden'])}, depth {_join(s['depth'])}"
            + (f", {_join(s['probes'])} probe points (graph encoders)" if s["probes"] else "")
            + f"; device {_join(s['device'])}, {_join(s['threads'])} torch thread(s); zoo {_join(s['zoo'])}; "
            f"{s['runs']} runs.")


def markdown(table: dict, figure: str | None = None) -> str:
    ds = DATASET_NAMES.get(table["dataset"], table["dataset"])
    flag = "" if table["epochs"] == default_epochs() else f" --epochs {table['epochs']}"
    out = [f"# INR classification against the number of training INRs: {ds}", "",
           f"Produced by `python -m experiments.inr_scaling --dataset {table['dataset']}{flag}` (GitHub issue 19): one "
           f"run per encoder, training-set size and seed, the task's defaults otherwise "
           f"({_n(table['epochs'], 'epoch')} at every size, so the optimisation steps grow with the size); the same "
           "validation and test INRs at every size. Test accuracy, mean ± sample std over the seeds present; "
           "train s/run: training time of one run (epochs only, mean over seeds).", ""]
    if figure:
        out += [f"![test accuracy against training INRs]({figure})", ""]
    out += ["| encoder | run label | train INRs | test accuracy % | seeds | train s/run | s/epoch | params |",
            "|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        acc, train, epoch, params = row_cells(r)
        size = f"{r['size']:,}" + ("" if r["train_sizes"] == [r["size"]] else
                                   f" (trained on {', '.join(f'{n:,}' for n in r['train_sizes'])})")
        seeds = f"{r['n_seeds']} ({', '.join(str(s) for s in r['seeds'])})" + (" *" if r.get("carried") else "")
        out.append(f"| {r['name']} | `{r['encoder']}+{size_tag(r['size'], table['epochs'])}` | {size} | {acc} | "
                   f"{seeds} | {train} | {epoch} | {params} |")
    if not table["rows"]:
        out.append("| (no records yet) | | | | | | | |")
    out += [""]
    if any(r.get("carried") for r in table["rows"]):
        out += ["\\* kept from the previous table: its records were written by an earlier session and are not in "
                "the runs folder now (the set-up line below describes this session's records only).", ""]
    if table["published"]:
        out += ["Reference lines in the figure: " + "; ".join(
            f"{p['label']}: {p['value']:.1f} %" for p in table["published"]) + ".", ""]
    lines = []
    for enc, t in table["trends"].items():
        line = f"- {display_name(enc)}: {_pts(t['accuracy_at_largest'])} % at {t['largest_size']:,} training INRs"
        if not math.isnan(t["points_per_doubling"]):
            line += f", {t['points_per_doubling']:+.2f} points per doubling (least squares over the sizes present)"
        for g in t["gap_to_published"]:
            line += f"; {g['gap_points']:+.2f} points from {g['label']} ({g['published']:.1f} %)"
        lines.append(line + ".")
    if lines:
        out += ["Trend (descriptive only; no extrapolation):", ""] + lines + [""]
    out += [f"Set-up: {table['note']}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------- figure
def figure(table: dict, path: Path) -> Path:
    """Test accuracy (%) against training INRs (log x axis): one line per encoder (error bars: sample std where
    more than one seed), the published figures of the data set as dashed lines, the issue's target dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7.8, 4.6))
    encoders = list(dict.fromkeys(r["encoder"] for r in table["rows"]))
    sizes = sorted({r["size"] for r in table["rows"]})
    handles = []  # the encoders' lines first, then the reference lines
    for i, enc in enumerate(encoders):
        rows = [r for r in table["rows"] if r["encoder"] == enc and not math.isnan(r["accuracy_mean"])]
        xs = [r["size"] for r in rows]
        ys = [100 * r["accuracy_mean"] for r in rows]
        err = [100 * r["accuracy_std"] if r["n_seeds"] > 1 else 0.0 for r in rows]
        seeds = sorted({r["n_seeds"] for r in rows}) or [0]
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        label = display_name(enc) + f", {count} seed{'' if count == '1' else 's'}"
        kw = dict(color=encoder_colour(rows[0]["model"] if rows else enc, i), lw=1.8, marker="o", ms=5, label=label)
        if any(e > 0 for e in err):
            handles.append(ax.errorbar(xs, ys, yerr=err, capsize=3, **kw))
        else:
            handles += ax.plot(xs, ys, **kw)
    for j, ref in enumerate(table["published"]):
        colour = "black" if ref["encoder"] is None else encoder_colour(ref["encoder"], len(encoders) + j)
        handles.append(ax.axhline(ref["value"], color=colour, lw=1.2, ls=":" if ref["kind"] == "target" else "--",
                                  alpha=0.85, label=f"{ref['label']}: {ref['value']:.1f} %"))
    ax.set_xscale("log")
    sizes = sizes or list(SIZES)  # no records yet: the default sizes' axis
    if sizes:
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{s:,}" for s in sizes])
        ax.set_xlim(sizes[0] / 1.25, sizes[-1] * 1.25)
    ax.set_xlabel("training INRs (count, log scale)", fontsize=10)
    ax.set_ylabel("test accuracy (%)", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(alpha=0.3)
    s = table["setup"]
    ds = DATASET_NAMES.get(table["dataset"], table["dataset"])
    if table["rows"]:
        detail = (f"encoders hidden {_join(s['hidden'])}, depth {_join(s['depth'])}"
                  + (f", {_join(s['probes'])} probes" if s["probes"] else "")
                  + f"; device {_join(s['device'])}, {_join(s['threads'])} thread(s)")
    else:
        detail = "no records yet"
    ax.set_title(f"INR classification, {ds}: test accuracy vs training INRs\n{_n(table['epochs'], 'epoch')} per run, "
                 f"{detail}", fontsize=10)
    labels = [h.get_label() for h in handles]
    width = fig.get_size_inches()[0]
    legend_w = 3.2
    fig.set_size_inches(width + legend_w, fig.get_size_inches()[1])
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, width / (width + legend_w), 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def output_stem(dataset: str, epochs: int) -> str:
    """``inr_scaling_<dataset>``, with ``_e<epochs>`` when ``epochs`` is not the task's default."""
    return f"inr_scaling_{dataset}" + ("" if epochs == default_epochs() else f"_e{epochs}")


def write_outputs(out: Path = OUT, results: Path = RESULTS_DIR, dataset: str = "mnist",
                  epochs: int | None = None, carry: bool = True) -> dict:
    """Aggregate the records in ``out`` into ``results/inr_scaling_<dataset>.{md,json,png}`` (``_e<epochs>`` after
    the data set when ``epochs`` is not the task's default); returns the table.
    With ``carry``, the rows of the existing JSON (same epochs) that no record in ``out`` covers are kept."""
    from tasks.weight_space.task_report import collect

    epochs = default_epochs() if epochs is None else int(epochs)
    stem = output_stem(dataset, epochs)
    previous = Path(results) / f"{stem}.json"
    earlier = json.loads(previous.read_text()) if carry and previous.is_file() else {}
    rows = earlier.get("rows", []) if earlier.get("epochs") == epochs else []
    table = summarize(collect(out) if Path(out).is_dir() else [], dataset, epochs, rows)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    png = figure(table, results / f"{stem}.png")
    table["figure"] = png.name
    (results / f"{stem}.json").write_text(json.dumps(_no_nan(table), indent=1) + "\n")
    (results / f"{stem}.md").write_text(markdown(table, png.name))
    return table


# ------------------------------------------------------------------------------------------------------ command line
def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from tasks.weight_space.task_runs import MODELS

    ap = argparse.ArgumentParser(prog="python -m experiments.inr_scaling", description=__doc__.split("\n")[0])
    ap.add_argument("stage", nargs="?", default="run", choices=("run", "report", "plan"),
                    help="run: the runs not recorded yet, then the outputs (default); report: only the outputs from "
                         "the records in --out; plan: only list the runs and their time estimates")
    ap.add_argument("--dataset", default="mnist", choices=DATASETS)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=MODELS,
                    help="encoders to run (the outputs list every encoder recorded in --out)")
    ap.add_argument("--sizes", type=_positive, nargs="+", default=list(SIZES),
                    help="training INRs per run (run smallest first; default %(default)s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--epochs", type=_positive, default=None,
                    help="epochs at every size (default: the task's, 5); also selects the records the outputs use")
    add_run_arguments(ap, OUT, "inr_scaling_<dataset>.{md,json,png}")
    ap.add_argument("--no-carry", action="store_true",
                    help="outputs from the records in --out only (default: the existing table's rows that no record "
                         "covers are kept, marked *)")
    ap.add_argument("--hidden", type=_positive, default=None,
                    help="encoder width (default: the task's, 32); a non-default size is part of the run label")
    ap.add_argument("--depth", type=_positive, default=None, help="encoder layers (default: the task's, 2)")
    ap.add_argument("--dropout", type=float, default=None,
                    help="dropout in the classifier head (default 0; a non-zero value is part of the run label)")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="AdamW weight decay (default 1e-4; another value is part of the run label)")
    ap.add_argument("--aux-recon", type=float, default=None,
                    help="weight of the INR2JLS-style reconstruction loss (an image decoder on the pooled encoding; "
                         "default 0: plain classification; a positive weight adds +recon to the run label)")
    ap.add_argument("--jls", action="store_true",
                    help="INR2JLS: train in a latent space shared with the images (an image CNN, one head and one "
                         "decoder for both; the test sees the weights only); adds +jls to the run label")
    ap.add_argument("--jls-distill", action="store_true",
                    help="INR2JLS with the alignment's gradient stopped at the image latent (the weights distil it; "
                         "implies --jls; label +jlsd)")
    ap.add_argument("--jls-align", type=float, default=None,
                    help="with --jls: weight of the alignment MSE between the weights' and the images' latents "
                         "(default 1; another value adds +align<w> to the run label)")
    ap.add_argument("--full-zoo", action="store_true",
                    help="use the zoo of every image (MNIST: 50,000 / 10,000 / 10,000 INRs; fitted first if not "
                         "cached) and test on its whole test split, the official test set as the published figures "
                         "do (default: the first 2,000 test images; the label gets +test<N>)")
    for flag in ("--val-size", "--test-size"):
        ap.add_argument(flag, type=_positive, default=None,
                        help="cap the split (the records are not named by it: use another --out; the report keeps "
                             "two val sizes apart)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    budget = {"epochs": args.epochs, "val_size": args.val_size, "test_size": args.test_size,
              "hidden": args.hidden, "depth": args.depth, "dropout": args.dropout,
              "weight_decay": args.weight_decay, "aux_recon": args.aux_recon,
              "jls": (args.jls or args.jls_distill) or None, "jls_distill": args.jls_distill or None,
              "jls_align": args.jls_align}
    sizes = sorted(set(args.sizes))
    if args.stage in ("run", "plan"):
        limit = max_train_size(args.dataset)
        if sizes[-1] > limit:
            ap.error(f"--sizes: {args.dataset} has {limit:,} training images, so at most {limit:,} training INRs")
        from tasks.devices import device_or_exit

        device = str(device_or_exit(ap, args.device))
        try:  # a bad model setting (RunSpec's checks) is a usage error, before any run
            runs = plan(args.dataset, args.encoders, sizes, args.seeds, budget, args.full_zoo)
        except ValueError as exc:
            ap.error(str(exc))
        zoo = zoo_sizes(args.dataset, sizes, args.full_zoo)
        total, lines = describe_plan(runs, args.out, device, args.force, zoo)
        epochs = runs[0][3].epochs
        print(f"INR scaling, {args.dataset}: {len(runs)} runs ({_n(len(sizes), 'size')} x "
              f"{_n(len(args.seeds), 'seed')} x {_n(len(args.encoders), 'encoder')}), {_n(epochs, 'epoch')} at "
              f"every size; estimated {_fmt_sec(total)} for the runs still to do (without zoo fitting)", flush=True)
        default_n = 0 if args.full_zoo else zoo_defaults()["n_train"]
        for zoo_n in sorted({default_n if s <= default_n else zoo["n_train"] for s in sizes}):
            note = _zoo_note(args.dataset, zoo_n, args.data_root, None if zoo_n == default_n else zoo)
            if note:
                print(f"note: {note}", flush=True)
        if args.stage == "plan":
            print("\n".join(lines))
            return
        import torch

        torch.set_num_threads(args.threads)
        run_study(args.dataset, args.encoders, sizes, args.seeds, args.out, device=device, root=args.data_root,
                  budget=budget, progress=not args.quiet, force=args.force, full=args.full_zoo)
    table = write_outputs(args.out, args.results, args.dataset, args.epochs, carry=not args.no_carry)
    for r in table["rows"]:
        print(f"{r['encoder']:24s} n={r['size']:<6d} {_pts(r['accuracy_mean']):>6s} ± {_pts(r['accuracy_std']):>5s} "
              f"({_n(r['n_seeds'], 'seed')})")
    stem = args.results / output_stem(args.dataset, table["epochs"])
    print(f"-> {stem}.md, {stem}.json, {stem}.png")


if __name__ == "__main__":
    main()
