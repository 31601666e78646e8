"""A zoo of small heterogeneous CNNs trained on Fashion-MNIST or CIFAR-10, each stored with its test accuracy.

Design (as in the CNN Wild Park / small-CNN-zoo papers, scaled to one CPU core):

* ``n_archs`` random architectures (`cnn_zoo_member.sample_architecture`: 1-3 stride-2 convs of width 4..16, 3x3 or
  5x5 kernels, relu / tanh / gelu / silu / leaky_relu, global average pool, linear head), ``nets_per_arch`` runs
  of each. A run has its own init seed, init scale (log-uniform multiplier of PyTorch's default init) and Adam
  learning rate (log-uniform); batch size 32 (Fashion-MNIST) or 64 (CIFAR-10).
* The runs of one architecture are one *group*, trained together: parameters stacked with
  ``torch.func.stack_module_state``, per-network losses and gradients with ``vmap(grad(functional_call))``, and
  a hand-written functional Adam whose learning rate is a per-network tensor. The runs of a group share one data
  order (one ``BatchStream`` over the training split, which excludes the validation carve-out, seeded per
  group), which makes the first conv of the whole group one ungrouped conv (1.3-2x faster per step); different
  groups see different orders. `train_group` also trains runs with different data orders.
* Training lengths vary through *snapshots*: every run is saved after each step in ``snapshots``
  (default 10, 25, 60, 150, 300, 600) and every snapshot is its own zoo member. Snapshots whose weights are not
  finite are dropped (counted in ``eval["dropped_nonfinite"]``); badly trained networks that occur naturally
  (too small a learning rate, too large an init) are kept.
* Test accuracy of every member on a fixed test subset: the first ``n_test`` images of the official test set,
  normalised like ``BatchStream``; `evaluate_network` does exactly the same computation, so re-evaluating a
  stored member reproduces its stored accuracy bit for bit.
* The train / val / test split of the zoo is drawn per *run*: all snapshots of a run share a split.

``device`` (``--device cuda``) trains the groups and evaluates the members on a GPU (the initial weights are drawn on
the CPU, the same on every device); the stored weights are CPU tensors. Accuracies are exact re-evaluations on the
device the zoo was built on (``eval["device"]``); elsewhere they agree up to floating-point rounding.

The zoo is cached at ``<cache dir>/cnnzoo-<dataset>-<settings hash>.pt`` where the cache dir is ``cache_dir``,
else ``$L2O_ZOO_DIR``, else ``<data root>/weight_space`` (or ``~/.cache/l2o/weight_space`` when the data root
is not writable). It is written atomically; finished groups are kept in a ``.parts`` folder
next to it, so an interrupted build resumes where it stopped.

Rebuild from the command line::

    OMP_NUM_THREADS=1 python -m tasks.weight_space.cnn_zoo --dataset fmnist
    OMP_NUM_THREADS=1 python -m tasks.weight_space.cnn_zoo --dataset cifar10
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from tqdm import tqdm

from tasks.data import (
    BatchStream,
    CorruptDataError,
    DataNotFoundError,
    ImageDataset,
    dataset_info,
    load_dataset,
    resolve_data_root,
)
from tasks.devices import device_or_exit
from tasks.weight_space.cnn_zoo_member import (
    ACTIVATIONS,
    DEPTHS,
    INIT_SCALE_RANGE,
    KERNELS,
    KMAX,
    LR_RANGE,
    WIDTHS,
    CnnSpec,
    build_cnn,
    log_uniform,
    sample_architecture,
)

from .storage import ZOO_DIR_ENV, atomic_save, default_cache_dir

VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SNAPSHOTS = (10, 25, 60, 150, 300, 600)
# Per data set: 25 architectures x 20 runs x 6 snapshots = 3000 members (GitHub issue 19 doubled the first zoos'
# 10 runs per architecture; those took 8-9 min for Fashion-MNIST (batch 32) and 10 min for CIFAR-10 (batch 64: its
# accuracies stay low with 32) on one shared core, and a group of 20 runs is one vmapped computation), plus
# evaluation on the first 2000 test images (the full 10k would add ~5 min per zoo).
DEFAULTS = {
    "fashion-mnist": dict(n_archs=25, nets_per_arch=20, n_test=2000, batch_size=32),
    "cifar10": dict(n_archs=25, nets_per_arch=20, n_test=2000, batch_size=64),
}
EVAL_CHUNK = 1000  # test images per forward pass, fixed so that stored and re-evaluated accuracies agree exactly
_REQUIRED_KEYS = ("version", "dataset", "specs", "params", "test_acc", "train_loss", "step", "split", "run", "eval")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class ZooNotFoundError(FileNotFoundError):
    """The zoo file does not exist; the message says how to build it."""


class CorruptZooError(ValueError):
    """The zoo file exists but cannot be read or lacks what a zoo file must hold."""


# ---------------------------------------------------------------------------------------------------------------
# Flat parameter vectors (state_dict order of build_cnn(spec))


def param_names(spec: CnnSpec) -> list[str]:
    return list(build_cnn(spec.architecture(), init=False).state_dict().keys())


def flatten_state(state: dict[str, torch.Tensor], names: Sequence[str], stacked: bool = False) -> torch.Tensor:
    """``{name: tensor}`` -> one float32 vector ``[P]`` in ``names`` order; with ``stacked`` every tensor has a
    leading network axis ``G`` and the result is ``[G, P]``."""
    if stacked:
        return torch.cat([state[n].reshape(state[n].shape[0], -1) for n in names], dim=1).float()
    return torch.cat([state[n].reshape(-1) for n in names]).float()


def unflatten_state(flat: torch.Tensor, spec: CnnSpec) -> dict[str, torch.Tensor]:
    """``[P]`` -> the ``state_dict`` of ``build_cnn(spec)`` (views into ``flat``)."""
    template = build_cnn(spec.architecture(), init=False).state_dict()
    total = sum(t.numel() for t in template.values())
    if flat.dim() != 1 or flat.numel() != total:
        raise ValueError(f"flat vector of shape {tuple(flat.shape)} does not fit {spec.channels} "
                         f"k={spec.kernel_size} ({total} parameters)")
    out, offset = {}, 0
    for name, t in template.items():
        out[name] = flat[offset:offset + t.numel()].view(t.shape)
        offset += t.numel()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Batched training of one group (one architecture, several runs)


def _check_group(specs: Sequence[CnnSpec]) -> None:
    if not specs:
        raise ValueError("a group needs at least one spec")
    keys = {s.arch_key() for s in specs}
    if len(keys) != 1:
        raise ValueError(f"all specs of a group must share one architecture, got {len(keys)}: {sorted(keys)}")
    if len({s.batch_size for s in specs}) != 1:
        raise ValueError("all specs of a group must share batch_size")


def train_group(specs: Sequence[CnnSpec], train: ImageDataset, snapshots: Sequence[int],
                progress: bool | str = False, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Train the runs ``specs`` (one architecture) together and return their weights at every snapshot step.

    Run g starts from ``build_cnn(specs[g])`` (its seed and init scale) and takes ``max(snapshots)`` Adam steps
    with learning rate ``specs[g].lr`` on batches ``BatchStream(train, batch_size, seed=specs[g].data_seed)
    .batch(t)``. When all runs share ``data_seed`` (as in the zoo) the batch is computed once and broadcast
    (``vmap`` with an unbatched input: the first conv of all networks becomes one ungrouped conv, about 1.3-2x
    faster than per-network batches); otherwise every run reads its own batches. The computation of one run does
    not depend on the other runs of the group (up to floating-point rounding of the batched convolutions), so
    training a run alone gives the same weights (see the tests).

    The runs train on ``device`` (built on the CPU, then moved); the returned tensors are on the CPU.

    Returns:
        ``params`` float32 ``[S, G, P]`` (snapshot, run, flat parameters in state_dict order) and ``train_loss``
        float32 ``[S, G]``: the mean mini-batch loss over the steps since the previous snapshot (at step 0: the
        loss of batch 0 at the initial weights).
    """
    _check_group(specs)
    device = torch.device(device)
    snaps = sorted({int(s) for s in snapshots})
    if not snaps or snaps[0] < 0:
        raise ValueError(f"snapshots must be non-negative step counts, got {snapshots}")
    total = snaps[-1]
    names = param_names(specs[0])
    models = [build_cnn(s) for s in specs]
    params, _ = stack_module_state(models)
    params = {n: params[n].detach().to(device, copy=True) for n in names}
    base = build_cnn(specs[0].architecture(), init=False).to(device)

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, p, (x,)), y)

    shared = len({s.data_seed for s in specs}) == 1
    step_fn = vmap(grad_and_value(loss_fn), in_dims=(0, None, None) if shared else 0)
    # The shared stream keeps the data set on the device; per-run streams stay on the CPU (one device copy of the
    # data set each would be G copies) and their batches are moved per step.
    streams = [BatchStream(train, specs[0].batch_size, seed=s.data_seed, device=device if shared else "cpu")
               for s in (specs[:1] if shared else specs)]
    G, B = len(specs), specs[0].batch_size
    lr = torch.tensor([s.lr for s in specs], dtype=torch.float32, device=device)
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    b1, b2 = ADAM_BETAS
    out_params = torch.empty(len(snaps), G, sum(p[0].numel() for p in params.values()))
    out_loss = torch.empty(len(snaps), G)
    loss_sum, loss_count, k = torch.zeros(G, device=device), 0, 0
    bar = tqdm(range(total + (1 if total == 0 else 0)), desc=progress if isinstance(progress, str) else "group",
               unit="step", leave=False, disable=not progress, mininterval=1.0)
    for t in bar:
        if shared:
            x, y = streams[0].batch(t)
        else:
            idx = torch.stack([st.indices(t) for st in streams]).reshape(-1)
            x = streams[0].normalise(train.images[idx]).view(G, B, *train.shape).to(device)
            y = train.labels[idx].view(G, B).to(device)
        with torch.no_grad():
            grads, loss = step_fn(params, x, y)
        if t == 0 and snaps[0] == 0:
            out_params[k], out_loss[k] = flatten_state(params, names, stacked=True).cpu(), loss.cpu()
            k += 1
        if total == 0:
            break
        with torch.no_grad():
            bc1, bc2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
            for n in names:
                g = grads[n]
                m[n].mul_(b1).add_(g, alpha=1 - b1)
                v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v[n] / bc2).sqrt_().add_(ADAM_EPS)
                step = lr.view(G, *([1] * (g.dim() - 1))) / bc1
                params[n] = params[n] - step * m[n] / denom
        loss_sum += loss
        loss_count += 1
        if t + 1 in snaps:
            out_params[k] = flatten_state(params, names, stacked=True).cpu()
            out_loss[k] = (loss_sum / loss_count).cpu()
            loss_sum, loss_count, k = torch.zeros(G, device=device), 0, k + 1
    bar.close()
    return {"params": out_params, "train_loss": out_loss, "steps": torch.tensor(snaps)}


