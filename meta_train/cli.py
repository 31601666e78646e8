"""Command line: ``python -m meta_train <command> ...``."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="data folder in torchvision layout (default: $L2O_DATA)")


def _requested_processes(flag: int | None) -> int:
    """How many processes the user asked for, when this process is not yet part of a distributed run.

    ``--num-processes N`` on our CLI, or ``accelerate launch --cpu --num_processes N``: Accelerate's CPU launcher
    starts a single process whatever N says (huggingface/accelerate#2741), so we read N from the launcher's
    command line (Linux /proc) and start the N workers ourselves.
    """
    if os.environ.get("WORLD_SIZE"):
        return 1
    if flag:
        return flag
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        try:
            words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            return 1
        for i, w in enumerate(words):
            for name in ("--num_processes", "--num-processes"):
                if w == name and i + 1 < len(words):
                    return int(words[i + 1])
                if w.startswith(name + "="):
                    return int(w.split("=", 1)[1])
    return 1


def _relaunch(n: int, argv: list[str]) -> int:
    """Run this command in ``n`` processes through torch.distributed.run (gloo on CPU, NCCL on GPUs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [a for i, a in enumerate(argv) if a != "--num-processes" and (i == 0 or argv[i - 1] != "--num-processes")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "meta_train", *argv]
    print(f"launching {n} processes: {' '.join(cmd[2:])}", file=sys.stderr)
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m meta_train", description="Learned optimizers on neural graphs.")
    sub = ap.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="graph of the CIFAR-10 task model + a brief Adam run on real data")
    demo.add_argument("--task", default="cifar10-conv")
    demo.add_argument("--steps", type=int, default=200)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    _add_data_root(demo)

    tr = sub.add_parser("train", help="meta-train a learned optimizer (resumable; accelerate launch for several processes)")
    tr.add_argument("--config", default=None, help="TOML file (see meta_train/configs/)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set meta.lr=1e-4 (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir")
    tr.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; checkpoints and stops")
    tr.add_argument("--out-dir", default=None, help="shortcut for --set run.out_dir=...")
    tr.add_argument("--num-processes", type=int, default=None,
                    help="start N processes (gloo on CPU); same as accelerate launch --num_processes N")
    _add_data_root(tr)

    ev = sub.add_parser("evaluate", help="train a task with several optimizers over several seeds; table + figures")
    ev.add_argument("--task", default="cifar10-conv")
    ev.add_argument("--optimizers", nargs="+", required=True,
                    help="adam | adamw | sgdm (tuned on validation), adam:lr=1e-3 (fixed), or checkpoint .pt files")
    ev.add_argument("--steps", type=int, default=1000)
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--eval-every", type=int, default=100)
    ev.add_argument("--tune-steps", type=int, default=None, help="horizon of the tuning runs (default: --steps)")
    ev.add_argument("--out", default="results/eval")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--resume", action="store_true",
                    help="keep optimizers already finished in --out (same task, steps, seeds and checkpoint file)")
    _add_data_root(ev)

    ex = sub.add_parser("export", help="write a learned-optimizer checkpoint from a run's newest training state")
    ex.add_argument("--run", required=True, help="run.out_dir of the meta-training run")
    ex.add_argument("--out", required=True, help="checkpoint file to write")

    mj = sub.add_parser("main-job", help="make run: brief meta-training, then CIFAR-10 evaluation (table + PNG)")
    mj.add_argument("--minutes", type=float, default=10.0, help="meta-training wall-time budget")
    mj.add_argument("--steps", type=int, default=500)
    mj.add_argument("--seeds", type=int, default=1)
    mj.add_argument("--config", default="quick.toml", help="a file in meta_train/configs/")
    mj.add_argument("--out", default="runs/main")
    mj.add_argument("--fresh", action="store_true", help="start meta-training over instead of resuming")
    _add_data_root(mj)

    rp = sub.add_parser("report", help="collect evaluation summaries into results/transfer.json and transfer.md")
    rp.add_argument("--evals", nargs="+", required=True, help="folders written by `evaluate --out`")
    rp.add_argument("--out", default="results")

    from .weight_space import add_parser as _add_weight_space

    _add_weight_space(sub)

    sub.add_parser("results", add_help=False,
                   help="the full transfer results (make results); same options as python -m meta_train.transfer")
    sub.add_parser("step-stats", add_help=False,
                   help="a learned optimizer's update size and direction vs Adam's along a run")

    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if raw_argv[:1] == ["results"]:  # forwarded whole: these have their own parsers
        from .transfer import main as transfer_main

        return transfer_main(raw_argv[1:])
    if raw_argv[:1] == ["step-stats"]:
        from .step_stats import main as step_stats_main

        return step_stats_main(raw_argv[1:])
    args = ap.parse_args(raw_argv)
    from l2o.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if args.command == "train":
        n = _requested_processes(args.num_processes)
        if n > 1:
            sys.exit(_relaunch(n, raw_argv))
    if getattr(args, "data_root", None):
        os.environ["L2O_DATA"] = args.data_root
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.task, args.steps, args.lr, args.seed, args.data_root)
        elif args.command == "train":
            from .config import load_config
            from .train import train

            overrides = list(args.overrides)
            if args.max_minutes is not None:
                overrides.append(f"run.max_minutes={args.max_minutes}")
            if args.out_dir:
                overrides.append(f"run.out_dir='{args.out_dir}'")
            train(load_config(args.config, overrides), resume=args.resume)
        elif args.command == "evaluate":
            from .evaluate import evaluate

            evaluate(args.task, args.optimizers, args.steps, args.seeds, Path(args.out), args.eval_every,
                     args.tune_steps, args.device, resume=args.resume)
        elif args.command == "main-job":
            from .main_job import main_job

            main_job(Path(args.out), args.minutes, args.steps, args.seeds, args.config, resume=not args.fresh)
        elif args.command == "report":
            from .report import write

            write([Path(d) for d in args.evals], Path(args.out))
        elif args.command == "weight-space":
            from .weight_space import weight_space_main

            weight_space_main(args)
        elif args.command == "export":
            from .train import export_run

            print(export_run(Path(args.run), Path(args.out)))
    except FileNotFoundError as exc:  # missing data: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
