"""Random linear-regression tasks: tiny, data-free problems for testing meta-training end to end.

A task has a hidden weight vector ``w* ~ N(0, I_d)`` (from its seed); batches are ``x ~ N(0, I_d)``,
``y = x w* + 0.1 noise``, both pure functions of ``(task seed, stream seed, step)``; the model is ``nn.Linear(d, 1)``
and the loss the mean squared error. :class:`RegressionTask` and :class:`RegressionFamily` satisfy
:class:`tasks.base.TaskProtocol` and :class:`tasks.base.TaskFamilyProtocol`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .seeding import mix_seed


@dataclass(frozen=True)
class RegressionStream:
    w: torch.Tensor  # [d, 1]
    batch_size: int
    seed: int
    noise: float = 0.1
    device: torch.device = torch.device("cpu")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [batch, d]``, ``y [batch, 1]`` on ``device``; drawn on the CPU, so every device sees the same data."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, step))
        x = torch.randn(self.batch_size, self.w.shape[0], generator=g)
        y = x @ self.w + self.noise * torch.randn(self.batch_size, 1, generator=g)
        return x.to(self.device), y.to(self.device)


@dataclass(frozen=True)
class RegressionTask:
    """``d``-dimensional linear regression with hidden weights drawn from ``task_seed``."""

    dim: int
    task_seed: int
    batch_size: int = 32

    @property
    def name(self) -> str:
        return f"regression-d{self.dim}-s{self.task_seed}"

    @property
    def w(self) -> torch.Tensor:
        return torch.randn(self.dim, 1, generator=torch.Generator().manual_seed(self.task_seed))

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Linear(self.dim, 1)

    def batches(self, split: str = "train", batch_size: int | None = None, seed: int = 0, device="cpu", **_):
        offset = {"train": 0, "val": 1, "test": 2}.get(split, 0)
        return RegressionStream(self.w, batch_size or self.batch_size, seed * 3 + offset, device=torch.device(device))

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, y)

    def evaluate(self, model: nn.Module, split: str = "test", **_) -> dict:
        device = next(model.parameters()).device
        x, y = self.batches(split, 1024, seed=12345, device=device).batch(0)
        with torch.no_grad():
            return {"loss": float(self.loss(model(x), y)), "acc": float("nan")}

    def to_spec(self) -> dict:
        """The task as plain data: ``{"kind": "regression", "dim", "task_seed", "batch_size"}``."""
        return {"kind": "regression", "dim": self.dim, "task_seed": self.task_seed, "batch_size": self.batch_size}

    @classmethod
    def from_spec(cls, spec: dict) -> "RegressionTask":
        """The task :meth:`to_spec` described."""
        return cls(spec["dim"], spec["task_seed"], spec["batch_size"])


@dataclass(frozen=True)
class RegressionFamily:
    dims: Sequence[int] = (4, 8, 16)
    batch_size: int = 32

    def sample(self, generator: torch.Generator) -> RegressionTask:
        i = int(torch.randint(len(self.dims), (1,), generator=generator))
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return RegressionTask(int(self.dims[i]), seed, self.batch_size)
