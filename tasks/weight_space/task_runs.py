"""Training and evaluation of the weight-space tasks: one loop, three tasks, any encoder or baseline.

Tasks (``TASKS``):

* ``classify``: INR classification (MNIST / Fashion-MNIST SIREN zoos, and CIFAR-10 zoos of 3-output RGB SIRENs).
  Cross-entropy (+ ``aux_recon`` x the MSE of the INR2JLS-style image decoder, which then reconstructs all
  ``C x H x W`` values); metric: test accuracy. With ``jls`` (INR2JLS, ``task_models.JointLatentClassifier``):
  cross-entropy + reconstruction MSE from the weights' latent, and in training the same two from the image's latent
  plus ``jls_align`` x the MSE between the two latents (every other term weight 1); the test accuracy uses the
  weights only. With ``jls_distill`` the alignment does not move the image branch (its latent is a fixed target for
  the weights').
* ``edit``: INR style editing. The editor outputs a delta per weight; the edited INR is rendered on the image grid
  and compared with the *dilated* ground-truth image (3x3 grey-scale dilation: max-pool, stride 1, padding 1) by
  MSE in [0, 1] pixel units (INR outputs are mapped from [-1, 1] to [0, 1], as the zoo fits them); metric: test MSE
  (lower is better). ``mse_no_edit`` (the unedited INR against the same target) is recorded as a reference.
  Gray-scale zoos only: editing a CIFAR-10 (RGB) zoo fails when the spec is made (:class:`RunSpec`).
* ``generalization``: CNN zoo; predict each network's test accuracy from its weights. Binary cross-entropy on the
  accuracy (in [0, 1]); metrics: Kendall's tau-b (:func:`kendall_tau`) and R^2 on the held-out networks.

One run = (task, dataset, encoder, seed) = :class:`RunSpec`; :func:`run` trains with AdamW (cosine schedule, gradient
clipping), evaluates the val split after every epoch, keeps the best state (early selection on val), evaluates it
on the test split and writes a record JSON (``<out>/<task>-<dataset>-<label>-s<seed>.json``). With an ``out`` folder,
the run's whole training state (model, optimizer, schedule, best state, history and the random generators) is saved
after every epoch to ``<name>.resume.pt`` beside the record and removed when the record is written: a killed run
started again with the same spec and data goes on from its last finished epoch and ends with the same record as an
uninterrupted one (timings aside). Augmentation (INR
tasks, on by default): random hidden-neuron permutations and sign flips (exact symmetries of a SIREN, ``siren.py``).
Graph encoders are invariant to the permutations anyway; the flattened-weights MLP is not, and all models see the
sign flips.

Encoder options (``RunSpec.encoder_options``): a graph encoder's own constructor switches (e.g. DNG's
``recurrence``, ``bidirectional``, ``aggregation``) go to ``build_encoder`` and into the label, in brackets after
the encoder name, keys sorted: ``dng[bidirectional=False,recurrence=rnn]+probe128``. Without options the label (so
the record name) is the plain one, as before the options existed. Unknown keys fail when the spec is made.

Devices: ``run(..., device=...)`` puts the model, the batches (``Batcher``) and the losses on the device; the data
(parameter tables, labels, targets) stay on the CPU and each batch's part is moved there, and the augmentation draws
on the CPU from the run's seeded generator (so it is the same on every device). Outputs collected for the metrics
come back to the CPU.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from l2o.schedules import warmup_cosine

from .batching import Batcher, Normalizer, ParamTable, WeightBatch, params_to_rows, rows_to_params
from .storage import atomic_save
from .task_models import (BASELINES, GRAPH_ENCODERS, AccuracyPredictor, FlatEditor, GraphBackbone,
                          JointLatentClassifier, ProbeFeatures, WeightSpaceClassifier, WeightSpaceEditor,
                          build_features, check_encoder_options, count_parameters)

__all__ = ["TASKS", "DATASETS", "MODELS", "RunSpec", "Split", "TaskData", "kendall_tau", "r2_score", "dilate",
           "run", "load_task_data", "inr_task_data", "cnn_task_data", "record_path", "default_spec"]

TASKS = ("classify", "edit", "generalization")
DATASETS = {"classify": ("mnist", "fmnist", "cifar10"), "edit": ("mnist", "fmnist"),
            "generalization": ("cifar10", "fmnist")}
MODELS = GRAPH_ENCODERS + BASELINES


# ---------------------------------------------------------------------------------------------------------------- metrics
def kendall_tau(x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> float:
    """Kendall's tau-b of two score vectors (ties handled), in O(n^2) time and O(chunk * n) memory.

    ``tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2))`` with ``n0 = n(n-1)/2`` pairs, ``n1`` / ``n2`` the pairs tied in
    ``x`` / ``y`` (pairs tied in both count in both). NaN when either vector is constant or n < 2.
    """
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    if x.numel() != y.numel():
        raise ValueError(f"x and y differ in length: {x.numel()} vs {y.numel()}")
    n = x.numel()
    if n < 2:
        return float("nan")
    s = tx = ty = 0.0
    for start in range(0, n, chunk):
        dx = torch.sign(x[start: start + chunk, None] - x[None, :])
        dy = torch.sign(y[start: start + chunk, None] - y[None, :])
        s += float((dx * dy).sum())
        tx += float((dx == 0).sum())
        ty += float((dy == 0).sum())
    # Every unordered pair was counted twice; the n diagonal entries are "ties" of an element with itself.
    n0 = n * (n - 1) / 2
    s, n1, n2 = s / 2, (tx - n) / 2, (ty - n) / 2
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denom if denom > 0 else float("nan")


def r2_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (NaN for a constant target)."""
    pred, target = pred.detach().double().flatten(), target.detach().double().flatten()
    ss_tot = float(((target - target.mean()) ** 2).sum())
    return 1 - float(((target - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def dilate(images: torch.Tensor) -> torch.Tensor:
    """Grey-scale dilation ``[M, H, W]`` -> ``[M, H, W]``: 3x3 max-pool, stride 1, padding 1 (pads never win)."""
    return F.max_pool2d(images[:, None].float(), 3, stride=1, padding=1)[:, 0]


# ---------------------------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    """One split of a task: the networks (``table``) and what is predicted from them."""

    table: ParamTable
    labels: torch.Tensor | None = None  # [M] int64 (classify)
    images: torch.Tensor | None = None  # [M, H, W] (gray) or [M, C, H, W] (RGB) float in [0, 1] (classify aux / edit)
    target: torch.Tensor | None = None  # [M, H*W] dilated images (edit) or [M] accuracy in [0, 1] (generalization)

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class TaskData:
    """Train / val / test splits plus what the task's models need to know about the networks."""

    kind: str  # "inr" or "cnn"
    train: Split
    val: Split
    test: Split
    num_classes: int = 10
    n_outputs: int = 1  # output neurons of the networks (fixed across the zoo)
    image_shape: tuple[int, int] | None = None  # (H, W)
    image_channels: int = 1  # colour channels of the INR zoo's images (= n_outputs for INR tasks)
    info: dict = field(default_factory=dict)

    @property
    def template(self) -> nn.Module:
        return self.train.table.templates[0]


_EDIT_GRAY_ONLY = ("INR editing is implemented for gray-scale INR zoos (mnist, fmnist) only: {what}. "
                   "Colour (CIFAR-10) zoos serve the 'classify' task.")


def _is_colour_dataset(name: str) -> bool:
    """Whether ``name`` is a known colour data set (cifar10 and its aliases); unknown names (synthetic) are not."""
    from tasks.data import dataset_info

    try:
        return dataset_info(name).shape[0] != 1
    except KeyError:
        return False


def _cap(n: int, cap: int | None) -> int:
    return n if cap is None or cap <= 0 else min(n, cap)


def inr_task_data(zoo, task: str, train_size: int | None = None, val_size: int | None = None,
                  test_size: int | None = None) -> TaskData:
    """An ``InrZoo`` (``tasks.weight_space.inr_zoo``) -> :class:`TaskData` for ``classify`` or ``edit``.

    The first ``train_size`` / ``val_size`` / ``test_size`` INRs of each zoo split are used (all when None). Colour
    zoos (``out_features`` > 1, e.g. CIFAR-10) serve ``classify`` only."""
    if task == "edit" and int(zoo.arch["out_features"]) != 1:
        raise ValueError(_EDIT_GRAY_ONLY.format(what=f"zoo {zoo.dataset!r} has {zoo.arch['out_features']} outputs"))
    template = zoo.template()
    from l2o.graph import NeuralGraph

    graph = NeuralGraph.from_module(template, kmax=1)
    splits = {}
    for name, cap in (("train", train_size), ("val", val_size), ("test", test_size)):
        part = zoo.split(name)
        part = part.subset(torch.arange(_cap(len(part), cap)))
        table = ParamTable.from_stacked(template, part.params, graph=graph)
        images = part.images.float() / 255.0
        target = dilate(images).flatten(1) if task == "edit" else None
        splits[name] = Split(table, labels=part.labels.long(), images=images, target=target)
    ncls = int(zoo.labels.max()) + 1 if len(zoo) else 10
    info = {"zoo": str(zoo.path) if zoo.path else None, "arch": zoo.arch,
            "psnr_mean": float(zoo.psnr.mean()) if len(zoo) else float("nan"), "zoo_size": len(zoo)}
    return TaskData("inr", splits["train"], splits["val"], splits["test"], num_classes=max(ncls, 10),
                    n_outputs=int(zoo.arch["out_features"]), image_shape=tuple(zoo.image_size), info=info,
                    image_channels=int(zoo.arch["out_features"]))


def cnn_task_data(zoo, train_size: int | None = None, val_size: int | None = None,
                  test_size: int | None = None) -> TaskData:
    """A ``CnnZoo`` (``tasks.weight_space.cnn_zoo``) -> :class:`TaskData` for ``generalization``."""
    from .cnn_zoo_member import KMAX, build_cnn

    archs = zoo.architectures()
    templates = [build_cnn(a, init=False) for a in archs]
    arch_all = zoo.arch_index()
    rows = list(zoo.data["params"])
    full = ParamTable.from_state_rows(templates, arch_all, rows, kmax=KMAX)
    acc = zoo.test_acc.float()
    acc = acc / 100.0 if float(acc.max()) > 1.0 else acc
    splits = {}
    for code, (name, cap) in enumerate((("train", train_size), ("val", val_size), ("test", test_size))):
        idx = torch.nonzero(zoo.split_id == code).flatten()
        idx = idx[: _cap(idx.numel(), cap)]
        splits[name] = Split(full.subset(idx), target=acc[idx])
    n_out = {a.num_classes for a in archs}
    info = {"zoo": str(zoo.path) if zoo.path else None, "zoo_size": len(zoo), "architectures": len(archs)}
    return TaskData("cnn", splits["train"], splits["val"], splits["test"], num_classes=max(n_out),
                    n_outputs=max(n_out), info=info)


def load_task_data(spec: "RunSpec", root: str | None = None, device: str | torch.device = "cpu") -> TaskData:
    """Load (building and caching if needed) the zoo of ``spec.dataset`` for ``spec.task``; ``device``: where a
    zoo that is not cached yet is fitted (the data returned is on the CPU either way)."""
    if spec.task in ("classify", "edit"):
        from .inr_zoo import load_or_build_inr_zoo

        zoo = load_or_build_inr_zoo(spec.dataset, root, device=device)
        return inr_task_data(zoo, spec.task, spec.train_size, spec.val_size, spec.test_size)
    from .cnn_zoo import CnnZoo, build_cnn_zoo

    zoo = CnnZoo.load(build_cnn_zoo(spec.dataset, root, device=device))
    return cnn_task_data(zoo, spec.train_size, spec.val_size, spec.test_size)


# ---------------------------------------------------------------------------------------------------------------- config
DEFAULT_HIDDEN, DEFAULT_DEPTH = 32, 2  # the encoders' size in every run whose label does not name one
_DEFAULT_WEIGHT_DECAY = 1e-4  # RunSpec.weight_decay's default; a run with another names it in its label


@dataclass
class RunSpec:
    """One run. Defaults are chosen for the 1-CPU-core budget (see ``default_spec`` for per-task values)."""

    task: str
    dataset: str
    encoder: str
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = _DEFAULT_WEIGHT_DECAY  # AdamW's
    hidden: int = DEFAULT_HIDDEN
    depth: int = DEFAULT_DEPTH
    head_hidden: int = 128
    baseline_hidden: int = 256
    probes: int = 0  # probe points (INR tasks, graph encoders only)
    aux_recon: float = 0.0  # weight of the INR2JLS-style reconstruction loss (classify)
    jls: bool = False  # INR2JLS: a latent space shared with the images (classify, INR zoos)
    jls_distill: bool = False  # INR2JLS with the alignment's gradient stopped at the image latent (label +jlsd)
    jls_align: float = 1.0  # INR2JLS: weight of the latents' alignment MSE (another value adds +align<w>)
    augment: bool = True  # INR tasks: permutations + sign flips
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    grad_clip: float = 1.0
    max_minutes: float | None = None  # stop training after this long (the epochs done are recorded)
    dropout: float = 0.0
    raw_channel: bool = False  # second input channel: raw parameter values / one global std
    tag: str = ""  # appended to the label (e.g. "long" for a longer run of the same model)
    # Heterogeneous zoos: batches of one architecture each (default) or mixed ones with a fixed composition
    # (batching.Batcher). Per-architecture batches let DNG evaluate only the kernel slots a layer uses (9 of 25
    # for 3x3 kernels); measured on the Fashion-MNIST CNN zoo, s/epoch mixed -> per-architecture: DNG 2.30 -> 1.45,
    # NG-GNN 2.38 -> 2.27, NG-T 2.00 -> 1.92.
    mixed_batches: bool = False
    # Keyword arguments of the graph encoder's constructor (``build_encoder``), e.g. DNG's {"recurrence": "rnn",
    # "bidirectional": False}; JSON values (they are stored in the record's config). Checked here, so that a bad
    # option fails before any data is loaded (``task_models.check_encoder_options``).
    encoder_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {TASKS}")
        if self.encoder not in MODELS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {MODELS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.aux_recon) and self.aux_recon >= 0):
            raise ValueError(f"aux_recon must be a finite weight >= 0, got {self.aux_recon}")
        if self.jls and self.task != "classify":
            raise ValueError(f"jls (INR2JLS) is an INR classification objective; task {self.task!r} cannot use it")
        if self.jls_distill and not self.jls:
            raise ValueError("jls_distill is a variant of INR2JLS: set jls=True with it")
        if not (math.isfinite(self.jls_align) and self.jls_align > 0):
            raise ValueError(f"jls_align must be a finite weight > 0, got {self.jls_align}")
        if self.jls_align != 1.0 and not self.jls:
            raise ValueError("jls_align weighs INR2JLS's alignment term: set jls=True with it")
        if self.jls and self.aux_recon > 0:
            raise ValueError("jls (INR2JLS) has its own reconstruction loss; leave aux_recon at 0 with it")
        if self.task == "edit" and self.encoder == "statnn":
            raise ValueError("StatNN has no per-weight output, so it does not apply to editing")
        if self.task == "edit" and _is_colour_dataset(self.dataset):
            raise ValueError(_EDIT_GRAY_ONLY.format(what=f"got dataset {self.dataset!r}"))
        self.encoder_options = dict(self.encoder_options or {})  # a copy: the caller's dict may change later
        check_encoder_options(self.encoder, self.encoder_options, self.hidden, self.depth)

    @property
    def uses_probes(self) -> bool:
        return self.probes > 0 and self.encoder in GRAPH_ENCODERS and self.task in ("classify", "edit")

    @property
    def encoder_label(self) -> str:
        """The encoder name, plus its options in brackets (keys sorted) when it has any:
        ``dng[bidirectional=False,recurrence=rnn]``; just ``dng`` without options."""
        if not self.encoder_options:
            return self.encoder
        return f"{self.encoder}[{','.join(f'{k}={self.encoder_options[k]}' for k in sorted(self.encoder_options))}]"

    @property
    def label(self) -> str:
        """The encoder (with its options) plus the options that make a different model (a graph encoder's size
        when it is not the default hidden 32 / depth 2: ``+h64d4``, so that runs of two sizes never share a record;
        probes, reconstruction loss, head dropout, a weight decay other than 1e-4) and the tag."""
        s = self.encoder_label
        if self.encoder in GRAPH_ENCODERS and (self.hidden, self.depth) != (DEFAULT_HIDDEN, DEFAULT_DEPTH):
            s += f"+h{self.hidden}d{self.depth}"
        if self.uses_probes:
            s += f"+probe{self.probes}"
        if self.task == "classify" and self.aux_recon > 0:
            s += "+recon"
        if self.jls:
            s += "+jlsd" if self.jls_distill else "+jls"
            if self.jls_align != 1.0:
                s += f"+align{self.jls_align:g}"
        if self.dropout:  # regularisation that is not the default is part of the model's name
            s += f"+do{self.dropout:g}"
        if self.weight_decay != _DEFAULT_WEIGHT_DECAY:
            s += f"+wd{self.weight_decay:g}"
        if self.tag:
            s += f"+{self.tag}"
        return s

    @property
    def name(self) -> str:
        return f"{self.task}-{self.dataset}-{self.label}-s{self.seed}"


# Per task defaults, sized so that `all` (every task x model x 3 seeds) fits about an hour on one core. Measured
# training cost per network and epoch (batch 64, hidden 32, depth 2, one thread, a second job on the other core):
# INR classification with 128 probes: NG-GNN 10.6 ms, NG-T 8.7, DNG 2.0, NFN 1.5, MLP 0.15; editing (render +
# MSE included): NG-GNN 12.1, NG-T 10.7, DNG 3.2, NFN 2.9, MLP 0.5. So classification uses 2,500 of the 10,000
# train INRs for 5 epochs (~6.5 min per seed for all six models, evaluation included), editing 1,000 for 5 epochs;
# the CNN zoos (1,050 train networks, graphs of 20-60 nodes) are trained on fully for 20 epochs. The complete `all`
# (main plan + EXTRA_PLAN, 74 runs) took 50.5 min of run time.
TASK_DEFAULTS: dict[str, dict] = {
    "classify": dict(epochs=5, lr=3e-3, probes=128, train_size=2500, val_size=500, test_size=None),
    "edit": dict(epochs=5, lr=1e-3, probes=32, train_size=1000, val_size=300, test_size=500),
    "generalization": dict(epochs=20, lr=1e-3, probes=0, augment=False, raw_channel=True),
}


def default_spec(task: str, dataset: str, encoder: str, seed: int = 0, **overrides) -> RunSpec:
    """``RunSpec`` with the task's defaults, then ``overrides`` (``None`` values are ignored)."""
    kw = dict(TASK_DEFAULTS.get(task, {}))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return RunSpec(task=task, dataset=dataset, encoder=encoder, seed=seed, **kw)


def record_path(out_dir: str | Path, spec: RunSpec) -> Path:
    return Path(out_dir) / f"{spec.name}.json"


def resume_state_path(out_dir: str | Path, spec: RunSpec) -> Path:
    """Where :func:`run` keeps the training state of an unfinished run (removed when its record is written)."""
    return Path(out_dir) / f"{spec.name}.resume.pt"


def _load_resume_state(path: Path | None, fingerprint: dict, log: Callable[[str], None] | None) -> dict | None:
    """The saved state of an interrupted run when it was made with the same spec and data sizes, else None (a state
    of another spec or data is left alone and the run starts from scratch, saying so; the next epoch overwrites
    it)."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated file cannot come from atomic_save, but a foreign one might be anything
        if log:
            log(f"{path.name}: unreadable resume state ({type(exc).__name__}: {exc}); starting from scratch")
        return None
    if state.get("fingerprint") != fingerprint:
        if log:
            log(f"{path.name}: resume state of another spec or data size; starting from scratch")
        return None
    if log:
        log(f"{path.name}: resuming after epoch {len(state['history'])}")
    return state


# ---------------------------------------------------------------------------------------------------------------- model
def build_model(spec: RunSpec, data: TaskData, batcher: Batcher) -> nn.Module:
    table = data.train.table
    probes = None
    if spec.uses_probes:
        if data.kind != "inr":
            raise ValueError("probe features are defined for INR zoos only")
        probes = ProbeFeatures(table.templates[0], table.graphs[0], spec.probes)
    if spec.task == "edit":
        if spec.encoder == "mlp":
            return FlatEditor(table.flat.shape[1], spec.baseline_hidden)
        return WeightSpaceEditor(GraphBackbone(spec.encoder, table.kmax, spec.hidden, spec.depth, probes,
                                               batcher.channels, **spec.encoder_options), spec.head_hidden)
    feats = build_features(spec.encoder, kmax=table.kmax, n_outputs=data.n_outputs, flat_dim=table.flat.shape[1],
                           stat_dim=batcher.stats.shape[1], hidden=spec.hidden, depth=spec.depth,
                           baseline_hidden=spec.baseline_hidden, probes=probes, channels=batcher.channels,
                           **spec.encoder_options)
    if spec.task == "classify" and spec.jls:
        if data.kind != "inr" or not data.image_shape:
            raise ValueError(f"jls (INR2JLS) needs an INR zoo with its images; {spec.dataset!r} has none")
        return JointLatentClassifier(feats, data.num_classes, data.image_channels, data.image_shape,
                                     head_hidden=spec.head_hidden, dropout=spec.dropout)
    if spec.task == "classify":
        pixels = (data.image_channels * int(math.prod(data.image_shape))
                  if spec.aux_recon > 0 and data.image_shape else 0)  # C x H x W values per image
        return WeightSpaceClassifier(feats, data.num_classes, spec.head_hidden, spec.dropout, image_pixels=pixels)
    return AccuracyPredictor(feats, spec.head_hidden, spec.dropout)


# ---------------------------------------------------------------------------------------------------------------- steps
class _Task:
    """Loss and metrics of one task (``loss`` on a batch; ``metrics`` on a whole split's collected outputs)."""

    def __init__(self, spec: RunSpec, data: TaskData, device: str | torch.device = "cpu"):
        self.spec, self.data, self.device = spec, data, torch.device(device)
        if spec.task == "edit":
            from .siren import make_coords

            h, w = data.image_shape
            self.coords = make_coords(h, w, device=self.device)

    def render(self, rows: torch.Tensor, arch_table: ParamTable) -> torch.Tensor:
        """Edited rows ``[B, P]`` -> pixels ``[B, H*W]`` in [0, 1] scale (not clamped: MSE gradients flow)."""
        from .siren import render

        params = rows_to_params(arch_table.graphs[0], rows)
        return (render(arch_table.templates[0], params, self.coords)[..., 0] + 1.0) * 0.5

    def loss(self, model: nn.Module, batch: WeightBatch, split: Split) -> tuple[torch.Tensor, dict]:
        idx = batch.index

        def rows(table: torch.Tensor) -> torch.Tensor:  # this batch's labels / targets, moved to the device
            return table[idx].to(self.device)

        if self.spec.jls:  # the images enter in training only: the evaluation sees the weights alone
            labels, images = rows(split.labels), rows(split.images)
            out = model(batch, images if model.training else None)
            images = images.flatten(1)
            loss = F.cross_entropy(out["logits"], labels) + F.mse_loss(out["recon"], images)
            if "image_z" in out:
                target = out["image_z"].detach() if self.spec.jls_distill else out["image_z"]
                loss = (loss + F.cross_entropy(out["image_logits"], labels) + F.mse_loss(out["image_recon"], images)
                        + self.spec.jls_align * F.mse_loss(out["z"], target))
            return loss, {"logits": out["logits"].detach()}
        out = model(batch)
        if self.spec.task == "classify":
            loss = F.cross_entropy(out["logits"], rows(split.labels))
            if "recon" in out:
                loss = loss + self.spec.aux_recon * F.mse_loss(out["recon"], rows(split.images).flatten(1))
            return loss, {"logits": out["logits"].detach()}
        if self.spec.task == "edit":
            pixels = self.render(out["rows"], split.table)
            loss = F.mse_loss(pixels, rows(split.target))
            return loss, {"pixels": pixels.detach()}
        loss = F.binary_cross_entropy_with_logits(out["logit"], rows(split.target))
        return loss, {"pred": out["pred"].detach()}

    def metrics(self, split: Split, outputs: list[dict], index: torch.Tensor) -> dict[str, float]:
        if self.spec.task == "classify":
            logits = torch.cat([o["logits"] for o in outputs])
            acc = float((logits.argmax(1) == split.labels[index]).float().mean())
            return {"accuracy": acc}
        if self.spec.task == "edit":
            pixels = torch.cat([o["pixels"] for o in outputs]).clamp(0, 1)
            return {"mse": float(((pixels - split.target[index]) ** 2).mean())}
        pred = torch.cat([o["pred"] for o in outputs])
        true = split.target[index]
        return {"kendall_tau": kendall_tau(pred, true), "r2": r2_score(pred, true),
                "mae": float((pred - true).abs().mean())}

    @property
    def primary(self) -> tuple[str, bool]:
        """The selection metric and whether higher is better."""
        return {"classify": ("accuracy", True), "edit": ("mse", False),
                "generalization": ("kendall_tau", True)}[self.spec.task]


def _augment(rows: torch.Tensor, table: ParamTable, generator: torch.Generator) -> torch.Tensor:
    from .siren import flip_signs, permute_hidden

    graph = table.graphs[0]
    params = rows_to_params(graph, rows)
    params = flip_signs(permute_hidden(params, generator), generator)
    return params_to_rows(graph, params)


@torch.no_grad()
def evaluate(model: nn.Module, task: _Task, batcher: Batcher, split: Split, batch_size: int
             ) -> tuple[dict[str, float], list[dict], torch.Tensor]:
    model.eval()
    outputs, order = [], []
    for idx in batcher.batches(batch_size):
        batch = batcher.make(idx)
        _, out = task.loss(model, batch, split)
        outputs.append({k: v.cpu() for k, v in out.items()})  # the metrics compare them with the CPU tables
        order.append(idx)
    index = torch.cat(order)
    return task.metrics(split, outputs, index), outputs, index


def run(spec: RunSpec, data: TaskData | None = None, out_dir: str | Path | None = None, progress: bool = True,
        root: str | None = None, log: Callable[[str], None] | None = print,
        device: str | torch.device = "cpu") -> dict:
    """Train and evaluate one run on ``device`` (module docstring); returns the record (also written to
    ``record_path(out_dir, spec)``)."""
    t_start = time.time()
    device = torch.device(device)
    data = data if data is not None else load_task_data(spec, root, device)
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    normalizer = Normalizer(data.train.table)
    mixed = spec.mixed_batches and data.train.table.num_archs > 1
    gin = spec.encoder in GRAPH_ENCODERS
    train_b = Batcher(data.train.table, normalizer, mixed=mixed, raw_channel=spec.raw_channel, graph_inputs=gin,
                      device=device)
    val_b = Batcher(data.val.table, normalizer, train_b.stat_mean, train_b.stat_std, mixed, spec.raw_channel, gin,
                    device)
    test_b = Batcher(data.test.table, normalizer, train_b.stat_mean, train_b.stat_std, mixed, spec.raw_channel, gin,
                     device)
    model = build_model(spec, data, train_b).to(device)  # built on the CPU: the same initial weights on any device
    task = _Task(spec, data, device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = len(train_b.batches(spec.batch_size))
    total = max(1, steps_per_epoch * spec.epochs)
    warmup = min(steps_per_epoch, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup=warmup, total=total))
    metric, higher = task.primary
    best, best_state, best_epoch, history, epoch_secs = None, None, -1, [], []
    augment = spec.augment and data.kind == "inr"
    deadline = t_start + 60 * spec.max_minutes if spec.max_minutes else None
    resume_path = resume_state_path(out_dir, spec) if out_dir is not None else None
    fingerprint = {"config": asdict(spec), "sizes": [len(data.train), len(data.val), len(data.test)]}
    state = _load_resume_state(resume_path, fingerprint, log)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        best, best_state, best_epoch = state["best"], state["best_state"], state["best_epoch"]
        history, epoch_secs = state["history"], state["epoch_secs"]
    for epoch in range(len(history), spec.epochs):
        model.train()
        t0, losses = time.time(), []
        batches = train_b.batches(spec.batch_size, gen)
        bar = tqdm(batches, desc=f"{spec.name} ep {epoch + 1}/{spec.epochs}", leave=False, disable=not progress,
                   mininterval=2.0)
        for idx in bar:
            rows = _augment(data.train.table.flat[idx], data.train.table, gen) if augment else None
            batch = train_b.make(idx, rows)
            loss, _ = task.loss(model, batch, data.train)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        epoch_secs.append(time.time() - t0)
        val, _, _ = evaluate(model, task, val_b, data.val, spec.batch_size)
        value = val[metric]
        improved = best is None or (value > best if higher else value < best) or (math.isnan(best) and not math.isnan(value))
        if improved:
            best, best_epoch = value, epoch
            best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)), "sec": epoch_secs[-1],
                        **{f"val_{k}": v for k, v in val.items()}})
        if resume_path is not None and epoch + 1 < spec.epochs:
            atomic_save({"fingerprint": fingerprint, "model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                         "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                         "best": best, "best_state": best_state, "best_epoch": best_epoch, "history": history,
                         "epoch_secs": epoch_secs}, resume_path)
        if log:
            log(f"{spec.name} epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f} val {metric} {value:.4f} "
                f"({epoch_secs[-1]:.1f} s)")
        if deadline and time.time() > deadline:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    t_eval = time.time()
    test, outputs, index = evaluate(model, task, test_b, data.test, spec.batch_size)
    eval_sec = time.time() - t_eval
    record = {
        "task": spec.task, "dataset": spec.dataset, "encoder": spec.label, "base_encoder": spec.encoder,
        "seed": spec.seed, "metrics": test, "primary_metric": metric, "val_best": best, "best_epoch": best_epoch + 1,
        "epochs": len(history), "train_size": len(data.train), "val_size": len(data.val), "test_size": len(data.test),
        "params": count_parameters(model), "sec_per_epoch": sum(epoch_secs) / max(1, len(epoch_secs)),
        "test_eval_sec": eval_sec, "total_sec": time.time() - t_start, "config": asdict(spec), "history": history,
        "data": data.info, "torch_threads": torch.get_num_threads(), "device": str(device),
    }
    if spec.task == "edit":
        with torch.no_grad():
            ref = []
            for idx in test_b.batches(spec.batch_size):
                rows = data.test.table.flat[idx][:, : int(data.test.table.lengths[0])].to(device)
                ref.append(task.render(rows, data.test.table).clamp(0, 1).cpu())
            ref_pixels = torch.cat(ref)
            record["metrics"]["mse_no_edit"] = float(((ref_pixels - data.test.target[index]) ** 2).mean())
    if spec.task == "generalization":
        record["test_pred"] = [round(float(v), 5) for v in torch.cat([o["pred"] for o in outputs])]
        record["test_true"] = [round(float(v), 5) for v in data.test.target[index]]
    if out_dir is not None:
        path = record_path(out_dir, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.task == "edit":
            _save_edit_examples(model, task, test_b, data, path.with_suffix(".examples.pt"))
            record["examples"] = path.with_suffix(".examples.pt").name
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
        if resume_path is not None:
            resume_path.unlink(missing_ok=True)
    if log:
        log(f"{spec.name}: test {json.dumps({k: round(v, 4) for k, v in record['metrics'].items()})} "
            f"({record['sec_per_epoch']:.1f} s/epoch, {record['total_sec']:.0f} s total)")
    return record


@torch.no_grad()
def _save_edit_examples(model: nn.Module, task: _Task, batcher: Batcher, data: TaskData, path: Path, n: int = 8) -> None:
    """Ground truth, INR render, edited render and dilated target of the first ``n`` test INRs (for the figure)."""
    model.eval()
    idx = torch.arange(min(n, len(data.test)))
    batch = batcher.make(idx)
    out = model(batch)
    h, w = data.image_shape
    # Saved from the CPU, so that the figure code reads the file on any machine.
    torch.save({"image": data.test.images[idx], "target": data.test.target[idx].view(-1, h, w),
                "original": task.render(batch.rows, data.test.table).clamp(0, 1).view(-1, h, w).cpu(),
                "edited": task.render(out["rows"], data.test.table).clamp(0, 1).view(-1, h, w).cpu()}, path)


def pixel_mlp_reference(zoo, train_size: int, seeds: int = 3, epochs: int = 20, val_size: int = 500) -> list[float]:
    """Context for INR classification: a 784-256-10 MLP on the *ground-truth pixels* of the same train images
    (Adam 1e-3, batch 64, ``epochs`` epochs, the epoch chosen on the first ``val_size`` val images), test accuracy
    on the zoo's test images, one value per seed. It shows what the images themselves allow at this training size."""
    splits = {n: zoo.split(n) for n in ("train", "val", "test")}
    x = {n: s.images.float().flatten(1) / 255 for n, s in splits.items()}
    y = {n: s.labels.long() for n, s in splits.items()}
    xtr, ytr = x["train"][:train_size], y["train"][:train_size]
    xva, yva = x["val"][:val_size], y["val"][:val_size]
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(xtr.shape[1], 256), nn.ReLU(), nn.Linear(256, int(ytr.max()) + 1))
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        best = (-1.0, 0.0)
        for _ in range(epochs):
            perm = torch.randperm(len(ytr))
            for i in range(0, len(ytr), 64):
                idx = perm[i: i + 64]
                loss = F.cross_entropy(m(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = float((m(xva).argmax(1) == yva).float().mean())
                t = float((m(x["test"]).argmax(1) == y["test"]).float().mean())
            if v > best[0]:
                best = (v, t)
        out.append(best[1])
    return out
