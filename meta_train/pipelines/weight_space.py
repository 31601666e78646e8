"""``python -m meta_train weight-space {classify,edit,generalization,report,all}``: weight-space tasks on the encoders.

Each (task, dataset, model, seed) is one run of ``tasks.weight_space.task_runs.run`` writing
``<out>/<task>-<dataset>-<model label>-s<seed>.json``; an existing record is skipped unless ``--force`` (so ``all``
resumes where it stopped). ``report`` aggregates the records into ``<results>/weight_space.{json,md}`` and figures in
``<results>/weight_space/``, with the records of ``--also-records`` folders beside those of ``--out`` (the scaled
studies: ``runs/inr-scaling``, ``runs/edit-scale``). ``all`` runs ``ALL_PLAN`` (every task / data set below x every
model x seeds), seeds outermost so that an interrupted ``all`` still has every task covered, then ``EXTRA_PLAN``
(every seed too: longer runs of the cheapest encoders, no-probe and reconstruction-loss variants), then ``report``.

``--encoder-option KEY=VALUE`` (repeatable) sets a graph encoder's constructor option (``RunSpec.encoder_options``;
e.g. ``--encoder dng --encoder-option recurrence=rnn``); runs with options are labelled
``<encoder>[KEY=VALUE,...]`` (keys sorted), so they never overwrite the runs without. Every encoder asked for must
take the options (checked before any run).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tasks.weight_space.task_models import BASELINES, GRAPH_ENCODERS, EncoderOptionError, check_encoder_options
from tasks.weight_space.task_report import NOTES, write_report
from tasks.weight_space.task_runs import default_spec, load_task_data, record_path, run

__all__ = ["ALL_PLAN", "run_many", "encoder_options_from", "weight_space_main"]

# (task, dataset) pairs of `all`. Editing on MNIST (the INR zoo that classification uses too); generalization on the
# CIFAR-10 and Fashion-MNIST CNN zoos. Every model, every seed.
ALL_PLAN = (("classify", "mnist"), ("edit", "mnist"), ("generalization", "cifar10"), ("generalization", "fmnist"))
# Then, after all seeds of ALL_PLAN, at the same seeds: the two cheapest graph encoders on the whole MNIST INR train split
# (10,000) for longer, the attempt at the 95 % target that the budget allows (NG-GNN / NG-T cost 5-7x more); the
# same two without probe features; DNG with the INR2JLS-style reconstruction loss.
EXTRA_PLAN = (
    ("classify", "mnist", ("dng", "nfn"), {"train_size": 10000, "epochs": 10, "tag": "long"}),
    ("classify", "mnist", ("dng", "nfn"), {"probes": 0}),
    ("classify", "mnist", ("dng",), {"aux_recon": 1.0}),
)
DEFAULT_DATASET = {"classify": "mnist", "edit": "mnist", "generalization": "cifar10"}


def _models_for(task: str, models: list[str]) -> list[str]:
    return [m for m in models if not (task == "edit" and m == "statnn")]


def run_many(plan, models: list[str], seeds: list[int], out: Path, overrides: dict, force: bool = False,
             root: str | None = None, progress: bool = True, item_overrides: dict | None = None,
             device: str = "cpu", data_cache: dict | None = None) -> list[Path]:
    """Run every (task, dataset) x model x seed in ``plan`` (seeds outermost) on ``device``; skip existing records.

    Settings: the task defaults, then ``item_overrides``, then ``overrides`` (the command line; None = not given).
    Every spec is made before the first run, so a bad setting (e.g. an encoder option the encoder does not take)
    fails at once. A zoo that is not cached yet is fitted on ``device`` too. ``data_cache``: a dict to keep the
    loaded task data in across calls (one per call when None)."""
    cache: dict[tuple, object] = {} if data_cache is None else data_cache
    settings = {**(item_overrides or {}), **{k: v for k, v in overrides.items() if v is not None}}
    specs = [default_spec(task, dataset, model, seed, **settings)
             for seed in seeds for task, dataset in plan for model in _models_for(task, models)]
    done = []
    for spec in specs:
        path = record_path(out, spec)
        if path.exists() and not force:
            print(f"skip {path.name} (exists)", flush=True)
            done.append(path)
            continue
        key = (spec.task, spec.dataset, spec.train_size, spec.val_size, spec.test_size)
        if key not in cache:
            t0 = time.time()
            cache[key] = load_task_data(spec, root, device)
            print(f"loaded {spec.task}/{spec.dataset}: {len(cache[key].train)} train, {len(cache[key].val)} val, "
                  f"{len(cache[key].test)} test ({time.time() - t0:.1f} s)", flush=True)
        run(spec, data=cache[key], out_dir=out, progress=progress, root=root,
            log=lambda s: print(s, flush=True), device=device)
        done.append(path)
    return done


def encoder_options_from(pairs: list[tuple[str, object]] | None) -> dict | None:
    """``--encoder-option`` pairs -> the ``encoder_options`` dict (None when none were given); a key given twice
    with different values is an error."""
    if not pairs:
        return None
    options: dict = {}
    for key, value in pairs:
        if key in options and options[key] != value:
            raise EncoderOptionError(f"--encoder-option {key} given twice ({options[key]!r} and {value!r})")
        options[key] = value
    return options


def weight_space_main(args: argparse.Namespace) -> None:
    """``python -m meta_train weight-space <action>`` (the arguments are defined in ``meta_train/cli.py``)."""
    out = Path(args.out)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "hidden", "depth", "probes",
                                               "aux_recon", "train_size", "val_size", "test_size", "max_minutes")}
    if args.no_augment:
        overrides["augment"] = False
    if args.jls or args.jls_distill:
        overrides["jls"] = True
    if args.jls_distill:
        overrides["jls_distill"] = True
    if args.jls_align is not None:
        overrides["jls_align"] = args.jls_align
    if args.mixed_batches:
        overrides["mixed_batches"] = True
    models = args.encoder or list(GRAPH_ENCODERS + BASELINES)
    options = encoder_options_from(getattr(args, "encoder_option", None))
    if options and args.action != "report":
        overrides["encoder_options"] = options
        for model in models:  # before any run: every model asked for must take the options
            try:
                check_encoder_options(model, options, args.hidden or 32, args.depth or 2)
            except EncoderOptionError as exc:
                hint = "" if args.encoder else " (without --encoder every model runs: choose them with --encoder)"
                raise EncoderOptionError(f"--encoder-option: {exc}{hint}") from None
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    sources = [out, *[Path(p) for p in (getattr(args, "also_records", None) or [])]]
    for folder in sources[1:]:
        if not folder.is_dir():
            raise SystemExit(f"--also-records: {folder} is not a folder of run records (e.g. runs/inr-scaling, "
                             "written by `python -m experiments.inr_scaling`)")
    if args.action == "report":
        res = write_report(sources, args.results, notes=NOTES, carry=not args.no_carry)
        print(f"{res['records']} records -> {args.results}/weight_space.md, .json; figures {res['figures']}")
        return
    if args.action == "all":
        plan = ALL_PLAN if not args.dataset else tuple((t, d) for t, d in ALL_PLAN if d in args.dataset)
        run_many(plan, models, seeds, out, overrides, args.force, args.data_root, not args.quiet, device=args.device)
        if not args.no_extra:
            for task, dataset, long_models, item in EXTRA_PLAN:
                if args.dataset and dataset not in args.dataset:
                    continue
                run_many([(task, dataset)], [m for m in long_models if m in models], seeds, out, overrides,
                         args.force, args.data_root, not args.quiet, item_overrides=item, device=args.device)
        res = write_report(sources, args.results, notes=NOTES, carry=not args.no_carry)
        print(f"{res['records']} records -> {args.results}/weight_space.md, .json; figures {res['figures']}")
        return
    datasets = args.dataset or [DEFAULT_DATASET[args.action]]
    run_many([(args.action, d) for d in datasets], models, seeds, out, overrides, args.force, args.data_root,
             not args.quiet, device=args.device)
