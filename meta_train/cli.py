"""Command line: ``python -m meta_train <command> ...``."""
from __future__ import annotations

import argparse
import os
import sys


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="data folder in torchvision layout (default: $L2O_DATA)")


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
    _add_data_root(tr)

    args = ap.parse_args(argv)
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
    except FileNotFoundError as exc:  # missing data: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
