"""SIREN implicit neural representations (INRs): the network, batched rendering and its exact symmetries.

A SIREN maps a pixel coordinate in [-1, 1]^2 to an intensity through ``Linear -> sin(w0 .) -> ... -> Linear``
(Sitzmann et al., 2020). ``w0`` lives in the :class:`Sine` activation, so the ``Linear`` weights stored in a
zoo are the plain weights and ``sin(w0 * (W x + b))`` is the hidden activation.

Many INRs of one architecture are handled as one dict of stacked parameters ``{name: [B, *shape]}`` (the
names are those of ``Siren.state_dict()``); :func:`render` evaluates them all at once with
``torch.func.vmap`` and stays differentiable with respect to the parameters.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from l2o.graph.activations import register_activation

__all__ = [
    "Sine", "Siren", "make_coords", "render", "siren_param_shapes", "sample_siren_params", "permute_hidden",
    "flip_signs", "hidden_layers",
]


class Sine(nn.Module):
    """Elementwise ``y = sin(w0 * x)``; registered as the neural-graph activation ``"sin"``."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0:g}"


register_activation(Sine, "sin")


def siren_param_shapes(in_features: int = 2, hidden: Sequence[int] = (32, 32),
                       out_features: int = 1) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a :class:`Siren`'s parameters, in ``state_dict`` order."""
    widths = [int(in_features), *(int(h) for h in hidden), int(out_features)]
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(len(widths) - 1):
        index = 2 * k  # Linear modules sit at even positions of ``net`` (Sine at the odd ones)
        shapes[f"net.{index}.weight"] = (widths[k + 1], widths[k])
        shapes[f"net.{index}.bias"] = (widths[k + 1],)
    return shapes


def _uniform(shape: Sequence[int], bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * bound


def sample_siren_params(seeds: Sequence[int] | torch.Tensor, in_features: int = 2, hidden: Sequence[int] = (32, 32),
                        out_features: int = 1, w0: float = 30.0) -> dict[str, torch.Tensor]:
    """Independent SIREN initialisations, one per seed: ``{name: [B, *shape]}`` float32.

    INR ``i`` depends on ``seeds[i]`` only, so a fit does not depend on which other INRs share its batch.
    Weights follow the SIREN scheme (first layer ``U(-1/in, 1/in)``, later layers
    ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``); biases keep PyTorch's ``nn.Linear`` default ``U(-1/sqrt(in), 1/sqrt(in))``,
    as in the reference SIREN code (where, as here, ``w0`` multiplies the whole pre-activation).
    """
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    shapes = siren_param_shapes(in_features, hidden, out_features)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        single = _init_one(shapes, w0, generator)
        for name, value in single.items():
            out[name].append(value)
    return {name: torch.stack(values) if values else torch.zeros(0, *shapes[name])
            for name, values in out.items()}


def _init_one(shapes: dict[str, tuple[int, ...]], w0: float,
              generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = {}
    first = True
    for name, shape in shapes.items():
        if name.endswith(".weight"):
            fan_in = shape[1]
            bound = 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / w0
            params[name] = _uniform(shape, bound, generator)
            first = False
        else:
            fan_in = shapes[name[: -len("bias")] + "weight"][1]
            params[name] = _uniform(shape, 1.0 / math.sqrt(fan_in), generator)
    return params


class Siren(nn.Module):
    """``Linear(in, h0) -> Sine -> Linear(h0, h1) -> Sine -> ... -> Linear(h_last, out)`` in ``self.net``.

    Args:
        in_features: coordinate dimension (2 for images).
        hidden: widths of the hidden layers.
        out_features: channels (1 for gray images).
        w0: frequency of every :class:`Sine`.
        generator: optional generator for the initialisation (default: torch's global RNG).
    """

    def __init__(self, in_features: int = 2, hidden: Sequence[int] = (32, 32), out_features: int = 1,
                 w0: float = 30.0, generator: torch.Generator | None = None):
        super().__init__()
        if not hidden:
            raise ValueError("a SIREN needs at least one hidden layer")
        self.in_features, self.hidden, self.out_features = int(in_features), tuple(int(h) for h in hidden), int(out_features)
        self.w0 = float(w0)
        widths = [self.in_features, *self.hidden, self.out_features]
        layers: list[nn.Module] = []
        for k in range(len(widths) - 1):
            layers.append(nn.Linear(widths[k], widths[k + 1]))
            if k < len(widths) - 2:
                layers.append(Sine(self.w0))
        self.net = nn.Sequential(*layers)
        self.reset_parameters(generator)

    @property
    def arch(self) -> dict:
        return {"in_features": self.in_features, "hidden": list(self.hidden), "out_features": self.out_features,
                "w0": self.w0}

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """SIREN initialisation (see :func:`sample_siren_params`)."""
        values = _init_one(siren_param_shapes(self.in_features, self.hidden, self.out_features), self.w0, generator)
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(values[name])

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.net(coords)


def make_coords(h: int, w: int, dtype: torch.dtype = torch.float32,
                device: str | torch.device | None = None) -> torch.Tensor:
    """Grid ``[h*w, 2]`` of (row, col) coordinates in [-1, 1], row-major (image row ``r`` is
    ``coords[r*w:(r+1)*w]``); the corners are exactly -1 and 1 (a side of length 1 maps to 0)."""
    rows = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device) if h > 1 else torch.zeros(1, dtype=dtype, device=device)
    cols = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device) if w > 1 else torch.zeros(1, dtype=dtype, device=device)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([grid_r.reshape(-1), grid_c.reshape(-1)], dim=-1)


