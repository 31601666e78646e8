"""What meta-training and evaluation need from an optimizee task, written down as :class:`typing.Protocol` classes.

Three roles, as in learned_optimization's ``tasks/base.py``:

* :class:`BatchStreamProtocol`: ``batch(step) -> (x, y)``, a pure function of ``step`` (a seeded stream), so a resumed
  run sees exactly the batches an uninterrupted one would have.
* :class:`TaskProtocol`: one optimizee problem: a model factory, seeded batch streams per split, a loss, a full
  evaluation, and ``to_spec()``: the task as a plain dict (names, numbers, lists) that ``tasks.task_from_spec`` turns
  back into an equal task. Checkpoints hold specs, never pickled objects.
* :class:`TaskFamilyProtocol`: a distribution over tasks, ``sample(generator) -> task``, reading nothing but the
  generator, so restoring the generator's state resumes the exact sequence of tasks.

The implementations are :class:`tasks.registry.Task` (image classification with a ConvNet / MLP) and
:class:`tasks.regression.RegressionTask` (synthetic linear regression); the families are
:class:`tasks.family.TaskFamily` and :class:`tasks.regression.RegressionFamily`. The protocols are structural: a
class satisfies one by having the methods, without inheriting from it.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class BatchStreamProtocol(Protocol):
    """A seeded stream of batches."""

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step``: ``(x [B, ...], y [B, ...])``, the same for the same stream and step."""
        ...


@runtime_checkable
class TaskProtocol(Protocol):
    """One optimizee problem.

    Implementations may take more keyword options than written here (``root=`` for the data folder, ``data=`` for a
    replacement data set); meta-training and evaluation pass only these.
    """

    @property
    def name(self) -> str:
        """A short name for tables and logs."""
        ...

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights, and the global RNG is untouched."""
        ...

    def batches(self, split: str = "train", batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu") -> BatchStreamProtocol:
        """The seeded stream of ``split`` (``"train"``, ``"val"`` or ``"test"``); ``batch_size`` defaults to the
        task's own."""
        ...

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of the model's ``output`` on targets ``y``."""
        ...

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """``{"acc", "loss"}`` of ``model`` on ``split`` (``acc`` is NaN where accuracy means nothing)."""
        ...

    def to_spec(self) -> dict:
        """The task as plain data, ``{"kind": ..., ...}``: ``tasks.task_from_spec`` rebuilds an equal task from it."""
        ...


@runtime_checkable
class TaskFamilyProtocol(Protocol):
    """A distribution over tasks."""

    def sample(self, generator: torch.Generator) -> TaskProtocol:
        """One task, depending only on ``generator`` (which it advances)."""
        ...
