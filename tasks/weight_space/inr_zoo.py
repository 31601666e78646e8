"""INR zoos: one SIREN fitted per image of MNIST / Fashion-MNIST / CIFAR-10, cached on disk under the data root.

Fitting (:func:`fit_inrs`) trains many SIRENs at once on stacked parameters ``{name: [B, *shape]}``: one batched
forward/backward over all of them, then Adam on the stacked tensors. Every INR has its own initialisation
(seeded by its own seed), its own Adam state and its own loss term (the total is a sum of per-INR means), so
the result for one image does not depend on which other images share its batch. Targets are the pixels mapped
from [0, 1] to [-1, 1]; PSNR is reported on the [0, 1] scale (peak 1) of the clamped reconstruction.

Colour images (CIFAR-10) get a SIREN with one output per channel (``2 -> 32 -> 32 -> 3``): the targets are the
red, green and blue values, each mapped to [-1, 1], the loss is the mean over pixels and channels, and the PSNR is
over all channels (one mse over ``H * W * 3`` values). The published CIFAR-10 INR experiments (DNG and the
neural-graph papers) classify such RGB SIRENs; ``REFERENCE.md`` does not give their width or depth, so the
CIFAR-10 zoo uses the gray-scale zoo's architecture and fit settings with 3 outputs. On the first 32 CIFAR-10
training images (one CPU thread, lr 1e-2, cosine): 100 steps -> mean 33.1 dB (min 29.1, max 37.8) at about 11
INRs/s (the default 13k-INR zoo in about 20 minutes of one core, the full 60k in about 1.5 hours); 200 steps -> 35.4 dB at about 6 INRs/s; 400 steps at lr 5e-3 -> 37.5 dB. Gray-scale zoos keep their file
names and weights: the output count enters the cache key only when it is not 1.

The gradient has two interchangeable backends: ``"fast"`` (default) writes the SIREN's backward pass out by hand
with batched matrix products, which is about twice as fast on a CPU as autograd and keeps every buffer of a
small micro-batch in cache; ``"vmap"`` is ``torch.func.vmap(torch.func.grad(loss))`` over
``functional_call``; the tests check that both give the same gradients.

Zoo files (:func:`build_inr_zoo`) hold ``n_train`` INRs of the first images of the project's "train" split,
``n_val`` of its "val" split and ``n_test`` of the official test split (see ``tasks.data.load_dataset``), so
the zoo splits follow the image splits. Build from the command line::

    L2O_DATA=/path/to/data python -m tasks.weight_space.inr_zoo --dataset mnist
    L2O_DATA=/path/to/data python -m tasks.weight_space.inr_zoo --dataset fmnist --n-train 10000
    L2O_DATA=/path/to/data python -m tasks.weight_space.inr_zoo --dataset cifar10 --device cuda --micro-batch 1024

Full size (every image once): ``--n-train 50000 --n-val 10000 --n-test 10000`` for MNIST / Fashion-MNIST,
``--n-train 45000 --n-val 5000 --n-test 10000`` for CIFAR-10 (its "val" split is 5,000 images).

A build writes one chunk file per ``batch`` INRs next to the final file and resumes from them when restarted;
the final file is written atomically (temporary file + rename) and the chunks are then removed.

``device`` (``--device cuda``) fits on a GPU: the initialisations are drawn on the CPU from each INR's seed (the same
on every device), each micro-batch is fitted on the device and the fitted weights come back to the CPU, so zoo files
never hold device tensors. On a GPU pass a larger ``--micro-batch`` (e.g. 1024): the default is sized for a CPU cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.func import functional_call, grad_and_value, vmap
from tqdm import tqdm

from tasks.data import (
    CorruptDataError,
    DataNotFoundError,
    dataset_info,
    load_dataset,
    resolve_data_root,
)
from tasks.devices import parse_device

from .siren import Siren, make_coords, render, sample_siren_params, siren_param_shapes
from .storage import atomic_save, default_cache_dir

__all__ = [
    "FORMAT_VERSION", "DEFAULT_STEPS", "DEFAULT_LR", "DEFAULT_BATCH", "SPLIT_CODES", "InrZoo", "InrZooError",
    "InrZooNotFoundError", "fit_inrs", "psnr", "siren_loss_and_grad", "inr_seeds", "build_inr_zoo",
    "zoo_path", "load_or_build_inr_zoo", "main",
]

FORMAT_VERSION = 1
DEFAULT_HIDDEN = (32, 32)
DEFAULT_W0 = 30.0
# Chosen by a sweep on 48 + 48 MNIST / Fashion-MNIST training images (mean PSNR, cosine schedule): 50 steps at
# lr 1e-2 -> ~37 dB, 100 steps at 1e-2 -> ~54 dB (min ~45), 150 steps -> ~70 dB; lr 2e-2 is worse, 5e-3 slower.
# 100 full-image steps cost ~0.02 s per INR on one CPU core (a 13k-INR zoo in ~4-7 minutes).
DEFAULT_STEPS = 100
DEFAULT_LR = 1e-2
DEFAULT_SCHEDULE = "cosine"
DEFAULT_BATCH = 256  # INRs per chunk file / progress update
DEFAULT_MICRO_BATCH = 16  # INRs optimised together: small enough that activations stay in CPU cache
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
_REQUIRED_KEYS = ("version", "dataset", "arch", "param_names", "params", "labels", "psnr", "split", "image_index",
                  "images", "fit")


class InrZooError(RuntimeError):
    """A zoo file exists but is not a valid INR zoo (unreadable, wrong version, missing keys, bad shapes)."""


class InrZooNotFoundError(FileNotFoundError):
    """A zoo file does not exist; the message says how to build it."""


# ----------------------------------------------------------------------------------------------------------------
# Seeds


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """A fixed 64-bit integer mixer (SplitMix64 finaliser) in plain Python, independent of library RNGs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def inr_seeds(seed: int, index: Sequence[int] | torch.Tensor, stream: int = 0) -> list[int]:
    """Per-INR initialisation seeds: a hash of (seed, stream, index) for each index (63-bit, non-negative).

    The zoo uses ``stream`` = the split code and ``index`` = the image's index in its split, so the seed of an
    INR is a function of the image it represents only.
    """
    index = index.tolist() if isinstance(index, torch.Tensor) else list(index)
    base = _mix64(_mix64(int(seed) & _MASK64) ^ (int(stream) & _MASK64))
    return [_mix64(base ^ (int(i) & _MASK64)) & 0x7FFFFFFFFFFFFFFF for i in index]