# ---------------------------------------------------------------------------------------------------------------
# Test accuracy

_TEST_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def load_test_subset(dataset: str, root: str | Path | None = None, n_test: int = 2000,
                     strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed test subset: the first ``n_test`` images of the official test set (all when there are fewer),
    normalised like ``BatchStream``: x float32 ``[n, C, H, W]``, y int64 ``[n]``."""
    data = load_dataset(dataset, "test", root, strict=strict)
    key = (data.name, str(resolve_data_root(root).resolve()), int(n_test), strict)
    if key not in _TEST_CACHE:
        n = min(int(n_test), len(data))
        stream = BatchStream(data, batch_size=max(1, n))
        _TEST_CACHE[key] = (stream.normalise(data.images[:n]), data.labels[:n].clone())
    return _TEST_CACHE[key]


def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Number of examples whose arg-max logit is the label, in fixed chunks of EVAL_CHUNK examples (moved to the
    model's device chunk by chunk)."""
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_CHUNK):
            logits = model(x[start:start + EVAL_CHUNK].to(device))
            correct += int((logits.argmax(dim=1) == y[start:start + EVAL_CHUNK].to(device)).sum())
    return correct


def evaluate_network(model: nn.Module, dataset: str, root: str | Path | None = None, n_test: int = 2000,
                     strict: bool = True) -> float:
    """Test accuracy of ``model`` on the zoo's test subset (first ``n_test`` official test images, the zoo's
    normalisation), on the model's device; the same computation that produced the stored ``test_acc``."""
    x, y = load_test_subset(dataset, root, n_test, strict)
    was_training = model.training
    model.eval()
    try:
        return count_correct(model, x, y) / len(y)
    finally:
        model.train(was_training)


