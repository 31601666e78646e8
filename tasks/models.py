"""Optimizee networks: small CNNs and MLPs built as flat `nn.Sequential`s of plain modules.

Flat sequences keep parameter names short ("0.weight", "2.bias", ...) and let a torch.fx tracer read the
architecture layer by layer without custom leaf modules.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ConvNet(nn.Sequential):
    """Conv stack + global average pool + linear classifier.

    Layout for channels (c1, ..., cd)::

        Conv2d(in, c1, k, stride=first_stride, padding=k//2), act,
        Conv2d(c1, c2, k, stride=1, padding=k//2), act, ...,
        AdaptiveAvgPool2d(1), Flatten(), Linear(cd, num_classes)

    Input `[B, in_channels, H, W]` -> logits `[B, num_classes]`.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int = 10, kernel_size: int = 3,
                 first_stride: int = 2, activation: str = "relu"):
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive widths, got {channels}")
        layers: list[nn.Module] = []
        widths = (in_channels, *channels)
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            stride = first_stride if i == 0 else 1
            layers += [nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2),
                       make_activation(activation)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
        super().__init__(*layers)
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes


class MLP(nn.Sequential):
    """Flatten + fully connected layers with an activation between them.

    Input `[B, ...]` with prod(...) == in_features -> logits `[B, num_classes]`. Empty `hidden` gives a
    linear (logistic-regression) model.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int = 10, activation: str = "relu"):
        hidden = tuple(int(h) for h in hidden)
        if hidden and min(hidden) < 1:
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for f_in, f_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(f_in, f_out), make_activation(activation)]
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)
        self.in_features, self.hidden, self.num_classes = in_features, hidden, num_classes


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or a 1x1 conv + BN projection
    when the stride or width changes), then ReLU. ``[B, c_in, H, W] -> [B, c_out, H / stride, W / stride]``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR variant: 3x3 stem, no max-pool), widths ``(w, 2w, 4w, 8w)``, two
    :class:`BasicBlock` s per stage, global average pool, linear classifier; 11.2M parameters at ``width=64``.
    ``[B, in_channels, 32, 32] -> [B, num_classes]``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c_in = [], width
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)]
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
