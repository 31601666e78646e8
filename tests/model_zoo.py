"""Small models and hand-written hidden-neuron permutations shared by the graph, encoder and optimizer tests.

The permutations are written against the *model* (rows of W[l], entries of b[l], columns of W[l+1]), never
through the neural graph, so the tests compare two independent descriptions of the same symmetry.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(seed: int = 0, act=nn.Tanh) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), act(), nn.Linear(7, 6), act(), nn.Linear(6, 3))


def mixed_kernel_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))


def bn_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():  # non-trivial affine parameters
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m


class ResidualCNN(nn.Module):
    """conv -> relu -> [conv -> relu -> conv] + skip -> relu -> pool -> linear."""

    def __init__(self, seed: int = 0, c_in: int = 2, c: int = 4, n_out: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(c_in, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, n_out)

    def forward(self, x):
        h = F.relu(self.stem(x))
        y = self.conv2(F.relu(self.conv1(h))) + h
        y = F.relu(y)
        return self.head(y.mean((2, 3)))


class ResidualMLP(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.l2, self.l3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(self.l2(h) + h)
        return self.l3(h)


def permute_sequential(model: nn.Sequential, perms: dict[int, torch.Tensor]) -> nn.Sequential:
    """Permute the output neurons of parametric layer ``i`` (Linear/Conv at index ``i``) by ``perms[i]``.

    New neuron ``k`` of that layer is old neuron ``perm[k]``: rows / biases of the layer, the following
    BatchNorm's parameters and running stats, and the input columns of the next Linear/Conv are permuted.
    """
    m = copy.deepcopy(model)
    layers = list(m)
    with torch.no_grad():
        for i, perm in perms.items():
            layer = layers[i]
            layer.weight.copy_(layer.weight[perm])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[perm])
            for nxt in layers[i + 1:]:
                if isinstance(nxt, nn.BatchNorm2d):
                    for t in (nxt.weight, nxt.bias, nxt.running_mean, nxt.running_var):
                        t.copy_(t[perm])
                elif isinstance(nxt, (nn.Linear, nn.Conv2d)):
                    nxt.weight.copy_(nxt.weight[:, perm])
                    break
    return m


def permute_residual_cnn(model: ResidualCNN, p_stream: torch.Tensor, p_inner: torch.Tensor) -> ResidualCNN:
    """The residual stream (stem, conv2 outputs, skip) shares one permutation; conv1's outputs have their own."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.stem.weight.copy_(model.stem.weight[p_stream]); m.stem.bias.copy_(model.stem.bias[p_stream])
        m.conv1.weight.copy_(model.conv1.weight[p_inner][:, p_stream]); m.conv1.bias.copy_(model.conv1.bias[p_inner])
        m.conv2.weight.copy_(model.conv2.weight[p_stream][:, p_inner]); m.conv2.bias.copy_(model.conv2.bias[p_stream])
        m.head.weight.copy_(model.head.weight[:, p_stream])
    return m