def _count_correct_group(specs_arch: CnnSpec, flats: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                         device: str | torch.device = "cpu") -> list[int]:
    """Correct counts of every row of ``flats`` ``[M, P]`` (one architecture), one standalone module each on
    ``device``: the exact computation of `evaluate_network` (a vmap'd evaluation would round differently from it)."""
    model = build_cnn(specs_arch, init=False).to(device)
    x, y = x.to(device), y.to(device)  # once per group, not per member
    out = []
    for flat in flats:
        model.load_state_dict(unflatten_state(flat, specs_arch))
        out.append(count_correct(model, x, y))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Building the zoo


def zoo_settings(dataset: str, n_archs: int, nets_per_arch: int, snapshots: Sequence[int], batch_size: int,
                 n_test: int, seed: int, split_fractions: Sequence[float]) -> dict:
    """Everything that determines the zoo's content (hashed into its file name)."""
    return {
        "version": VERSION, "dataset": dataset_info(dataset).name, "n_archs": int(n_archs),
        "nets_per_arch": int(nets_per_arch), "snapshots": sorted({int(s) for s in snapshots}),
        "batch_size": int(batch_size), "n_test": int(n_test), "seed": int(seed),
        "split_fractions": [float(f) for f in split_fractions],
        "design": {"widths": list(WIDTHS), "depths": list(DEPTHS), "kernels": list(KERNELS), "kmax": KMAX,
                   "activations": sorted(ACTIVATIONS), "optimizer": "adam", "betas": list(ADAM_BETAS),
                   "init_scale_range": list(INIT_SCALE_RANGE), "lr_range": list(LR_RANGE)},
    }