# ----------------------------------------------------------------------------------------------------------------
# Fitting


def psnr(pred: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item: ``10 log10(peak^2 / mse)``, the mse over all but dim 0.

    Both tensors are on the same scale (e.g. [0, 1] with ``peak=1``); a perfect fit gives ``inf``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    mse = (pred.float() - target.float()).square().reshape(pred.shape[0], -1).mean(dim=1)
    return 10.0 * torch.log10(peak * peak / mse)


def _as_targets(images: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """Images ``[B, H, W]`` or ``[B, C, H, W]`` (float in [0, 1], or uint8) -> targets ``[B, H*W, C]`` in [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4:
        raise ValueError(f"images must be [B, H, W] or [B, C, H, W], got {tuple(images.shape)}")
    b, c, h, w = images.shape
    targets = images.float().permute(0, 2, 3, 1).reshape(b, h * w, c) * 2.0 - 1.0
    return targets.contiguous(), c, h, w


def siren_loss_and_grad(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], coords: torch.Tensor,
                        targets: torch.Tensor, w0: float, workspace: dict | None = None,
                        ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Per-INR mean squared error of B stacked SIRENs and its gradient, backward pass written out by hand.

    Args:
        weights / biases: per layer, ``[B, out, in]`` / ``[B, out]`` (plain weights; ``w0`` is applied here).
        coords: ``[N, in]`` shared inputs, or ``[B, N, in]`` (pass them materialised when calling repeatedly).
        targets: ``[B, N, C]``.
        w0: frequency of the sine activations.
        workspace: optional dict in which the ``[B, N, width]`` activation buffers are kept and reused by the next
            call (saves an allocation per buffer and step); the returned tensors never alias it.
    Returns:
        ``loss [B]`` (mean over N and C of each INR), then the gradients of ``loss.sum()`` with respect to the
        weights and to the biases (lists in layer order, same shapes as the inputs).
    """
    space = {} if workspace is None else workspace

    def buffer(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        found = space.get(name)
        if found is None or tuple(found.shape) != shape or found.dtype != targets.dtype:
            found = space[name] = torch.empty(shape, dtype=targets.dtype, device=targets.device)
        return found

    depth = len(weights) - 1  # hidden layers
    batch, n, c = targets.shape
    inputs = coords if coords.dim() == 3 else coords.expand(batch, *coords.shape).contiguous()
    acts: list[torch.Tensor] = [inputs]
    cosines: list[torch.Tensor] = []
    h = inputs
    for k in range(depth):
        width = weights[k].shape[1]
        z = buffer(f"act{k}", (batch, n, width))
        torch.baddbmm((biases[k] * w0)[:, None, :], h, (weights[k] * w0).transpose(1, 2), out=z)
        cosines.append(torch.cos(z, out=buffer(f"cos{k}", (batch, n, width))))
        h = z.sin_()
        acts.append(h)
    residual = buffer("out", (batch, n, c))
    torch.baddbmm(biases[depth][:, None, :], h, weights[depth].transpose(1, 2), out=residual).sub_(targets)
    loss = residual.square().mean(dim=(1, 2))
    g = residual.mul_(2.0 / (n * c))  # d loss.sum() / d output
    grad_w: list[torch.Tensor] = [torch.empty(0)] * (depth + 1)
    grad_b: list[torch.Tensor] = [torch.empty(0)] * (depth + 1)
    for k in range(depth, -1, -1):
        grad_w[k] = torch.bmm(g.transpose(1, 2), acts[k])
        grad_b[k] = g.sum(dim=1)
        if k > 0:
            # d/d(pre-activation of layer k-1) = (g W_k) * w0 * cos(w0 * pre)
            delta = buffer(f"delta{k - 1}", (batch, n, weights[k].shape[2]))
            g = torch.bmm(g, weights[k] * w0, out=delta).mul_(cosines[k - 1])
    return loss, grad_w, grad_b


def _vmap_loss_and_grad(template: Siren, names: list[str], coords: torch.Tensor):
    """``(loss [B], {name: grad [B, ...]})`` of stacked params via ``torch.func`` (the reference backend)."""

    def one(params: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return (functional_call(template, params, (coords,)) - target).square().mean()

    both = vmap(grad_and_value(one))

    def fn(params: dict[str, torch.Tensor], targets: torch.Tensor):
        grads, loss = both(params, targets)
        return loss, grads

    return fn


def _lr_at(step: int, steps: int, lr: float, schedule: str) -> float:
    """Learning rate of update ``step`` (0-based) out of ``steps``."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
    raise ValueError(f"unknown schedule {schedule!r}; choose 'constant' or 'cosine'")


def fit_inrs(images: torch.Tensor, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
             seeds: int | Sequence[int] | torch.Tensor = 0, *, hidden: Sequence[int] = DEFAULT_HIDDEN,
             w0: float = DEFAULT_W0, schedule: str = DEFAULT_SCHEDULE, micro_batch: int = DEFAULT_MICRO_BATCH,
             backend: str = "fast", init: dict[str, torch.Tensor] | None = None, progress: bool = False,
             device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Fit one SIREN per image, many at once.

    Args:
        images: ``[B, H, W]`` or ``[B, C, H, W]``, float in [0, 1] (uint8 is divided by 255).
        steps: full-image Adam steps per INR.
        lr: Adam's peak learning rate (betas 0.9 / 0.999, eps 1e-8).
        seeds: one int (INR ``i`` then gets ``inr_seeds(seeds, [i])``) or one seed per image; each INR is
            initialised from its own seed (SIREN initialisation, :func:`sample_siren_params`).
        hidden / w0: architecture ``2 -> hidden... -> C`` with ``sin(w0 .)`` activations.
        schedule: ``"cosine"`` (decay to 0 over ``steps``) or ``"constant"``.
        micro_batch: INRs optimised together (the result does not depend on it; it only sets speed / memory).
        backend: ``"fast"`` (hand-written batched backward) or ``"vmap"`` (``torch.func.vmap(grad(...))``).
        init: optional starting parameters ``{name: [B, ...]}`` instead of the seeded initialisation.
        progress: show a tqdm bar over INRs.
        device: where the micro-batches are fitted (module docstring).
    Returns:
        ``params`` ``{name: [B, *shape]}`` float32 (``Siren.state_dict()`` names and order), and ``psnr [B]`` in dB
        of the final reconstruction (clamped to [0, 1]) against the image; on the CPU.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if backend not in ("fast", "vmap"):
        raise ValueError(f"unknown backend {backend!r}; choose 'fast' or 'vmap'")
    targets, channels, h, w = _as_targets(images)
    batch = targets.shape[0]
    hidden = tuple(int(x) for x in hidden)
    shapes = siren_param_shapes(2, hidden, channels)
    names = list(shapes)
    if init is None:
        seed_list = inr_seeds(seeds, range(batch)) if isinstance(seeds, int) else (
            seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds))
        if len(seed_list) != batch:
            raise ValueError(f"{len(seed_list)} seeds for {batch} images")
        params = sample_siren_params(seed_list, 2, hidden, channels, w0)
    else:
        params = {name: init[name].detach().float().clone() for name in names}
    device = torch.device(device)
    coords = make_coords(h, w, device=device)
    template = Siren(2, hidden, channels, w0).to(device) if backend == "vmap" else None
    micro_batch = max(1, int(micro_batch))
    results: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    scores: list[torch.Tensor] = []
    bar = tqdm(total=batch, desc="fit INRs", unit="INR", disable=not progress, leave=False)
    for start in range(0, batch, micro_batch):
        stop = min(batch, start + micro_batch)
        part = {name: params[name][start:stop].to(device).contiguous() for name in names}
        target = targets[start:stop].to(device)
        fitted = _fit_chunk(part, names, target, coords, steps, lr, w0, schedule, template)
        for name in names:
            results[name].append(fitted[name].cpu())
        with torch.no_grad():
            out = _forward(fitted, names, coords, w0)
        scores.append(psnr(((out + 1.0) * 0.5).clamp(0.0, 1.0), (target + 1.0) * 0.5).cpu())
        bar.update(stop - start)
    bar.close()
    stacked = {name: (torch.cat(results[name]) if results[name] else torch.zeros(0, *shapes[name])) for name in names}
    return stacked, (torch.cat(scores) if scores else torch.zeros(0))


def _forward(params: dict[str, torch.Tensor], names: list[str], coords: torch.Tensor, w0: float) -> torch.Tensor:
    """Stacked SIREN forward ``[B, N, C]`` (no autograd bookkeeping needed; same maths as :func:`render`)."""
    layers = len(names) // 2
    batch = params[names[0]].shape[0]
    h = coords.expand(batch, *coords.shape)
    for k in range(layers):
        weight, bias = params[names[2 * k]], params[names[2 * k + 1]]
        h = torch.baddbmm(bias[:, None, :], h, weight.transpose(1, 2))
        if k < layers - 1:
            h = (h * w0).sin_()
    return h


def _fit_chunk(params: dict[str, torch.Tensor], names: list[str], targets: torch.Tensor, coords: torch.Tensor,
               steps: int, lr: float, w0: float, schedule: str, template: Siren | None) -> dict[str, torch.Tensor]:
    """Adam on one micro-batch of stacked parameters, all held in one flat ``[b, P]`` buffer."""
    batch = targets.shape[0]
    sizes = [params[name][0].numel() for name in names]
    flat = torch.cat([params[name].reshape(batch, -1) for name in names], dim=1)
    views = dict(zip(names, (v.view(batch, *params[n].shape[1:]) for v, n in
                             zip(torch.split(flat, sizes, dim=1), names))))
    exp_avg = torch.zeros_like(flat)
    exp_avg_sq = torch.zeros_like(flat)
    beta1, beta2 = ADAM_BETAS
    weights = [views[n] for n in names[0::2]]
    biases = [views[n] for n in names[1::2]]
    vmap_fn = _vmap_loss_and_grad(template, names, coords) if template is not None else None
    inputs = coords.expand(batch, *coords.shape).contiguous()
    workspace: dict = {}
    for step in range(steps):
        if vmap_fn is None:
            _, grad_w, grad_b = siren_loss_and_grad(weights, biases, inputs, targets, w0, workspace)
            grads = [g for pair in zip(grad_w, grad_b) for g in pair]
        else:
            _, grad_dict = vmap_fn({n: views[n] for n in names}, targets)
            grads = [grad_dict[n] for n in names]
        g = torch.cat([x.reshape(batch, -1) for x in grads], dim=1)
        t = step + 1
        exp_avg.mul_(beta1).add_(g, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (exp_avg_sq / (1.0 - beta2 ** t)).sqrt_().add_(ADAM_EPS)
        step_size = _lr_at(step, steps, lr, schedule) / (1.0 - beta1 ** t)
        flat.addcdiv_(exp_avg, denom, value=-step_size)
    return {name: views[name].clone() for name in names}


# ----------------------------------------------------------------------------------------------------------------
# The zoo on disk


class InrZoo:
    """A set of fitted INRs with their images, labels, PSNRs and splits (all tensors indexed alike, ``[M, ...]``).

    Attributes:
        params: ``{name: [M, *shape]}`` float32, names in ``Siren.state_dict()`` order (``param_names``).
        labels: int64 ``[M]``; psnr: float32 ``[M]`` dB; splits: int8 ``[M]`` (0 train, 1 val, 2 test);
        image_index: int64 ``[M]`` (index in the source split of ``tasks.data.load_dataset``);
        images: uint8 ground truth, ``[M, H, W]`` (gray-scale, one output) or ``[M, C, H, W]`` (C outputs, e.g.
        RGB); arch: ``{in_features, hidden, out_features, w0}`` (``out_features`` = channels);
        dataset: short data set name; fit: the fit settings; path: the file it came from (or None).
    """

    def __init__(self, data: dict, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        _validate(data, self.path)
        self.dataset: str = data["dataset"]
        self.arch: dict = dict(data["arch"])
        self.param_names: list[str] = list(data["param_names"])
        self.params: dict[str, torch.Tensor] = {n: data["params"][n] for n in self.param_names}
        self.labels: torch.Tensor = data["labels"]
        self.psnr: torch.Tensor = data["psnr"]
        self.splits: torch.Tensor = data["split"]
        self.image_index: torch.Tensor = data["image_index"]
        self.images: torch.Tensor = data["images"]
        self.fit: dict = dict(data["fit"])

    # -- loading / saving
    @classmethod
    def load(cls, path: str | Path) -> "InrZoo":
        """Read a zoo file written by :func:`build_inr_zoo` (``torch.load(weights_only=True)``), checking it."""
        path = Path(path)
        if not path.is_file():
            raise InrZooNotFoundError(f"INR zoo file {path} not found. {_build_hint(path)}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated zip, pickle errors, ...
            raise InrZooError(f"INR zoo file {path} cannot be read ({type(err).__name__}: {err}); delete it and "
                              f"rebuild. {_build_hint(path)}") from err
        return cls(data, path)

    def to_dict(self) -> dict:
        return {
            "version": FORMAT_VERSION, "dataset": self.dataset, "arch": dict(self.arch),
            "param_names": list(self.param_names), "params": dict(self.params), "labels": self.labels,
            "psnr": self.psnr, "split": self.splits, "image_index": self.image_index, "images": self.images,
            "fit": dict(self.fit),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        atomic_save({k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in self.to_dict().items()},
                     path)
        self.path = path
        return path

    # -- views
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        counts = {name: int((self.splits == code).sum()) for name, code in SPLIT_CODES.items()}
        return f"InrZoo({self.dataset!r}, {len(self)} INRs {counts}, arch={self.arch})"

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> "InrZoo":
        """The INRs at ``index`` (int indices, a bool mask or a slice), in that order."""
        if not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            index = index.long().reshape(-1)
        data = self.to_dict()
        for key in ("labels", "psnr", "split", "image_index", "images"):
            data[key] = data[key][index]
        data["params"] = {n: v[index] for n, v in self.params.items()}
        zoo = InrZoo(data)
        zoo.path = self.path
        return zoo

    def split(self, name: str) -> "InrZoo":
        """The ``"train"``, ``"val"`` or ``"test"`` INRs."""
        if name not in SPLIT_CODES:
            raise ValueError(f"unknown split {name!r}; choose one of {tuple(SPLIT_CODES)}")
        return self.subset(self.splits == SPLIT_CODES[name])

    # -- networks
    def template(self) -> Siren:
        """A fresh :class:`Siren` of this zoo's architecture (its own weights are random)."""
        return Siren(**self.arch)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """Colour channels of the images = output features of the INRs (1 gray-scale, 3 RGB)."""
        return int(self.arch["out_features"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (self.channels, *self.image_size)

    def render(self, index_or_params: torch.Tensor | Sequence[int] | slice | dict | int | None = None,
               size: int | tuple[int, int] | None = None, clamp: bool = True) -> torch.Tensor:
        """Images ``[B, H, W]`` in [0, 1] (``[B, C, H, W]`` for C > 1 channels) drawn by INRs.

        Args:
            index_or_params: INR indices (int, sequence, tensor, slice; default all) of this zoo, or a params dict
                ``{name: [B, *shape]}`` (e.g. augmented or edited weights; differentiable).
            size: output side or ``(H, W)``; default the images' size (other sizes resample the INR).
            clamp: clamp to [0, 1] (gradients vanish outside; pass False for training through it).
        """
        if isinstance(index_or_params, dict):
            params = index_or_params
        else:
            index = slice(None) if index_or_params is None else index_or_params
            if isinstance(index, int):
                index = [index]
            params = {n: v[index] for n, v in self.params.items()}
        h, w = self.image_size if size is None else ((size, size) if isinstance(size, int) else tuple(size))
        coords = make_coords(h, w, dtype=next(iter(params.values())).dtype, device=next(iter(params.values())).device)
        out = render(self.template(), params, coords)  # [B, h*w, C]
        images = (out + 1.0) * 0.5
        if clamp:
            images = images.clamp(0.0, 1.0)
        images = images.reshape(images.shape[0], h, w, -1).permute(0, 3, 1, 2)
        return images[:, 0] if images.shape[1] == 1 else images

    def summary(self) -> dict[str, dict[str, float]]:
        """PSNR count / mean / std / min / max per split (and "all")."""
        rows = {}
        for name, mask in [*((n, self.splits == c) for n, c in SPLIT_CODES.items()),
                           ("all", torch.ones_like(self.splits, dtype=torch.bool))]:
            values = self.psnr[mask].double()
            if values.numel():
                rows[name] = {"count": int(values.numel()), "mean": float(values.mean()),
                              "std": float(values.std()) if values.numel() > 1 else 0.0,
                              "min": float(values.min()), "max": float(values.max())}
        return rows


def _validate(data: object, path: Path | None) -> None:
    where = f"INR zoo file {path}" if path is not None else "INR zoo data"
    hint = f" {_build_hint(path)}" if path is not None else ""

    def fail(msg: str) -> InrZooError:
        return InrZooError(f"{where}: {msg}.{hint}")

    if not isinstance(data, dict):
        raise fail(f"expected a dict, got {type(data).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise fail(f"missing keys {missing}")
    if data["version"] != FORMAT_VERSION:
        raise fail(f"format version {data['version']!r}, this code reads version {FORMAT_VERSION}; rebuild it")
    arch = data["arch"]
    if not isinstance(arch, dict) or any(k not in arch for k in ("in_features", "hidden", "out_features", "w0")):
        raise fail(f"bad 'arch' {arch!r}")
    shapes = siren_param_shapes(arch["in_features"], arch["hidden"], arch["out_features"])
    if list(data["param_names"]) != list(shapes):
        raise fail(f"param_names {data['param_names']} do not match the architecture ({list(shapes)})")
    count = data["labels"].shape[0] if isinstance(data["labels"], torch.Tensor) else -1
    for name, shape in shapes.items():
        value = data["params"].get(name) if isinstance(data["params"], dict) else None
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (count, *shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise fail(f"params[{name!r}] is {got}, expected {(count, *shape)}")
    for key, dtype in (("labels", torch.int64), ("psnr", torch.float32), ("split", torch.int8),
                       ("image_index", torch.int64), ("images", torch.uint8)):
        value = data[key]
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.shape[:1] != (count,):
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise fail(f"{key!r} is {got}, expected {dtype} with {count} rows")
    images, outputs = data["images"], int(arch["out_features"])
    if not (images.dim() == 3 and outputs == 1) and not (images.dim() == 4 and images.shape[1] == outputs):
        raise fail(f"'images' of shape {tuple(images.shape)} do not fit {outputs} output(s): expected [M, H, W] for "
                   f"one output, [M, {outputs}, H, W] otherwise")


def _build_hint(path: Path | None) -> str:
    match = re.fullmatch(r"inr-(?P<ds>[a-z0-9]+)-(?P<tr>\d+)-(?P<va>\d+)-(?P<te>\d+)-s(?P<seed>\d+)-(?P<h>[0-9a-f]+)\.pt",
                         path.name) if path is not None else None
    if match:
        args = (f"--dataset {match['ds']} --n-train {match['tr']} --n-val {match['va']} --n-test {match['te']} "
                f"--seed {match['seed']}")
        root = path.parent.parent
        return (f"Build it with: L2O_DATA={root} python -m tasks.weight_space.inr_zoo {args} (plus the --steps/--lr "
                f"whose settings hash to {match['h']}; the defaults unless you changed them).")
    return "Build zoos with: python -m tasks.weight_space.inr_zoo --dataset mnist|fmnist|cifar10 [--data-root ROOT]."




def _fit_settings(steps: int, lr: float, schedule: str, hidden: Sequence[int], w0: float,
                  out_features: int = 1) -> dict:
    """Everything that changes the fitted weights (the batch size does not: INRs are fitted independently).

    ``out_features`` is added only when it is not 1, so that the settings (hence the cache key and the file name)
    of gray-scale zoos are exactly those from before colour zoos existed."""
    settings = {"format": FORMAT_VERSION, "steps": int(steps), "lr": float(lr), "schedule": schedule,
                "hidden": [int(x) for x in hidden], "w0": float(w0), "optimizer": "adam", "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS, "init": "siren", "target": "[-1,1]", "coords": "[-1,1] row-major"}
    if int(out_features) != 1:
        settings["out_features"] = int(out_features)
    return settings


def zoo_path(dataset: str, root: str | Path | None = None, n_train: int = 10000, n_val: int = 1000,
             n_test: int = 2000, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0,
             schedule: str = DEFAULT_SCHEDULE, hidden: Sequence[int] = DEFAULT_HIDDEN, w0: float = DEFAULT_W0,
             cache_dir: str | Path | None = None) -> Path:
    """Where :func:`build_inr_zoo` caches this zoo: ``<cache dir>/inr-<ds>-<ntr>-<nva>-<nte>-s<seed>-<hash>.pt``, the
    cache dir being ``cache_dir`` or :func:`~tasks.weight_space.storage.default_cache_dir` (``$L2O_ZOO_DIR``,
    ``<root>/weight_space``, or ``~/.cache/l2o/weight_space`` when the data root is read-only).

    The hash is that of the fit settings (:func:`_fit_settings`; the SIREN's output count is the data set's channel
    count, part of the hash for colour data sets only)."""
    info = dataset_info(dataset)
    short = info.short
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(resolve_data_root(root))
    settings = json.dumps(_fit_settings(steps, lr, schedule, hidden, w0, info.shape[0]), sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return folder / f"inr-{short}-{n_train}-{n_val}-{n_test}-s{seed}-{digest}.pt"


def build_inr_zoo(dataset: str, root: str | Path | None = None, n_train: int = 10000, n_val: int = 1000,
                  n_test: int = 2000, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, batch: int = DEFAULT_BATCH,
                  seed: int = 0, force: bool = False, *, schedule: str = DEFAULT_SCHEDULE,
                  hidden: Sequence[int] = DEFAULT_HIDDEN, w0: float = DEFAULT_W0,
                  micro_batch: int = DEFAULT_MICRO_BATCH, cache_dir: str | Path | None = None, strict: bool = True,
                  progress: bool = True, device: str | torch.device = "cpu") -> Path:
    """Fit (or find cached) the INR zoo of ``dataset`` ("mnist", "fmnist" or "cifar10") and return its file path.

    One SIREN ``2 -> hidden -> C`` per image, C the data set's channels (1, or 3 for CIFAR-10). INRs are fitted
    to the first ``n_train`` images of ``load_dataset(dataset, "train")``, the first ``n_val`` of ``"val"`` and the
    first ``n_test`` of ``"test"``, in that order. INR seeds are a hash of (seed, split, image index). Work is done in chunks of ``batch`` INRs, each saved as it finishes, so a killed build resumes
    where it stopped; ``force`` discards the cached file and any chunks.

    Args:
        root: data root (default ``$L2O_DATA``); the zoo goes to ``<root>/weight_space/`` unless ``cache_dir``.
        strict: passed to ``load_dataset`` (False accepts small synthetic data files, for tests).
        device: where the INRs are fitted (not part of the file name: the fit settings are the same on every
            device; the weights agree up to floating-point rounding).
    """
    info = dataset_info(dataset)
    channels = int(info.shape[0])
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(c < 0 for c in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(f"need non-negative split sizes with a positive total, got {counts}")
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    path = zoo_path(info.name, root, n_train, n_val, n_test, steps, lr, seed, schedule, hidden, w0, cache_dir)
    partial = path.with_name(path.stem + ".partial")
    if path.is_file() and not force:
        return path
    if force and partial.is_dir():
        shutil.rmtree(partial)

    images, labels, splits, index = [], [], [], []
    for name, count in counts.items():
        if count == 0:
            continue
        data = load_dataset(info.name, name, root, strict=strict)
        if count > len(data):
            raise ValueError(f"{info.name}/{name} has {len(data)} images, asked for {count}")
        images.append(data.images[:count, 0] if channels == 1 else data.images[:count])  # [n, H, W] / [n, C, H, W]
        labels.append(data.labels[:count])
        splits.append(torch.full((count,), SPLIT_CODES[name], dtype=torch.int8))
        index.append(torch.arange(count, dtype=torch.int64))
    images_t, labels_t = torch.cat(images).contiguous(), torch.cat(labels).contiguous()
    splits_t, index_t = torch.cat(splits), torch.cat(index)
    seeds = torch.tensor([s for code in SPLIT_CODES.values() for s in
                          inr_seeds(seed, index_t[splits_t == code], stream=code)], dtype=torch.int64)
    total = len(labels_t)
    key = path.stem

    chunks: list[dict] = []
    bar = tqdm(total=total, desc=f"fit {path.name}", unit="INR", disable=not progress, smoothing=0.1)
    t0 = time.time()
    for start in range(0, total, batch):
        stop = min(total, start + batch)
        chunk_file = partial / f"rows-{start:07d}-{stop:07d}.pt"
        chunk = _load_chunk(chunk_file, key, start, stop)
        if chunk is None:
            params, scores = fit_inrs(images_t[start:stop], steps, lr, seeds[start:stop], hidden=hidden, w0=w0,
                                      schedule=schedule, micro_batch=micro_batch, device=device)
            chunk = {"key": key, "start": start, "stop": stop, "params": params, "psnr": scores}
            atomic_save(chunk, chunk_file)
        chunks.append(chunk)
        bar.set_postfix(psnr=f"{float(torch.cat([c['psnr'] for c in chunks]).mean()):.2f}dB", refresh=False)
        bar.update(stop - start)
    bar.close()

    names = list(siren_param_shapes(2, hidden, channels))
    zoo = InrZoo({
        "version": FORMAT_VERSION, "dataset": info.short,
        "arch": {"in_features": 2, "hidden": [int(x) for x in hidden], "out_features": channels, "w0": float(w0)},
        "param_names": names,
        "params": {n: torch.cat([c["params"][n] for c in chunks]).contiguous() for n in names},
        "labels": labels_t, "psnr": torch.cat([c["psnr"] for c in chunks]).float(), "split": splits_t,
        "image_index": index_t, "images": images_t,
        "fit": {"steps": int(steps), "lr": float(lr), "batch": int(batch), "seed": int(seed), "schedule": schedule,
                "micro_batch": int(micro_batch), "seconds": round(time.time() - t0, 1), "device": str(device)},
    })
    zoo.save(path)
    if partial.is_dir():
        shutil.rmtree(partial)
    return path


def _load_chunk(path: Path, key: str, start: int, stop: int) -> dict | None:
    """A finished chunk of an interrupted build, or None (missing, unreadable or from another build)."""
    if not path.is_file():
        return None
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    ok = (isinstance(chunk, dict) and chunk.get("key") == key and chunk.get("start") == start
          and chunk.get("stop") == stop and isinstance(chunk.get("psnr"), torch.Tensor)
          and chunk["psnr"].shape == (stop - start,))
    return chunk if ok else None


def load_or_build_inr_zoo(dataset: str, root: str | Path | None = None, **kw) -> InrZoo:
    """:func:`build_inr_zoo` (a no-op when cached) followed by :meth:`InrZoo.load`."""
    return InrZoo.load(build_inr_zoo(dataset, root, **kw))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _format_summary(zoo: InrZoo) -> str:
    lines = [f"{'split':<6} {'count':>6} {'mean dB':>8} {'std':>6} {'min':>6} {'max':>6}"]
    for name, row in zoo.summary().items():
        lines.append(f"{name:<6} {row['count']:>6d} {row['mean']:>8.2f} {row['std']:>6.2f} {row['min']:>6.2f} "
                     f"{row['max']:>6.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.weight_space.inr_zoo",
        description="Fit one SIREN per image of MNIST / Fashion-MNIST / CIFAR-10 (3 outputs, RGB) (cached under "
                    "<data root>/weight_space/) and print the PSNR per split.")
    parser.add_argument("--dataset", required=True, help="mnist, fmnist (fashion-mnist) or cifar10")
    parser.add_argument("--data-root", default=None, help="data root (default: $L2O_DATA)")
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=("cosine", "constant"))
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="INRs per saved chunk")
    parser.add_argument("--micro-batch", type=int, default=DEFAULT_MICRO_BATCH, help="INRs optimised together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None,
                        help="default: $L2O_ZOO_DIR, <data root>/weight_space, or ~/.cache/l2o/weight_space when the "
                             "data root is read-only")
    parser.add_argument("--force", action="store_true", help="refit even if the zoo is cached")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the INRs are fitted (default cpu)")
    args = parser.parse_args(argv)
    try:
        dataset_info(args.dataset)
    except KeyError as err:
        parser.error(str(err.args[0]))
    try:
        device = parse_device(args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    try:
        path = build_inr_zoo(args.dataset, args.data_root, args.n_train, args.n_val, args.n_test, args.steps, args.lr,
                             args.batch, args.seed, args.force, schedule=args.schedule, micro_batch=args.micro_batch,
                             cache_dir=args.cache_dir, device=device)
        zoo = InrZoo.load(path)
    except (DataNotFoundError, CorruptDataError, InrZooError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{zoo!r}\nfile: {path}\nfit: {zoo.fit} (this call: {time.time() - start:.1f} s)")
    print(_format_summary(zoo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
