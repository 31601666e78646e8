"""The shared budget's optimizer before meta-training: what does the relative parametrization give by itself?

Writes ``results/diagnostics/untrained.pt``: the FF family with a zero-initialised head built from the shared
budget's optimizer settings (``meta_train/configs/fmnist.toml``), which is exactly relative Adam at rate 0.05.
Evaluated beside the shipped optimizers, it separates what meta-training learned from what the relative steps give
without it:

    python -m experiments.untrained_optimizer
    python -m meta_train evaluate --task cifar10-conv --optimizers untrained=results/diagnostics/untrained.pt \\
        --out results/eval/cifar10-conv-untrained --resume
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from experiments import RESULTS
from l2o.optim import build_optimizer, save_checkpoint
from meta_train.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "meta_train" / "configs" / "fmnist.toml"
OUT = RESULTS / "diagnostics" / "untrained.pt"
NOTE = "untrained: relative Adam at the shared budget's initial rate"


def write_untrained(path: Path = OUT) -> Path:
    """Build the untrained FF optimizer (seed 0) from the shared budget's config and save it as a checkpoint."""
    cfg = replace(load_config(CONFIG, []).optimizer, family="ff")
    torch.manual_seed(0)
    return save_checkpoint(path, build_optimizer(cfg), cfg, {"note": NOTE})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.untrained_optimizer", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"checkpoint (default {OUT.relative_to(RESULTS.parent)})")
    print(write_untrained(ap.parse_args(argv).out))


if __name__ == "__main__":
    main()