def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def zoo_path(dataset: str, root: str | Path | None = None, cache_dir: str | Path | None = None,
             **settings) -> Path:
    """Where `build_cnn_zoo` with these arguments stores (or finds) its zoo; builds nothing."""
    s = _full_settings(dataset, settings)
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(resolve_data_root(root))
    return folder / f"cnnzoo-{dataset_info(dataset).short}-{settings_hash(s)}.pt"


def _full_settings(dataset: str, given: dict) -> dict:
    info = dataset_info(dataset)
    d = {"snapshots": DEFAULT_SNAPSHOTS, "seed": 0, "split_fractions": (0.7, 0.1, 0.2),
         **DEFAULTS[info.name]}
    d.update({k: v for k, v in given.items() if v is not None})
    unknown = set(d) - {"n_archs", "nets_per_arch", "snapshots", "batch_size", "n_test", "seed", "split_fractions"}
    if unknown:
        raise TypeError(f"unknown zoo settings {sorted(unknown)}")
    return zoo_settings(info.name, **d)


def plan_runs(settings: dict, in_channels: int, image_size: int) -> list[list[CnnSpec]]:
    """The zoo's runs, grouped by architecture: ``n_archs`` lists of ``nets_per_arch`` specs (``steps`` = the
    run's full length). Distinct architectures are drawn until ``n_archs`` are found (or the design space is
    exhausted, then repeats are allowed)."""
    rng = np.random.default_rng([settings["seed"], 7919, int(hashlib.sha1(settings["dataset"].encode()).hexdigest()[:8], 16)])
    archs: list[CnnSpec] = []
    seen: set[tuple] = set()
    tries = 0
    while len(archs) < settings["n_archs"]:
        arch = sample_architecture(rng, in_channels, image_size)
        tries += 1
        if arch.arch_key() in seen and tries < 100 * settings["n_archs"]:
            continue
        seen.add(arch.arch_key())
        archs.append(arch)
    groups = []
    for arch in archs:
        data_seed, group = int(rng.integers(2 ** 31 - 1)), []
        for _ in range(settings["nets_per_arch"]):
            group.append(replace(arch, init_scale=log_uniform(rng, *INIT_SCALE_RANGE), lr=log_uniform(rng, *LR_RANGE),
                                 steps=max(settings["snapshots"]), batch_size=settings["batch_size"],
                                 seed=int(rng.integers(2 ** 31 - 1)), data_seed=data_seed))
        groups.append(group)
    return groups


