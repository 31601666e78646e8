"""``--device`` names of the command lines (``cpu``, ``cuda``, ``cuda:N``), checked against this machine.

Every command that trains takes ``--device``; it is checked here before any work starts, so that asking for a GPU
this machine lacks is one clear line (the commands exit with status 2), not a CUDA error deep in a run. Lives in
``tasks`` (the lowest layer that has command lines: the zoo builders) so that ``meta_train``'s CLI uses the same rule.
"""
from __future__ import annotations

import argparse

import torch

__all__ = ["parse_device", "device_or_exit"]


def parse_device(name: str | torch.device) -> torch.device:
    """``name`` as a :class:`torch.device` this machine has; ``ValueError`` saying what to pass instead otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not a device this package runs on: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no usable CUDA GPU (torch {torch.__version__}, CUDA "
                             f"build: {torch.version.cuda or 'none'}); pass --device cpu, or run on a machine with a "
                             f"GPU and a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 .. cuda:{count - 1}")
    return device


def device_or_exit(parser: argparse.ArgumentParser, name: str | torch.device) -> torch.device:
    """:func:`parse_device` for a command line: a device this machine lacks ends the command with the one-line error
    and exit status 2 (``parser.exit``), before any work starts."""
    try:
        return parse_device(name)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
