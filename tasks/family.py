"""Task families: distributions over conv tasks, so a learned optimizer does not overfit one network.

Sampling reads only the `torch.Generator` passed in: each process owns its stream, and restoring the
generator's state (`generator.get_state()` / `set_state`) resumes the exact sequence of tasks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .data import dataset_info
from .registry import Task, conv_task

FMNIST_CONV_CHANNELS = (16, 32, 32)


def channels_for(base: Sequence[int], depth: int, multiplier: float) -> tuple[int, ...]:
    """Widths of a `depth`-layer CNN: `base` truncated, or extended by repeating its last width, then scaled.

    E.g. base (16, 32, 32), depth 4, multiplier 0.5 -> (8, 16, 16, 16). Every width is at least 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    widths = tuple(base[:depth]) + (base[-1],) * max(0, depth - len(base))
    return tuple(max(1, round(c * multiplier)) for c in widths)


DEFAULT_WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_DEPTH_RANGE = (2, 4)


@dataclass(frozen=True)
class TaskFamily:
    """A distribution over ConvNet tasks.

    Width: a multiplier of `base_channels`, drawn uniformly from the list `widths` or, when
    `width_range = (lo, hi)` is given instead, log-uniformly from [lo, hi]; neither given means DEFAULT_WIDTHS.
    Depth: drawn uniformly from the list `depths` or from lo..hi inclusive for `depth_range = (lo, hi)`;
    neither given means DEFAULT_DEPTH_RANGE. Data set: uniformly from `datasets`. Batch size: `batch_size`, or
    uniformly from the list `batch_sizes` when given (smaller batches mean noisier gradients and a smaller best
    learning rate: a family that mixes them asks a learned optimizer to read the noise level from its features).

    Each sample draws exactly four numbers from the generator (data set, width, depth, batch size) whatever the
    configuration, so the stream position after k samples is always the same.
    """

    datasets: tuple[str, ...] = ("fashion-mnist",)
    base_channels: tuple[int, ...] = FMNIST_CONV_CHANNELS
    widths: tuple[float, ...] | None = None
    depths: tuple[int, ...] | None = None
    width_range: tuple[float, float] | None = None
    depth_range: tuple[int, int] | None = None
    batch_size: int = 128
    batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise fields through object.__setattr__ (lists -> tuples, defaults filled in).
        def put(field: str, value: object) -> None:
            object.__setattr__(self, field, value)

        if isinstance(self.datasets, str):
            put("datasets", (self.datasets,))
        put("datasets", tuple(dataset_info(name).name for name in self.datasets))  # fails early on a typo
        put("base_channels", tuple(int(c) for c in self.base_channels))
        if not self.datasets:
            raise ValueError("datasets must not be empty")
        if not self.base_channels or min(self.base_channels) < 1:
            raise ValueError(f"base_channels must be non-empty and positive, got {self.base_channels}")
        if self.widths is not None and self.width_range is not None:
            raise ValueError("give at most one of widths (a list of multipliers) and width_range (lo, hi)")
        if self.depths is not None and self.depth_range is not None:
            raise ValueError("give at most one of depths (a list) and depth_range (lo, hi)")
        if self.width_range is None:
            put("widths", tuple(float(w) for w in (self.widths if self.widths is not None else DEFAULT_WIDTHS)))
            if not self.widths or min(self.widths) <= 0:
                raise ValueError(f"widths must be a non-empty list of positive multipliers, got {self.widths}")
        else:
            put("width_range", (float(self.width_range[0]), float(self.width_range[1])))
            if not 0 < self.width_range[0] <= self.width_range[1]:
                raise ValueError(f"width_range must satisfy 0 < lo <= hi, got {self.width_range}")
        if self.batch_sizes is not None:
            put("batch_sizes", tuple(int(b) for b in self.batch_sizes))
            if not self.batch_sizes or min(self.batch_sizes) < 1:
                raise ValueError(f"batch_sizes must be a non-empty list of positive sizes, got {self.batch_sizes}")
        if self.depths is None:
            lo, hi = self.depth_range if self.depth_range is not None else DEFAULT_DEPTH_RANGE
            put("depth_range", (int(lo), int(hi)))
            if not 1 <= lo <= hi:
                raise ValueError(f"depth_range must satisfy 1 <= lo <= hi, got {self.depth_range}")
        else:
            put("depths", tuple(int(d) for d in self.depths))
            if not self.depths or min(self.depths) < 1:
                raise ValueError(f"depths must be a non-empty list of depths >= 1, got {self.depths}")

    def sample(self, generator: torch.Generator) -> Task:
        """One task; depends only on `generator` (advanced by four draws)."""
        u_data, u_width, u_depth, u_batch = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        dataset = self.datasets[_pick(u_data, len(self.datasets))]
        if self.widths is not None:
            multiplier = self.widths[_pick(u_width, len(self.widths))]
        else:
            lo, hi = self.width_range  # type: ignore[misc]
            multiplier = math.exp(math.log(lo) + u_width * (math.log(hi) - math.log(lo)))
        if self.depths is not None:
            depth = self.depths[_pick(u_depth, len(self.depths))]
        else:
            lo_d, hi_d = self.depth_range  # type: ignore[misc]
            depth = lo_d + _pick(u_depth, hi_d - lo_d + 1)
        batch = self.batch_sizes[_pick(u_batch, len(self.batch_sizes))] if self.batch_sizes else self.batch_size
        return conv_task(dataset, channels_for(self.base_channels, depth, multiplier), batch_size=batch)


def _pick(u: float, n: int) -> int:
    """Map u in [0, 1) to an index in 0..n-1 uniformly."""
    return min(int(u * n), n - 1)


def fmnist_family() -> TaskFamily:
    """Fashion-MNIST CNNs around fmnist-conv (16, 32, 32): width x {0.5, 0.75, 1, 1.5, 2}, depth 2..4."""
    return TaskFamily()
