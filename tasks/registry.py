"""Named optimizee tasks: a model factory, a data stream and a loss, looked up by name.

Registered tasks:

- ``fmnist-conv``: Fashion-MNIST, conv 1->16 (stride 2), 16->32, 32->32, ReLU, GAP, linear 32->10
  (the meta-training task of Kofinas et al.).
- ``cifar10-conv``: CIFAR-10, the same CNN with channels 32, 64, 64 (their transfer task).
- ``cifar10-conv-w{16,32,64,128}``: width sweep; channels (w, 2w, 2w), so ``-w32`` has the same layout
  as ``cifar10-conv``.
- ``cifar10-conv-d{1..5}``: depth sweep; the first d of channels (32, 64, 64, 64, 64), so ``-d3`` has the same
  layout as ``cifar10-conv``.
- ``mnist-mlp``, ``fmnist-mlp``: 784-100-100-10 ReLU MLPs (a classic small learned-optimizer test bed).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchStream, ImageDataset, dataset_info, load_dataset
from .models import MLP, ConvNet, ResNet18

CIFAR_DEPTH_CHANNELS = (32, 64, 64, 64, 64)


@dataclass
class Task:
    """One optimizee problem: which network, which data, which loss.

    `build` makes an (unseeded) model; `make_model(seed)` is the reproducible entry point. A task made by
    `conv_task` or `mlp_task` also knows its `architecture` as plain data, so it can describe itself (`to_spec`) and
    be rebuilt from that description (`from_spec`); a task around any other model factory cannot.
    """

    name: str
    dataset: str  # a name accepted by tasks.data.load_dataset
    build: Callable[[], nn.Module]  # picklable (a functools.partial), so tasks can cross process boundaries
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int = 10
    batch_size: int = 128
    description: str = ""
    # How `build` was made: {"kind": "ConvNet" | "MLP", "widths": [...], "activation": ...} (set by conv_task /
    # mlp_task); None for a task around another model factory.
    architecture: dict | None = None

    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model; the same seed gives the same weights, and the global RNG is untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build()

    def data(self, split: str = "train", root: str | Path | None = None) -> ImageDataset:
        """The task's data set split (cached; see tasks.data.load_dataset)."""
        return load_dataset(self.dataset, split, root)

    def batches(self, split: str = "train", batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", root: str | Path | None = None,
                data: ImageDataset | None = None) -> BatchStream:
        """Seeded stream of `(x [B, C, H, W], y [B])` batches; `batch_size` defaults to the task's.

        `data` replaces the task's data set (e.g. a synthetic one in tests).
        """
        dataset = self.data(split, root) if data is None else data
        return BatchStream(dataset, batch_size or self.batch_size, seed, device)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross entropy: logits `[B, K]`, y int64 `[B]` -> scalar."""
        return F.cross_entropy(logits, y)

    def evaluate(self, model: nn.Module, split: str = "test", batch_size: int = 1000,
                 device: str | torch.device | None = None, root: str | Path | None = None,
                 data: ImageDataset | None = None) -> dict[str, float]:
        """Accuracy and mean loss of `model` over the FULL split: {"acc": float in [0, 1], "loss": float}.

        Runs in eval mode under no_grad and restores the model's previous mode afterwards. `device` defaults to
        the device of the model's parameters; `data` replaces the task's data set.
        """
        dataset = self.data(split, root) if data is None else data
        return evaluate_model(model, dataset, batch_size, device)

    def to_spec(self) -> dict:
        """The task as plain data (checkpoints hold no pickled objects): ``{"kind": "ConvNet" | "MLP" | "ResNet18", "name",
        "dataset", "batch_size", "widths", "activation"}``; :meth:`from_spec` rebuilds it."""
        if self.architecture is None:
            raise ValueError(f"task {self.name!r} wraps its own model factory, so it cannot be written down as plain "
                             f"data (a meta-training checkpoint needs that): build it with tasks.conv_task or "
                             f"tasks.mlp_task")
        arch = self.architecture
        return {"kind": arch["kind"], "name": self.name, "dataset": self.dataset, "batch_size": self.batch_size,
                "widths": list(arch["widths"]), "activation": arch["activation"]}

    @classmethod
    def from_spec(cls, spec: dict) -> "Task":
        """The task :meth:`to_spec` described."""
        make = {"ConvNet": conv_task, "MLP": mlp_task,
                "ResNet18": lambda dataset, widths, **kw: resnet_task(dataset, widths[0], **kw)}.get(spec.get("kind"))
        if make is None:
            raise ValueError(f"cannot rebuild task {spec.get('name')!r}: model kind {spec.get('kind')!r} is not "
                             f"'ConvNet', 'MLP' or 'ResNet18'")
        return make(spec["dataset"], spec["widths"], name=spec["name"], batch_size=spec["batch_size"],
                    activation=spec["activation"])


def evaluate_model(model: nn.Module, dataset: ImageDataset, batch_size: int = 1000,
                   device: str | torch.device | None = None) -> dict[str, float]:
    """Classification accuracy and mean cross entropy of `model` over every example of `dataset`."""
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    stream = BatchStream(dataset, batch_size, seed=0, device=device)
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in stream.full(batch_size):
                logits = model(x)
                # Summed, not averaged, so a smaller last batch is weighted correctly.
                total_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return {"acc": correct / len(dataset), "loss": total_loss / len(dataset)}


# ----------------------------------------------------------------------------------------------------------------
# Building tasks


def conv_task(dataset: str, channels: Sequence[int], name: str | None = None, batch_size: int = 128,
              activation: str = "relu", description: str = "") -> Task:
    """A ConvNet task (3x3 convs, first stride 2, GAP, linear head) on `dataset`.

    The default name is "<short>-conv-<c1>-<c2>-...", e.g. "fmnist-conv-16-32-32".
    """
    info = dataset_info(dataset)
    channels = tuple(int(c) for c in channels)
    build = functools.partial(ConvNet, info.shape[0], channels, info.num_classes, activation=activation)
    return Task(
        name=name or f"{info.short}-conv-{'-'.join(map(str, channels))}",
        dataset=info.name, build=build, input_shape=info.shape, num_classes=info.num_classes,
        batch_size=batch_size,
        description=description or f"{info.name}: conv {info.shape[0]}->{'->'.join(map(str, channels))} "
                                   f"(3x3, first stride 2), {activation}, GAP, linear {channels[-1]}->{info.num_classes}",
        architecture={"kind": "ConvNet", "widths": list(channels), "activation": activation},
    )


def resnet_task(dataset: str, width: int, name: str | None = None, batch_size: int = 128, activation: str = "relu",
                description: str = "") -> Task:
    """A CIFAR-style ResNet-18 task (:class:`~tasks.models.ResNet18`: BatchNorm, 1x1 projection shortcuts, stage
    widths ``(w, 2w, 4w, 8w)``) on `dataset`; default name "<short>-resnet18-w<width>"."""
    if activation != "relu":
        raise ValueError(f"resnet_task: activation {activation!r}: the ResNet-18 here uses ReLU only")
    info = dataset_info(dataset)
    build = functools.partial(ResNet18, info.shape[0], info.num_classes, width=int(width))
    return Task(
        name=name or f"{info.short}-resnet18-w{width}", dataset=info.name, build=build, input_shape=info.shape,
        num_classes=info.num_classes, batch_size=batch_size,
        description=description or f"{info.name}: ResNet-18 (BatchNorm, projection shortcuts), widths "
                                   f"{width}/{2 * width}/{4 * width}/{8 * width}",
        architecture={"kind": "ResNet18", "widths": [int(width)], "activation": "relu"},
    )


def mlp_task(dataset: str, hidden: Sequence[int], name: str | None = None, batch_size: int = 128,
             activation: str = "relu", description: str = "") -> Task:
    """An MLP task on flattened images of `dataset`; default name "<short>-mlp-<h1>-<h2>-..."."""
    info = dataset_info(dataset)
    hidden = tuple(int(h) for h in hidden)
    in_features = info.shape[0] * info.shape[1] * info.shape[2]
    build = functools.partial(MLP, in_features, hidden, info.num_classes, activation=activation)
    widths = "-".join(map(str, (in_features, *hidden, info.num_classes)))
    return Task(
        name=name or f"{info.short}-mlp-{'-'.join(map(str, hidden))}",
        dataset=info.name, build=build, input_shape=info.shape, num_classes=info.num_classes,
        batch_size=batch_size, description=description or f"{info.name}: MLP {widths}, {activation}",
        architecture={"kind": "MLP", "widths": list(hidden), "activation": activation},
    )


# ----------------------------------------------------------------------------------------------------------------
# Registry

_TASKS: dict[str, Task] = {}


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Make `task` available to `get_task(task.name)`; refuses to replace an existing name unless asked."""
    if task.name in _TASKS and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called `name`; KeyError listing the valid names otherwise."""
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)


def _register_defaults() -> None:
    register_task(conv_task("fashion-mnist", (16, 32, 32), name="fmnist-conv"))
    register_task(conv_task("cifar10", (32, 64, 64), name="cifar10-conv"))
    for w in (16, 32, 64, 128):
        register_task(conv_task("cifar10", (w, 2 * w, 2 * w), name=f"cifar10-conv-w{w}"))
    for d in range(1, 6):
        register_task(conv_task("cifar10", CIFAR_DEPTH_CHANNELS[:d], name=f"cifar10-conv-d{d}"))
    register_task(mlp_task("mnist", (100, 100), name="mnist-mlp"))
    register_task(mlp_task("fashion-mnist", (100, 100), name="fmnist-mlp"))
    # BatchNorm ResNets (0.7M parameters at width 16): does a rule meta-trained on plain CNNs carry over to them?
    for dataset in ("fashion-mnist", "cifar10"):
        register_task(resnet_task(dataset, 16))


_register_defaults()