def run_splits(n_runs: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """int8 ``[n_runs]``: 0 train, 1 val, 2 test, a seeded random assignment with the given fractions."""
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {fractions}")
    counts = np.floor(fr / fr.sum() * n_runs).astype(int)
    counts[0] += n_runs - counts.sum()
    labels = np.repeat(np.arange(3, dtype=np.int8), counts)
    return labels[np.random.default_rng([seed, 104729]).permutation(n_runs)]




def _build_group(specs: list[CnnSpec], train: ImageDataset, snapshots: Sequence[int], x_test: torch.Tensor,
                 y_test: torch.Tensor, run0: int, desc: str, device: str | torch.device = "cpu") -> dict:
    """Train one group, evaluate every finite snapshot, return its members (plain types + CPU tensors)."""
    out = train_group(specs, train, snapshots, progress=desc, device=device)
    arch = specs[0].architecture()
    members = {"specs": [], "params": [], "train_loss": [], "step": [], "run": [], "correct": []}
    dropped = 0
    for si, step in enumerate(out["steps"].tolist()):
        for g, spec in enumerate(specs):
            flat = out["params"][si, g].clone()
            if not torch.isfinite(flat).all():
                dropped += 1
                continue
            members["specs"].append(replace(spec, steps=int(step)).to_dict())
            members["params"].append(flat)
            members["train_loss"].append(float(out["train_loss"][si, g]))
            members["step"].append(int(step))
            members["run"].append(run0 + g)
    members["correct"] = _count_correct_group(arch, torch.stack(members["params"]), x_test, y_test, device) \
        if members["params"] else []
    members["dropped"] = dropped
    return members


def build_cnn_zoo(dataset: str, root: str | Path | None = None, n_archs: int | None = None,
                  nets_per_arch: int | None = None, snapshots: Sequence[int] | None = None,
                  batch_size: int | None = None, n_test: int | None = None, seed: int = 0,
                  split_fractions: Sequence[float] | None = None, force: bool = False,
                  cache_dir: str | Path | None = None, strict: bool = True, progress: bool = True,
                  device: str | torch.device = "cpu") -> Path:
    """Build (or find in the cache) the CNN zoo of ``dataset`` ("fmnist" / "fashion-mnist" or "cifar10").

    Args:
        root: data root (default ``$L2O_DATA``).
        n_archs, nets_per_arch: random architectures and runs per architecture (default: DEFAULTS[dataset]).
        snapshots: steps at which each run is stored (default DEFAULT_SNAPSHOTS); each snapshot is a member.
        batch_size: training mini-batch size (default DEFAULTS[dataset]: 32 Fashion-MNIST, 64 CIFAR-10).
        n_test: test subset size, the first n_test official test images (default DEFAULTS[dataset]).
        seed: seeds the architectures, the runs' hyper-parameters and seeds, and the run-level split.
        split_fractions: train / val / test fractions of the runs (default 0.7 / 0.1 / 0.2).
        force: rebuild even when the cached file exists (finished parts of an interrupted build are reused
            only without force).
        cache_dir: where to store the zoo (default: see `default_cache_dir`).
        strict: passed to `tasks.data.load_dataset` (False for small synthetic files in the official formats).
        device: where the groups are trained and evaluated (module docstring); not part of the settings hash.
    Returns:
        Path of the zoo file (load it with `CnnZoo.load`).
    """
    info = dataset_info(dataset)
    settings = _full_settings(info.name, {
        "n_archs": n_archs, "nets_per_arch": nets_per_arch, "snapshots": snapshots, "batch_size": batch_size,
        "n_test": n_test, "seed": seed, "split_fractions": split_fractions})
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(resolve_data_root(root))
    path = folder / f"cnnzoo-{info.short}-{settings_hash(settings)}.pt"
    if path.exists() and not force:
        return path
    parts = path.with_name(path.stem + ".parts")
    if force and parts.exists():
        shutil.rmtree(parts)
    train = load_dataset(info.name, "train", root, strict=strict)
    x_test, y_test = load_test_subset(info.name, root, settings["n_test"], strict)
    groups = plan_runs(settings, train.shape[0], train.shape[1])
    n_runs = sum(len(g) for g in groups)
    splits = run_splits(n_runs, settings["split_fractions"], settings["seed"])
    start = time.time()
    built, run0 = [], 0
    bar = tqdm(groups, desc=f"CNN zoo {info.short}", unit="group", disable=not progress)
    for gi, group in enumerate(bar):
        part = parts / f"group-{gi:04d}.pt"
        members = None
        if part.exists():
            try:
                members = torch.load(part, weights_only=True)
            except Exception:  # a part cut off mid-write: train the group again
                members = None
        if members is None:
            arch = group[0]
            desc = f"  {gi + 1}/{len(groups)} {arch.activation} {list(arch.channels)} k{arch.kernel_size}"
            members = _build_group(group, train, settings["snapshots"], x_test, y_test, run0, desc if progress else "",
                                   device)
            atomic_save(members, part)
        built.append(members)
        run0 += len(group)
        if members["correct"]:
            bar.set_postfix(members=sum(len(m["step"]) for m in built),
                            acc=f"{max(members['correct']) / len(y_test):.3f}")
    bar.close()
    specs = [s for m in built for s in m["specs"]]
    if not specs:
        raise RuntimeError("every network of the zoo diverged; nothing to store")
    runs = torch.tensor([r for m in built for r in m["run"]], dtype=torch.int64)
    correct = torch.tensor([c for m in built for c in m["correct"]], dtype=torch.int64)
    zoo = {
        "version": VERSION,
        "dataset": info.name,
        "specs": specs,
        "params": [p for m in built for p in m["params"]],
        "test_acc": (correct.double() / len(y_test)).float(),
        "test_correct": correct,
        "train_loss": torch.tensor([x for m in built for x in m["train_loss"]], dtype=torch.float32),
        "step": torch.tensor([s for m in built for s in m["step"]], dtype=torch.int64),
        "run": runs,
        "split": torch.from_numpy(splits)[runs].to(torch.int8),
        "eval": {"test_images": int(len(y_test)), "test_subset": "first n of the official test set",
                 "normalisation": "BatchStream: (pixel/255 - mean) / std per channel", "chunk": EVAL_CHUNK,
                 "strict": bool(strict), "dropped_nonfinite": int(sum(m["dropped"] for m in built)),
                 "build_seconds": float(time.time() - start), "kmax": KMAX, "device": str(device)},
        "settings": settings,
    }
    atomic_save(zoo, path)
    shutil.rmtree(parts, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _build_command(dataset: str) -> str:
    return f"OMP_NUM_THREADS=1 python -m tasks.weight_space.cnn_zoo --dataset {dataset} (or build_cnn_zoo(...))"


class CnnZoo:
    """A loaded zoo (or a subset of one). Member ``i`` has ``spec(i)``, ``params(i)`` (flat ``[P]``),
    ``test_acc[i]``, ``train_loss[i]``, ``step[i]``, ``run[i]`` and ``split_id[i]`` (0 train, 1 val, 2 test)."""

    def __init__(self, data: dict, path: Path | None = None):
        self.data, self.path = data, path
        self.dataset: str = data["dataset"]
        self._specs = [CnnSpec.from_dict(d) for d in data["specs"]]

    @classmethod
    def load(cls, path: str | Path) -> "CnnZoo":
        path = Path(path)
        if not path.is_file():
            raise ZooNotFoundError(f"CNN zoo file {path} not found; build it with {_build_command('fmnist|cifar10')}")
        try:
            data = torch.load(path, weights_only=True)
        except Exception as err:
            raise CorruptZooError(f"cannot read CNN zoo file {path} ({type(err).__name__}: {err}); delete it and "
                                  f"rebuild with {_build_command('fmnist|cifar10')} --force") from err
        if not isinstance(data, dict) or any(k not in data for k in _REQUIRED_KEYS):
            missing = [k for k in _REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
            raise CorruptZooError(f"{path} is not a CNN zoo file (missing {missing}); rebuild it with "
                                  f"{_build_command('fmnist|cifar10')} --force")
        if data["version"] != VERSION:
            raise CorruptZooError(f"{path} has zoo version {data['version']}, this code reads version {VERSION}; "
                                  f"rebuild it with {_build_command(data.get('dataset', 'fmnist|cifar10'))}")
        m = len(data["specs"])
        sizes = {k: len(data[k]) for k in ("params", "test_acc", "train_loss", "step", "split", "run")}
        if any(n != m for n in sizes.values()):
            raise CorruptZooError(f"{path}: per-member fields disagree in length ({m} specs, {sizes})")
        return cls(data, path)

    # ------------------------------------------------------------------ per-member fields
    def __len__(self) -> int:
        return len(self._specs)

    @property
    def test_acc(self) -> torch.Tensor:
        return self.data["test_acc"]

    @property
    def train_loss(self) -> torch.Tensor:
        return self.data["train_loss"]

    @property
    def step(self) -> torch.Tensor:
        return self.data["step"]

    @property
    def run(self) -> torch.Tensor:
        return self.data["run"]

    @property
    def split_id(self) -> torch.Tensor:
        return self.data["split"]

    @property
    def n_test(self) -> int:
        return int(self.data["eval"]["test_images"])

    def spec(self, i: int) -> CnnSpec:
        return self._specs[i]

    def params(self, i: int) -> torch.Tensor:
        return self.data["params"][i]

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return unflatten_state(self.params(i), self._specs[i])

    def module(self, i: int) -> nn.Sequential:
        spec = self._specs[i]
        model = build_cnn(spec, init=False)
        model.load_state_dict(self.state_dict(i))
        return model

    def evaluate(self, i: int, root: str | Path | None = None, device: str | torch.device = "cpu") -> float:
        """Re-evaluate member ``i`` on the zoo's test subset (needs the data root the zoo was built from) on
        ``device`` (exactly the stored accuracy on the device the zoo was built on, ``data["eval"]["device"]``)."""
        return evaluate_network(self.module(i).to(device), self.dataset, root, self.n_test,
                                strict=bool(self.data["eval"].get("strict", True)))

    def architectures(self) -> list[CnnSpec]:
        """Distinct architectures (training fields reset), in order of first appearance."""
        seen: dict[tuple, CnnSpec] = {}
        for s in self._specs:
            seen.setdefault(s.arch_key(), s.architecture())
        return list(seen.values())

    def arch_index(self) -> torch.Tensor:
        """int64 ``[M]``: each member's position in `architectures()`."""
        keys = {a.arch_key(): j for j, a in enumerate(self.architectures())}
        return torch.tensor([keys[s.arch_key()] for s in self._specs], dtype=torch.int64)

    # ------------------------------------------------------------------ subsets
    def subset(self, idx: Sequence[int] | torch.Tensor | np.ndarray) -> "CnnZoo":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.int64).reshape(-1)
        il = idx.tolist()
        data = dict(self.data)
        data["specs"] = [self.data["specs"][i] for i in il]
        data["params"] = [self.data["params"][i] for i in il]
        for k, v in self.data.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and len(v) == len(self):
                data[k] = v[idx]
        return CnnZoo(data, self.path)

    def split(self, name: str) -> "CnnZoo":
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLIT_NAMES}")
        return self.subset(torch.nonzero(self.split_id == SPLIT_NAMES.index(name)).flatten())

    def summary(self) -> str:
        acc = self.test_acc.double()
        q = torch.quantile(acc, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
        counts = {n: int((self.split_id == j).sum()) for j, n in enumerate(SPLIT_NAMES)}
        return (f"{self.dataset} CNN zoo: {len(self)} members, {len(self.architectures())} architectures, "
                f"{int(self.run.unique().numel())} runs; splits {counts}; test accuracy on {self.n_test} images "
                f"min/q25/median/q75/max = {' / '.join(f'{v:.3f}' for v in q)}")

    def __repr__(self) -> str:
        return f"CnnZoo({self.summary()})"


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.weight_space.cnn_zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="fmnist (fashion-mnist) or cifar10")
    parser.add_argument("--data-root", default=None, help="data root (default $L2O_DATA)")
    parser.add_argument("--cache-dir", default=None, help=f"where to store the zoo (default ${ZOO_DIR_ENV} or "
                                                          f"<data root>/weight_space)")
    parser.add_argument("--n-archs", type=int, default=None)
    parser.add_argument("--nets-per-arch", type=int, default=None)
    parser.add_argument("--snapshots", default=None, help="comma-separated steps, e.g. 0,10,30,100,300")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the zoo is cached")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the CNNs train (default cpu)")
    args = parser.parse_args(argv)
    device = device_or_exit(parser, args.device)
    try:
        info = dataset_info(args.dataset)
    except KeyError as err:
        parser.exit(2, f"error: {err.args[0]}\n")
    if info.name not in DEFAULTS:
        parser.exit(2, f"error: no CNN zoo for {info.name}; choose fmnist or cifar10\n")
    try:
        snaps = [int(s) for s in args.snapshots.split(",")] if args.snapshots else None
        start = time.time()
        path = build_cnn_zoo(info.name, root=args.data_root, n_archs=args.n_archs, nets_per_arch=args.nets_per_arch,
                             snapshots=snaps, batch_size=args.batch_size, n_test=args.n_test, seed=args.seed,
                             force=args.force, cache_dir=args.cache_dir, progress=not args.no_progress, device=device)
        elapsed = time.time() - start
        zoo = CnnZoo.load(path)
    except (DataNotFoundError, CorruptDataError, ZooNotFoundError, CorruptZooError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"{path}\n{zoo.summary()}")
    print(f"this call: {elapsed:.1f} s; recorded build time {zoo.data['eval']['build_seconds']:.1f} s; "
          f"dropped non-finite snapshots: {zoo.data['eval']['dropped_nonfinite']}")
    for s in sorted(set(zoo.step.tolist())):
        acc = zoo.test_acc[zoo.step == s].double()
        print(f"  step {s:4d}: {int(len(acc)):5d} members, accuracy median {acc.median():.3f} "
              f"(min {acc.min():.3f}, max {acc.max():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
