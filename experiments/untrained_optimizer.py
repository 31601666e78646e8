"""The shared budget's optimizer before meta-training: what does the relative parametrization give by itself?

Writes ``results/diagnostics/untrained.pt``: the FF family with a zero-initialised head built from the shared
budget's optimizer settings (``meta_train/configs/fmnist.toml``), which is exactly relative Adam at rate 0.05.
Evaluated beside the shipped optimizers, it separates what meta-training learned from what the relative steps give
without it:

    python -m experiments.untrained_optimizer
    python -m meta_train evaluate --task cifar10-conv --optimizers untrained=results/diagnostics/untrained.pt \\
        --out results/eval/cifar10-conv-untrained --resume

``--device`` (default cpu; cpu | cuda | cuda:N) is where the optimizer is built: its weights are drawn on the CPU's
RNG (seed 0) whatever the device, and the checkpoint holds CPU tensors, so every device writes the same file.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from experiments import RESULTS
from l2o.optim import build_optimizer, save_checkpoint
from meta_train.config import load_config
from tasks.devices import device_or_exit

CONFIG = Path(__file__).resolve().parents[1] / "meta_train" / "configs" / "fmnist.toml"
OUT = RESULTS / "diagnostics" / "untrained.pt"
NOTE = "untrained: relative Adam at the shared budget's initial rate"


def write_untrained(path: Path = OUT, device: str | torch.device = "cpu") -> Path:
    """Build the untrained FF optimizer (seed 0) from the shared budget's config on ``device`` and save it as a
    checkpoint (CPU tensors)."""
    cfg = replace(load_config(CONFIG, []).optimizer, family="ff")
    torch.manual_seed(0)
    return save_checkpoint(path, build_optimizer(cfg).to(device), cfg, {"note": NOTE})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.untrained_optimizer", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"checkpoint (default {OUT.relative_to(RESULTS.parent)})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu): where the optimizer is built")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    print(write_untrained(args.out, device))


if __name__ == "__main__":
    main()
