"""Meta-training configuration: dataclasses, TOML files, ``--set section.key=value`` overrides.

A config file has up to four tables, each matching a dataclass below::

    [optimizer]   # l2o.optim.OptimizerConfig: family, hidden, depth, ...
    [meta]        # MetaConfig: outer steps, truncation, horizon, estimator, meta-loss, outer Adam
    [tasks]       # TaskConfig: which task family the inner problems come from
    [run]         # RunConfig: output folder, seed, checkpoint / validation cadence, time budget
"""
from __future__ import annotations

import ast
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from l2o.optim import OptimizerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ESTIMATORS = ("tbptt", "greedy", "pes", "window")
OUTER_OPTIMIZERS = ("adamw", "adam")
REDUCTIONS = ("mean", "sum")
META_LOSSES = ("train", "same", "fresh")


@dataclass
class MetaConfig:
    outer_steps: int = 1000
    tasks_per_process: int = 1  # inner problems advanced together in one truncation
    truncation: int = 100  # K inner steps per outer step
    horizon: int = 100  # T: a task is reset after this many inner steps ...
    horizon_max: int = 0  # ... or, when > horizon, after a log-uniform number in [horizon, horizon_max]
    estimator: str = "greedy"  # tbptt | greedy (one-step, trajectory detached each step) | pes | window
    window: int = 200  # window: each step is credited with the first-order gradient of the next `window` losses
    discount: float = 1.0  # window: loss k after step j weighs discount^(k-j) (1 = the plain window)
    meta_loss: str = "train"  # train: loss at the next params on the next batch | same: same batch | fresh: a held-out batch
    log_loss: bool = False  # meta-loss on log(loss)
    second_order: bool = False  # differentiate through the inner gradients too (tbptt only)
    reduction: str = "mean"  # tbptt/greedy: the meta-loss averages (mean) or sums (sum, the reference) the K steps
    outer_optimizer: str = "adamw"  # adamw: decoupled weight decay | adam: L2 added to the gradient (the reference)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 0  # outer steps of linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0
    clip_norm: float = 1.0  # global-norm clipping of the meta-gradient (0 = off)
    pes_sigma: float = 0.01
    loss_clip: float = 1e3  # inner losses above this count as a blow-up: the task is reset

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"meta.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"meta.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.reduction == "sum" and self.estimator not in ("tbptt", "greedy"):
            raise ValueError(f"meta.reduction = 'sum' is implemented for the tbptt and greedy estimators, not "
                             f"{self.estimator!r}")
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise ValueError(f"meta.outer_optimizer must be one of {OUTER_OPTIMIZERS}, got {self.outer_optimizer!r}")
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta.meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        if self.second_order and self.estimator != "tbptt":
            raise ValueError("meta.second_order needs estimator = 'tbptt'")
        if self.estimator == "window" and (self.window < 1 or self.meta_loss != "train" or self.second_order):
            raise ValueError("meta.estimator = 'window' needs meta.window >= 1, meta.meta_loss = 'train' and first order")
        if not 0 < self.discount <= 1 or (self.discount < 1 and self.estimator != "window"):
            raise ValueError(f"meta.discount = {self.discount} must be in (0, 1] and, below 1, needs "
                             f"estimator = 'window'")
        longest = max(self.horizon, self.horizon_max)
        if self.discount < 1 and -math.log(self.discount) * longest > 600:
            raise ValueError(f"meta.discount = {self.discount} is too small for horizons up to {longest}: the "
                             f"credit's running sum weighs loss i by discount^i, which must stay within float64's "
                             f"range; use discount >= {math.exp(-600 / longest):.4f}")
        if self.truncation < 1 or self.horizon < 1 or self.outer_steps < 1:
            raise ValueError("meta.truncation, meta.horizon and meta.outer_steps must be >= 1")


@dataclass
class TaskConfig:
    family: str = "fmnist"  # fmnist (conv family around fmnist-conv) | regression | task:<registered name>
    widths: list = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0])
    depths: list = field(default_factory=lambda: [2, 3, 4])
    batch_size: int = 128
    batch_sizes: list | None = None  # fmnist family: draw each task's batch size from this list instead
    regression_dims: list = field(default_factory=lambda: [4, 8, 16])


@dataclass
class RunConfig:
    out_dir: str = "runs/meta"
    seed: int = 0
    checkpoint_every: int = 50  # outer steps
    validate_every: int = 100  # outer steps (0 = never)
    validation_task: str = "fmnist-conv"
    validation_steps: int = 200
    validation_seeds: int = 1
    max_minutes: float = 0.0  # stop (and checkpoint) after this wall time; 0 = no limit
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class Config:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return {"optimizer": self.optimizer.to_dict(), "meta": asdict(self.meta), "tasks": asdict(self.tasks),
                "run": asdict(self.run)}

    @staticmethod
    def from_dict(d: dict) -> "Config":
        sections = {"optimizer": OptimizerConfig, "meta": MetaConfig, "tasks": TaskConfig, "run": RunConfig}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, cls in sections.items():
            values = dict(d.get(name, {}))
            known = {f.name for f in fields(cls)}
            bad = set(values) - known
            if bad:
                raise ValueError(f"unknown keys in [{name}]: {sorted(bad)}; valid: {sorted(known)}")
            kwargs[name] = cls(**values)
        return Config(**kwargs)


def _parse_value(text: str):
    """TOML-ish literal: numbers, booleans, lists, quoted or bare strings."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _read_toml(path: Path, seen: tuple = ()) -> dict:
    """A TOML config; ``extends = "other.toml"`` (relative to this file) merges that file underneath."""
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' not found (configs live in meta_train/configs/)")
    if path.resolve() in seen:
        raise ValueError(f"config 'extends' cycle through {path}")
    with path.open("rb") as f:
        data = tomllib.load(f)
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = _read_toml(path.parent / base, seen + (path.resolve(),))
    for section, values in data.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or defaults) and apply ``section.key=value`` overrides."""
    data = _read_toml(Path(path)) if path is not None else {}
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. meta.lr=1e-4)")
        key, value = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        if "." in name:  # nested dict, e.g. optimizer.encoder_options.bidirectional=true
            name, sub = name.split(".", 1)
            data.setdefault(section, {}).setdefault(name, {})[sub] = _parse_value(value)
        else:
            data.setdefault(section, {})[name] = _parse_value(value)
    return Config.from_dict(data)
