"""``python -m meta_train weight-space {classify,edit,generalization,report,all}``: weight-space tasks on the encoders.

Each (task, dataset, model, seed) is one run of ``tasks.weight_space.task_runs.run`` writing
``<out>/<task>-<dataset>-<model label>-s<seed>.json``; an existing record is skipped unless ``--force`` (so ``all``
resumes where it stopped). ``report`` aggregates the records into ``<results>/weight_space.{json,md}`` and figures in
``<results>/weight_space/``. ``all`` runs ``ALL_PLAN`` (every task / data set below x every model x seeds), seeds
outermost so that an interrupted ``all`` still has every task covered, then ``EXTRA_PLAN`` (one seed each: longer
runs of the cheapest encoders, no-probe and reconstruction-loss variants), then ``report``.
"""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["ALL_PLAN", "run_many", "weight_space_main"]

# (task, dataset) pairs of `all`. Editing on MNIST (the INR zoo that classification uses too); generalization on the
# CIFAR-10 and Fashion-MNIST CNN zoos. Every model, every seed.
ALL_PLAN = (("classify", "mnist"), ("edit", "mnist"), ("generalization", "cifar10"), ("generalization", "fmnist"))
# Then, after all seeds of ALL_PLAN, one seed each: the two cheapest graph encoders on the whole MNIST INR train split
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
             root: str | None = None, progress: bool = True, item_overrides: dict | None = None) -> list[Path]:
    """Run every (task, dataset) x model x seed in ``plan`` (seeds outermost); skip existing records.

    Settings: the task defaults, then ``item_overrides``, then ``overrides`` (the command line; None = not given)."""
    from tasks.weight_space.task_runs import default_spec, load_task_data, record_path, run

    cache: dict[tuple, object] = {}
    done = []
    for seed in seeds:
        for task, dataset in plan:
            for model in _models_for(task, models):
                spec = default_spec(task, dataset, model, seed, **{**(item_overrides or {}),
                                                                   **{k: v for k, v in overrides.items() if v is not None}})
                path = record_path(out, spec)
                if path.exists() and not force:
                    print(f"skip {path.name} (exists)", flush=True)
                    done.append(path)
                    continue
                key = (task, dataset, spec.train_size, spec.val_size, spec.test_size)
                if key not in cache:
                    t0 = time.time()
                    cache[key] = load_task_data(spec, root)
                    print(f"loaded {task}/{dataset}: {len(cache[key].train)} train, {len(cache[key].val)} val, "
                          f"{len(cache[key].test)} test ({time.time() - t0:.1f} s)", flush=True)
                run(spec, data=cache[key], out_dir=out, progress=progress, root=root,
                    log=lambda s: print(s, flush=True))
                done.append(path)
    return done


def weight_space_main(args) -> None:
    from tasks.weight_space.task_models import BASELINES, GRAPH_ENCODERS
    from tasks.weight_space.task_report import NOTES, write_report

    out = Path(args.out)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "hidden", "depth", "probes",
                                               "aux_recon", "train_size", "val_size", "test_size", "max_minutes")}
    if args.no_augment:
        overrides["augment"] = False
    if args.mixed_batches:
        overrides["mixed_batches"] = True
    models = args.encoder or list(GRAPH_ENCODERS + BASELINES)
    seeds = list(range(args.seed0, args.seed0 + args.seeds))
    if args.action == "report":
        res = write_report(out, args.results, notes=NOTES)
        print(f"{res['records']} records -> {args.results}/weight_space.md, .json; figures {res['figures']}")
        return
    if args.action == "all":
        plan = ALL_PLAN if not args.dataset else tuple((t, d) for t, d in ALL_PLAN if d in args.dataset)
        run_many(plan, models, seeds, out, overrides, args.force, args.data_root, not args.quiet)
        if not args.no_extra:
            for task, dataset, long_models, item in EXTRA_PLAN:
                if args.dataset and dataset not in args.dataset:
                    continue
                run_many([(task, dataset)], [m for m in long_models if m in models], seeds[:1], out, overrides,
                         args.force, args.data_root, not args.quiet, item_overrides=item)
        res = write_report(out, args.results, notes=NOTES)
        print(f"{res['records']} records -> {args.results}/weight_space.md, .json; figures {res['figures']}")
        return
    datasets = args.dataset or [DEFAULT_DATASET[args.action]]
    run_many([(args.action, d) for d in datasets], models, seeds, out, overrides, args.force, args.data_root,
             not args.quiet)


def add_parser(sub) -> None:
    """The ``weight-space`` subcommand's arguments (called by ``meta_train.cli``)."""
    ws = sub.add_parser("weight-space", help="weight-space tasks (INR classification / editing, CNN generalization) "
                                             "on the graph encoders and baselines; results/weight_space.{md,json}")
    ws.add_argument("action", choices=("classify", "edit", "generalization", "report", "all"))
    ws.add_argument("--encoder", nargs="+", default=None,
                    choices=("ng-gnn", "ng-t", "dng", "nfn", "mlp", "statnn"),
                    help="models to run (default: all six; StatNN is skipped for editing)")
    ws.add_argument("--dataset", nargs="+", default=None,
                    help="classify/edit: mnist | fmnist; generalization: cifar10 | fmnist (default mnist / cifar10; "
                         "with `all`: restrict the plan to these data sets)")
    ws.add_argument("--seeds", type=int, default=3, help="number of seeds (seed0 .. seed0+seeds-1)")
    ws.add_argument("--seed0", type=int, default=0)
    ws.add_argument("--epochs", type=int, default=None)
    ws.add_argument("--batch-size", type=int, default=None)
    ws.add_argument("--lr", type=float, default=None)
    ws.add_argument("--hidden", type=int, default=None, help="graph encoder width")
    ws.add_argument("--depth", type=int, default=None, help="graph encoder depth")
    ws.add_argument("--probes", type=int, default=None, help="probe points for INR tasks (0: off)")
    ws.add_argument("--aux-recon", type=float, default=None, help="INR2JLS-style reconstruction loss weight")
    ws.add_argument("--train-size", type=int, default=None)
    ws.add_argument("--val-size", type=int, default=None)
    ws.add_argument("--test-size", type=int, default=None)
    ws.add_argument("--max-minutes", type=float, default=None, help="per-run training time cap")
    ws.add_argument("--no-augment", action="store_true", help="no permutation / sign-flip augmentation of INRs")
    ws.add_argument("--mixed-batches", action="store_true",
                    help="CNN zoos: batches mixing architectures (fixed composition) instead of one architecture each")
    ws.add_argument("--out", default="runs/weight-space", help="folder of the per-run records")
    ws.add_argument("--results", default="results", help="where report writes weight_space.{md,json} + figures")
    ws.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    ws.add_argument("--no-extra", action="store_true",
                    help="`all` without EXTRA_PLAN (longer / no-probe / reconstruction-loss classification runs)")
    ws.add_argument("--quiet", action="store_true", help="no progress bars")
    ws.add_argument("--data-root", default=None, help="data folder in torchvision layout (default: $L2O_DATA)")
