"""``--device`` names of the command lines (``cpu``, ``cuda``, ``cuda:N``), checked against this machine.

Every command that trains takes ``--device``; it is checked here before any work starts, so that asking for a GPU
this machine lacks is one clear line (the commands exit with status 2), not a CUDA error deep in a run. Lives in
``tasks`` (the lowest layer that has command lines: the zoo builders) so that ``meta_train``'s CLI uses the same rule.
"""
from __future__ import annotations

import torch

__all__ = ["parse_device"]


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
