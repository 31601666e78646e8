"""Architecture and training recipe of one member of the CNN zoo (`tasks.weight_space.cnn_zoo`).

A member is a plain ``nn.Sequential``::

    Conv2d(in, c1, k, stride=2, padding=k//2), act,
    Conv2d(c1, c2, k, stride=2, padding=k//2), act, ...      (1 to 3 conv layers)
    AdaptiveAvgPool2d(1), Flatten(), Linear(c_last, num_classes)

Every conv has stride 2 (28 -> 14 -> 7 -> 4 on Fashion-MNIST, 32 -> 16 -> 8 -> 4 on CIFAR-10), which keeps the
compute small without downsampling the inputs. Kernels are 3x3 or 5x5, so every member's neural graph is built
with ``kmax=KMAX=5`` (one kernel-slot layout for the whole zoo). Parameter names are those of the flat sequence
("0.weight", "0.bias", "2.weight", ...), in ``state_dict`` order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

KMAX = 5  # largest kernel side in the zoo: build every member's NeuralGraph with kmax=KMAX
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "leaky_relu": nn.LeakyReLU,
}
OPTIMIZERS = ("adam",)
ARCH_FIELDS = ("in_channels", "image_size", "channels", "kernel_size", "activation", "num_classes")


@dataclass(frozen=True)
class CnnSpec:
    """Architecture plus training recipe of one zoo member.

    Architecture: ``in_channels``, ``image_size`` (square inputs), ``channels`` (one width per conv layer),
    ``kernel_size`` (odd, <= KMAX), ``activation`` (a key of ACTIVATIONS), ``num_classes``.
    Training: PyTorch's default init multiplied by ``init_scale`` (weights and biases) from ``seed``, then
    ``steps`` steps of Adam with learning rate ``lr`` on mini-batches of ``batch_size`` drawn by
    ``tasks.data.BatchStream(train split, batch_size, seed=data_seed)``. For a zoo member, ``steps`` is the step
    of its snapshot. (In the zoo all runs of one architecture share ``data_seed``: one data order per group.)
    """

    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (8, 16)
    kernel_size: int = 3
    activation: str = "relu"
    num_classes: int = 10
    init_scale: float = 1.0
    lr: float = 1e-3
    steps: int = 0
    batch_size: int = 32
    seed: int = 0
    data_seed: int = 0
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not 1 <= len(self.channels) <= 3 or min(self.channels) < 1:
            raise ValueError(f"channels must hold 1 to 3 positive widths, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.kernel_size > KMAX:
            raise ValueError(f"kernel_size must be odd and <= {KMAX}, got {self.kernel_size}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.in_channels < 1 or self.image_size < 1 or self.num_classes < 2:
            raise ValueError(f"bad input/output sizes in {self}")
        if not (self.init_scale > 0 and self.lr > 0 and self.batch_size > 0 and self.steps >= 0):
            raise ValueError(f"init_scale, lr and batch_size must be positive and steps >= 0, got {self}")

    # ------------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, ints, floats, strs), so `torch.load(weights_only=True)` can read it back."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CnnSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CnnSpec fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if k == "channels" else v) for k, v in d.items()})

    # ------------------------------------------------------------------ architecture
    def arch_key(self) -> tuple:
        """What determines the module structure (and hence the neural graph); training fields excluded."""
        return tuple(getattr(self, f) for f in ARCH_FIELDS)

    def architecture(self) -> "CnnSpec":
        """This spec with the training fields reset to their defaults: one representative per architecture."""
        base = CnnSpec()
        return replace(self, init_scale=base.init_scale, lr=base.lr, steps=base.steps, batch_size=base.batch_size,
                       seed=base.seed, data_seed=base.data_seed, optimizer=base.optimizer)

    def num_params(self) -> int:
        widths = (self.in_channels, *self.channels)
        k2 = self.kernel_size ** 2
        conv = sum(c_out * (c_in * k2 + 1) for c_in, c_out in zip(widths[:-1], widths[1:]))
        return conv + self.num_classes * (self.channels[-1] + 1)

    def feature_size(self) -> int:
        """Spatial side after the conv stack (stride 2, padding k//2 each)."""
        side = self.image_size
        for _ in self.channels:
            side = (side + 2 * (self.kernel_size // 2) - self.kernel_size) // 2 + 1
        return side


def build_cnn(spec: CnnSpec, init: bool = True) -> nn.Sequential:
    """The member's module. With ``init`` (default) its parameters are the run's step-0 weights: PyTorch's
    default init drawn from ``spec.seed`` (the global RNG is left untouched), times ``spec.init_scale``."""
    layers: list[nn.Module] = []
    widths = (spec.in_channels, *spec.channels)
    k = spec.kernel_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2), ACTIVATIONS[spec.activation]()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], spec.num_classes)]
        model = nn.Sequential(*layers)
    if init and spec.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(spec.init_scale)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Sampling the zoo's design space

WIDTHS = (4, 6, 8, 12, 16)
DEPTHS = (1, 2, 2, 3, 3)  # depth 1 in a fifth of the architectures (they learn little through a global pool)
KERNELS = (3, 3, 3, 5)  # 5x5 in a quarter of the architectures
INIT_SCALE_RANGE = (0.25, 2.5)  # log-uniform multiplier of the default init
LR_RANGE = (5e-4, 3e-2)  # log-uniform Adam learning rate


def sample_architecture(rng: np.random.Generator, in_channels: int, image_size: int,
                        num_classes: int = 10) -> CnnSpec:
    """A random architecture: depth 1..3, non-decreasing widths from WIDTHS, 3x3 or 5x5 kernels, one activation."""
    depth = int(rng.choice(DEPTHS))
    channels = tuple(sorted(int(c) for c in rng.choice(WIDTHS, size=depth)))
    return CnnSpec(in_channels=in_channels, image_size=image_size, channels=channels,
                   kernel_size=int(rng.choice(KERNELS)), activation=str(rng.choice(sorted(ACTIVATIONS))),
                   num_classes=num_classes)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
