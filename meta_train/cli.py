"""Command line: ``python -m meta_train <command> ...``, the one front door of every command of the package.

Each command is an argparse subcommand defined here (``python -m meta_train <command> --help`` lists its flags):

============  ==============================================================  ============================
command       what it does                                                    code
============  ==============================================================  ============================
demo          the CIFAR-10 task model's neural graph + a brief Adam run       pipelines/demo.py
train         meta-train a learned optimizer (resumable; --num-processes N)   train.py, launcher.py
evaluate      optimizers x seeds on a task, tuned baselines, table + figures  evaluate.py
export        a learned-optimizer checkpoint from a run's newest state        train.py
main-job      make run: brief meta-training, then CIFAR-10 evaluation         pipelines/main_job.py
report        evaluation summaries -> results/transfer.{json,md}              pipelines/transfer_report.py
weight-space  weight-space tasks on the encoders -> results/weight_space.*    pipelines/weight_space.py
results       make results: the full transfer results (resumable)             pipelines/results.py
step-stats    a learned optimizer's steps against Adam's along a run          pipelines/step_stats.py
============  ==============================================================  ============================

Every command that trains or evaluates takes ``--device cpu | cuda | cuda:N`` (default cpu; ``train``: the config's
``run.device``), checked before the command starts.

``python -m meta_train.transfer`` and ``python -m meta_train.step_stats`` are aliases of ``results`` and
``step-stats``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .launcher import relaunch, requested_processes, watch_parent
from .pipelines import results_plan


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="data folder in torchvision layout (default: $L2O_DATA)")


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", default="cpu", help=f"cpu | cuda | cuda:N (default cpu): {what}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``args.handler(args)`` runs the parsed one."""
    ap = argparse.ArgumentParser(prog="python -m meta_train", description="Learned optimizers on neural graphs.")
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, run, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        p.set_defaults(handler=run, command_parser=p)
        return p

    demo = command("demo", _demo, help="graph of the CIFAR-10 task model + a brief Adam run on real data")
    demo.add_argument("--task", default="cifar10-conv")
    demo.add_argument("--steps", type=int, default=200)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    _add_device(demo, "where the model trains")
    _add_data_root(demo)

    tr = command("train", _train,
                 help="meta-train a learned optimizer (resumable; accelerate launch for several processes)")
    tr.add_argument("--config", default=None, help="TOML file (see meta_train/configs/)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set meta.lr=1e-4 (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir")
    tr.add_argument("--overwrite", action="store_true",
                    help="delete the run already in run.out_dir (checkpoints, metrics) and start a new one; without "
                         "--resume or --overwrite, run.out_dir must be empty")
    tr.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; checkpoints and stops")
    tr.add_argument("--out-dir", default=None, help="shortcut for --set run.out_dir=...")
    tr.add_argument("--num-processes", type=int, default=None,
                    help="start N processes (gloo on CPU); same as accelerate launch --num_processes N")
    tr.add_argument("--device", default=None,
                    help="cpu | cuda | auto: shortcut for --set run.device=... (default: the config's run.device); "
                         "with several GPUs, pick one with CUDA_VISIBLE_DEVICES=N and pass cuda")
    _add_data_root(tr)

    ev = command("evaluate", _evaluate,
                 help="train a task with several optimizers over several seeds; table + figures")
    ev.add_argument("--task", default="cifar10-conv")
    ev.add_argument("--optimizers", nargs="+", required=True,
                    help="adam | adamw | sgdm (tuned on validation), adam:lr=1e-3 (fixed), or checkpoint .pt files")
    ev.add_argument("--steps", type=int, default=1000)
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--eval-every", type=int, default=100)
    ev.add_argument("--tune-steps", type=int, default=None, help="horizon of the tuning runs (default: --steps)")
    ev.add_argument("--out", default="results/eval")
    _add_device(ev, "where the optimizers train the task")
    ev.add_argument("--resume", action="store_true",
                    help="keep optimizers already finished in --out (same task, steps, seeds and checkpoint file)")
    _add_data_root(ev)

    ex = command("export", _export, help="write a learned-optimizer checkpoint from a run's newest training state")
    ex.add_argument("--run", required=True, help="run.out_dir of the meta-training run")
    ex.add_argument("--out", required=True, help="checkpoint file to write")

    mj = command("main-job", _main_job,
                 help="make run: brief meta-training, then CIFAR-10 evaluation (table + PNG)")
    mj.add_argument("--minutes", type=float, default=10.0, help="meta-training wall-time budget")
    mj.add_argument("--steps", type=int, default=500)
    mj.add_argument("--seeds", type=int, default=1)
    mj.add_argument("--config", default="quick.toml", help="a file in meta_train/configs/")
    mj.add_argument("--out", default="runs/main")
    mj.add_argument("--fresh", action="store_true", help="start meta-training over instead of resuming")
    _add_device(mj, "meta-training (no GPU index there: use CUDA_VISIBLE_DEVICES) and evaluation")
    _add_data_root(mj)

    rp = command("report", _report, help="collect evaluation summaries into results/transfer.json and transfer.md")
    rp.add_argument("--evals", nargs="+", required=True, help="folders written by `evaluate --out`")
    rp.add_argument("--out", default="results")

    ws = command("weight-space", _weight_space,
                 help="weight-space tasks (INR classification / editing, CNN generalization) on the graph encoders "
                      "and baselines; results/weight_space.{md,json}")
    ws.add_argument("action", choices=("classify", "edit", "generalization", "report", "all"))
    ws.add_argument("--encoder", nargs="+", default=None,
                    choices=("ng-gnn", "ng-t", "dng", "nfn", "mlp", "statnn"),
                    help="models to run (default: all six; StatNN is skipped for editing)")
    ws.add_argument("--dataset", nargs="+", default=None,
                    help="classify: mnist | fmnist | cifar10 (RGB INRs); edit: mnist | fmnist; generalization: cifar10 | fmnist (default mnist / cifar10; "
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
    ws.add_argument("--jls", action="store_true",
                    help="classify: INR2JLS, a latent space shared with the images (labels get +jls)")
    ws.add_argument("--jls-distill", action="store_true",
                    help="classify: INR2JLS with the alignment's gradient stopped at the image latent (+jlsd)")
    ws.add_argument("--jls-align", type=float, default=None,
                    help="classify, with --jls: weight of the alignment MSE between the two latents (default 1; "
                         "another value adds +align<w> to the labels)")
    ws.add_argument("--encoder-option", action="append", default=None, type=_encoder_option, metavar="KEY=VALUE",
                    help="a graph encoder's constructor option (repeatable), VALUE read as a Python literal (True, 3, "
                         "0.5; anything else is a string), e.g. --encoder dng --encoder-option recurrence=rnn "
                         "--encoder-option bidirectional=False; the runs are labelled dng[bidirectional=False,"
                         "recurrence=rnn] (keys sorted), every --encoder must take the options")
    ws.add_argument("--train-size", type=int, default=None)
    ws.add_argument("--val-size", type=int, default=None)
    ws.add_argument("--test-size", type=int, default=None)
    ws.add_argument("--max-minutes", type=float, default=None, help="per-run training time cap")
    ws.add_argument("--no-augment", action="store_true", help="no permutation / sign-flip augmentation of INRs")
    ws.add_argument("--mixed-batches", action="store_true",
                    help="CNN zoos: batches mixing architectures (fixed composition) instead of one architecture each")
    ws.add_argument("--out", default="runs/weight-space", help="folder of the per-run records")
    ws.add_argument("--results", default="results", help="where report writes weight_space.{md,json} + figures")
    ws.add_argument("--no-carry", action="store_true",
                    help="report: the table from these records only (default: the existing table's rows that no "
                         "record covers are kept, marked *)")
    ws.add_argument("--also-records", nargs="+", default=None, metavar="DIR",
                    help="report / all: aggregate these record folders too, beside --out (e.g. runs/inr-scaling "
                         "runs/edit-scale: the scaled studies' runs)")
    ws.add_argument("--force", action="store_true", help="rerun runs whose record exists")
    ws.add_argument("--no-extra", action="store_true",
                    help="`all` without EXTRA_PLAN (longer / no-probe / reconstruction-loss classification runs)")
    ws.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(ws, "training, and fitting the zoos not cached yet")
    _add_data_root(ws)

    plan = results_plan
    rs = command("results", _results,
                 help="the full transfer results (make results): meta-train every shipped optimizer, evaluate, "
                      "sweep, report; resumable",
                 description="The full Fashion-MNIST -> CIFAR-10 results, end to end, resumable (make results).")
    rs.add_argument("--stages", nargs="+", default=["train", "eval", "sweep", "report"], choices=list(plan.STAGES),
                    help="ship: re-copy the best checkpoints of finished runs and rewrite their model cards")
    rs.add_argument("--only", nargs="+", choices=list(plan.SHIPPED), help="train only these shipped optimizers")
    rs.add_argument("--steps", type=int, default=1000)
    rs.add_argument("--seeds", type=int, default=5)
    rs.add_argument("--sweep-seeds", type=int, default=3)
    rs.add_argument("--sweep-tasks", nargs="+", default=list(plan.SWEEP_RUN_ORDER), choices=list(plan.SWEEP),
                    help="sweep points to run (default: all, cheapest first)")
    rs.add_argument("--sweep-every-family", action="store_true",
                    help="sweep one shipped optimizer of every family, not only the default (6x the cost)")
    rs.add_argument("--tasks", nargs="+", default=list(plan.TASKS))
    rs.add_argument("--runs", default=str(plan.ROOT / "runs" / "transfer"), help="meta-training run folders")
    rs.add_argument("--out", default=str(plan.RESULTS / "eval"), help="evaluation folders")
    rs.add_argument("--max-minutes", type=float, default=0.0, help="wall-time cap per meta-training call")
    _add_device(rs, "meta-training (no GPU index there: use CUDA_VISIBLE_DEVICES), evaluation, sweep")
    _add_data_root(rs)

    ss = command("step-stats", _step_stats,
                 help="a learned optimizer's update size and direction vs Adam's along a run",
                 description="How a learned optimizer's steps compare with Adam's, per parameter category, along a "
                             "real training run.")
    ss.add_argument("checkpoint")
    ss.add_argument("--task", default="cifar10-conv")
    ss.add_argument("--steps", type=int, default=300)
    ss.add_argument("--ref-lr", type=float, default=None,
                    help="the Adam learning rate to compare with (default 3e-3; with --relative, 1)")
    ss.add_argument("--relative", action="store_true",
                    help="compare with relative Adam (steps x each tensor's initial RMS): ratios are relative rates")
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--out", default=None, help="folder for step_stats.json and step_stats.png")
    _add_device(ss, "where the run goes")
    return ap


# ---------------------------------------------------------------------------------------------- the commands
# Each command imports its code when it runs, not at the top of this module: torch and Accelerate take seconds to
# import, which `--help` and the multi-process launcher (the workers' parent) should not pay.

def _demo(args: argparse.Namespace) -> None:
    from .pipelines.demo import run_demo

    run_demo(args.task, args.steps, args.lr, args.seed, args.data_root, device=args.device)


def _train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train

    train(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate

    evaluate(args.task, args.optimizers, args.steps, args.seeds, Path(args.out), args.eval_every, args.tune_steps,
             args.device, resume=args.resume)


def _export(args: argparse.Namespace) -> None:
    from .train import export_run

    print(export_run(Path(args.run), Path(args.out)))


def _main_job(args: argparse.Namespace) -> None:
    from .pipelines.main_job import main_job
    from .train import clear_run

    if args.fresh:  # start meta-training over: the previous run's files go (train refuses to mix them)
        clear_run(Path(args.out) / "meta")
    main_job(Path(args.out), args.minutes, args.steps, args.seeds, args.config, resume=not args.fresh,
             device=args.device)


def _report(args: argparse.Namespace) -> None:
    from .pipelines.transfer_report import write

    write([Path(d) for d in args.evals], Path(args.out))


def _encoder_option(text: str) -> tuple[str, object]:
    """``weight-space --encoder-option KEY=VALUE`` -> ``(KEY, value)``: VALUE as a Python literal (``True``, ``3``,
    ``0.5``, ``'x'``, ``None``), else the text itself as a string (``rnn``, ``mean``, ``none``)."""
    import ast

    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. recurrence=rnn), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _weight_space(args: argparse.Namespace) -> None:
    from tasks.weight_space.task_models import EncoderOptionError

    from .pipelines.weight_space import weight_space_main

    try:
        weight_space_main(args)
    except EncoderOptionError as exc:  # a bad --encoder-option: one line, exit status 2
        args.command_parser.error(str(exc))


def _results(args: argparse.Namespace) -> None:
    from .pipelines.results import run

    run(args)


def _step_stats(args: argparse.Namespace) -> None:
    from .pipelines.step_stats import run

    run(args)


def _start_train(args: argparse.Namespace, argv: list[str]) -> None:
    """Before ``train`` runs: fold the shortcuts into ``args.overrides``; with several processes requested, check the
    config once and relaunch this command in N workers (exits with their status); in a worker, stop with the parent."""
    if args.resume and args.overwrite:
        args.command_parser.error("--resume continues the run in run.out_dir and --overwrite deletes it: pass only one")
    if args.max_minutes is not None:
        args.overrides.append(f"run.max_minutes={args.max_minutes}")
    if args.out_dir:
        args.overrides.append(f"run.out_dir='{args.out_dir}'")
    if args.device:
        args.overrides.append(f"run.device='{args.device}'")
    n = requested_processes(args.num_processes)
    if n > 1:
        from .config import ConfigError, load_config  # torch, but only on this path (see "the commands" above)

        try:  # a config error is reported once, here, not by every worker
            load_config(args.config, args.overrides)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(relaunch(n, argv))
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a worker of torch.distributed.run
        watch_parent()


def _check_device(args: argparse.Namespace) -> None:
    """Check ``--device`` before the command starts, so that a device this machine lacks is one line and exit status
    2 at once, not a traceback minutes into a run. Raises ``ValueError`` with the message to print."""
    from tasks.devices import parse_device

    if args.command == "train" and args.device == "auto":  # train's shortcut takes every run.device value
        return
    device = parse_device(args.device)  # the rule of every command line, the zoo builders' too
    # Meta-training takes its device from Accelerate, which puts a single process on the current GPU: a GPU index
    # cannot be passed through run.device (auto | cpu | cuda), and dropping it would run on another GPU than asked.
    meta_trains = args.command in ("train", "main-job") or (args.command == "results" and "train" in args.stages)
    if device.type == "cuda" and device.index is not None and meta_trains:
        raise ValueError(f"--device {args.device}: meta-training ({args.command}) takes cpu or cuda; to use GPU "
                         f"{device.index}, run with CUDA_VISIBLE_DEVICES={device.index} and --device cuda")


def _exit_status(exc: BaseException) -> int | None:
    """The exit status of an error whose message says everything (printed without a traceback): 2 for a config
    error, 1 for a meta-training run that cannot start or go on; None for anything else (a bug: traceback)."""
    # Looked up, not imported: a module that is not loaded cannot have raised its error (and importing it is slow).
    config, train = sys.modules.get("meta_train.config"), sys.modules.get("meta_train.train")
    if config is not None and isinstance(exc, config.ConfigError):
        return 2
    if train is not None and isinstance(exc, train.TrainingError):
        return 1
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from l2o.runtime import tune_cpu_allocator  # importing l2o imports torch: only once a command runs

    tune_cpu_allocator()
    if getattr(args, "device", None) is not None:
        try:
            _check_device(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    if args.command == "train":
        _start_train(args, argv)
    if getattr(args, "data_root", None):
        os.environ["L2O_DATA"] = args.data_root
    try:
        args.handler(args)
    except FileNotFoundError as exc:  # missing data: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, RuntimeError) as exc:
        status = _exit_status(exc)
        if status is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(status)