def render(model_template: nn.Module, params: dict[str, torch.Tensor], coords: torch.Tensor,
           chunk_size: int | None = None) -> torch.Tensor:
    """Evaluate B INRs of ``model_template``'s architecture at ``coords``: ``[B, n, out]``.

    Args:
        model_template: any module of the right architecture; its own parameter values are not used.
        params: ``{name: [B, *shape]}``, every name of ``model_template.state_dict()``.
        coords: ``[n, in]``, shared by all INRs (e.g. :func:`make_coords`).
        chunk_size: optional ``vmap`` chunk size (bounds memory for huge B).

    Differentiable with respect to ``params`` (``torch.func.functional_call`` under ``torch.func.vmap``).
    """
    def one(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model_template, p, (coords,))

    return vmap(one, chunk_size=chunk_size)(params)


# ----------------------------------------------------------------------------------------------------------------
# Exact symmetries (weight-space augmentations)


def hidden_layers(params: dict[str, torch.Tensor]) -> list[tuple[str, str, str]]:
    """``(weight, bias, next_weight)`` names per hidden layer, for SIREN parameter names ``net.<i>.<kind>``."""
    weights = sorted((n for n in params if n.endswith(".weight")), key=lambda n: int(n.split(".")[-2]))
    return [(w, w[: -len("weight")] + "bias", nxt) for w, nxt in zip(weights[:-1], weights[1:])]


def _check_batched(params: dict[str, torch.Tensor]) -> int:
    sizes = {int(v.shape[0]) for v in params.values()}
    if len(sizes) != 1:
        raise ValueError(f"params must share one leading batch dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def permute_hidden(params: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Randomly permute the neurons of every hidden layer, independently per INR.

    ``params`` is ``{name: [B, *shape]}``; each INR and each hidden layer gets its own random permutation
    (from ``generator``), applied to the rows of the layer's weight and bias and to the columns of the next
    layer's weight. The function each INR computes is unchanged (exactly, up to float summation order).
    Returns a new dict; the input is not modified.
    """
    batch = _check_batched(params)
    out = dict(params)
    for w_name, b_name, next_name in hidden_layers(params):
        width = params[w_name].shape[1]
        perm = torch.argsort(torch.rand(batch, width, generator=generator), dim=1).to(params[w_name].device)
        rows = perm[:, :, None].expand(-1, -1, params[w_name].shape[2])
        out[w_name] = torch.gather(out[w_name], 1, rows)
        out[b_name] = torch.gather(out[b_name], 1, perm)
        cols = perm[:, None, :].expand(-1, params[next_name].shape[1], -1)
        out[next_name] = torch.gather(out[next_name], 2, cols)
    return out


def flip_signs(params: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Randomly flip the sign of hidden neurons, independently per INR (each with probability 1/2).

    sin is odd, so negating a hidden neuron's incoming weights and bias negates its activation, which negating
    its outgoing weights undoes: the function each INR computes is unchanged (exactly). ``params`` is
    ``{name: [B, *shape]}``; returns a new dict, the input is not modified.
    """
    batch = _check_batched(params)
    out = dict(params)
    for w_name, b_name, next_name in hidden_layers(params):
        width = params[w_name].shape[1]
        sign = (torch.randint(0, 2, (batch, width), generator=generator) * 2 - 1).to(
            device=params[w_name].device, dtype=params[w_name].dtype)
        out[w_name] = out[w_name] * sign[:, :, None]
        out[b_name] = out[b_name] * sign
        out[next_name] = out[next_name] * sign[:, None, :]
    return out
