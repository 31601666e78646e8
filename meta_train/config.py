"""Meta-training configuration: dataclasses, TOML files, ``--set section.key=value`` overrides.

A config file has up to four tables, each matching a dataclass below::

    [optimizer]   # l2o.optim.OptimizerConfig: family, hidden, depth, ...
    [meta]        # MetaConfig: outer steps, truncation, horizon, estimator, meta-loss, outer Adam
    [tasks]       # TaskConfig: which task family the inner problems come from
    [run]         # RunConfig: output folder, seed, checkpoint / validation cadence, time budget

Every value is checked when a config is built: its type against the dataclass field's type (an int where a float is
expected is accepted and converted) and its range, so ``--set meta.outer_steps=abc`` or ``meta.clip_norm = -1`` fail
at once with a :class:`ConfigError` naming the field, the value and what is allowed, not deep inside training.
"""
from __future__ import annotations

import ast
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from l2o.optim import OptimizerConfig
from l2o.optim.features import INPUT_SETS
from l2o.optim.learned import STEP_RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ESTIMATORS = ("tbptt", "greedy", "pes", "window")
OUTER_OPTIMIZERS = ("adamw", "adam")
REDUCTIONS = ("mean", "sum")
META_LOSSES = ("train", "same", "fresh")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config value has the wrong type, is out of range or contradicts another one (the CLI prints it, exit 2)."""


def _at_least(low):
    return lambda v: v >= low, f">= {low}"


def _above(low):
    return lambda v: v > low, f"> {low}"


def _in_range(low, high, low_open=False, high_open=False):
    def ok(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return ok, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _one_of(choices):
    return lambda v: v in choices, f"one of {choices}"


def _nonempty(v) -> bool:
    return bool(v.strip())


def _list_of(kind: type, low):
    """A non-empty list whose elements are ``kind`` (int, or any number for float) and at least / above ``low``."""
    def ok(v):
        numbers = (int, float) if kind is float else (int,)
        return bool(v) and all(isinstance(x, numbers) and not isinstance(x, bool) and
                               (x > low if kind is float else x >= low) for x in v)
    return ok, f"a non-empty list of {'numbers >' if kind is float else 'integers >='} {low}"


def _task_family(v) -> bool:
    return v in ("fmnist", "regression") or (v.startswith("task:") and len(v) > len("task:"))


# Allowed values per field, beyond its type: (test, description for the error message). Fields not listed take any
# value of their type. The learned optimizer's fields (l2o.optim.OptimizerConfig) are checked here as well, so a
# meta-training config fails before anything is built.
RANGES = {
    "optimizer": {
        "hidden": _at_least(1), "depth": _at_least(0), "kmax": _at_least(1), "head_hidden": _at_least(1),
        "head_layers": _at_least(1), "lam": _at_least(0), "adam_lr": _above(0), "adam_scale": _at_least(0),
        "max_update": _at_least(0), "lstm_hidden": _at_least(1), "lr": _above(0), "weight_decay": _at_least(0),
        "momentum": _in_range(0, 1, high_open=True), "positional": _one_of(("role", "index")),
        "step_rule": _one_of(STEP_RULES), "inputs": _one_of(INPUT_SETS), "preprocess": _one_of(("logsign", "rms")),
    },
    "meta": {
        "outer_steps": _at_least(1), "tasks_per_process": _at_least(1), "truncation": _at_least(1),
        "horizon": _at_least(1), "horizon_max": _at_least(0), "window": _at_least(1),
        "discount": _in_range(0, 1, low_open=True), "lr": _above(0), "weight_decay": _at_least(0),
        "rate_lr_scale": _above(0), "warmup": _at_least(0), "min_lr_ratio": _in_range(0, 1),
        "clip_norm": _at_least(0),
        "pes_sigma": _above(0), "loss_clip": _above(0), "max_bad_steps": _at_least(1),
        "vectorize": _one_of(("auto", True, False)),
    },
    "tasks": {
        "family": (_task_family, "'fmnist', 'regression' or 'task:<registered task name>'"),
        "widths": _list_of(float, 0), "depths": _list_of(int, 1), "batch_size": _at_least(1),
        "batch_sizes": _list_of(int, 1), "regression_dims": _list_of(int, 1),
    },
    "run": {
        "out_dir": (_nonempty, "a non-empty path"), "seed": _at_least(0), "checkpoint_every": _at_least(1),
        "validate_every": _at_least(0), "validation_task": (_nonempty, "a task name"),
        "validation_steps": _at_least(1), "validation_seeds": _at_least(1), "max_minutes": _at_least(0),
        "log_every": _at_least(1), "device": _one_of(DEVICES),
    },
}
INFINITE_OK = {("meta", "loss_clip")}  # loss_clip = inf: only NaN / inf losses count as blow-ups

_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "list": "a list", "dict": "a table (dict)", "None": "none"}


def _typed(section: str, name: str, annotation, value):
    """``value`` checked against its field's type (int, float, bool, str, list, dict, or ``X | None``).

    Annotations are strings here (``from __future__ import annotations``). bool is not accepted as a number (TOML and
    ``--set`` keep them apart, and ``outer_steps = true`` is a mistake), an int is accepted as a float and converted.
    """
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None and "None" in kinds:
        return None
    is_bool = isinstance(value, bool)
    if "bool" in kinds and is_bool:
        return value
    if "int" in kinds and isinstance(value, int) and not is_bool:
        return value
    if "float" in kinds and isinstance(value, (int, float)) and not is_bool:
        return float(value)
    if "str" in kinds and isinstance(value, str):
        return value
    if "list" in kinds and isinstance(value, (list, tuple)):
        return list(value)
    if "dict" in kinds and isinstance(value, dict):
        return value
    known = [k for k in kinds if k in _TYPE_NAMES]
    if not known:  # an annotation this check does not know: leave the value to the code that uses it
        return value
    hint = ""
    if "str" in kinds and not isinstance(value, str):
        hint = f"; quote it: --set {section}.{name}='{value}'"
    elif isinstance(value, str) and ("int" in kinds or "float" in kinds):
        hint = " (a number was expected; check for a typo)"
    elif "int" in kinds and isinstance(value, float) and value.is_integer():
        hint = f"; write {int(value)}"
    expected = " or ".join(_TYPE_NAMES[k] for k in known)
    raise ConfigError(f"{section}.{name} must be {expected}, got {value!r} ({type(value).__name__}){hint}")


def check_section(section: str, obj) -> None:
    """Check (and normalise: int -> float where a float is expected) every field of a config dataclass in place."""
    for f in fields(obj):
        value = _typed(section, f.name, f.type, getattr(obj, f.name))
        if isinstance(value, float) and (math.isnan(value) or
                                         (math.isinf(value) and (section, f.name) not in INFINITE_OK)):
            raise ConfigError(f"{section}.{f.name} must be a finite number, got {value!r}")
        rule = RANGES.get(section, {}).get(f.name)
        if rule is not None and value is not None and not rule[0](value):
            raise ConfigError(f"{section}.{f.name} must be {rule[1]}, got {value!r}")
        object.__setattr__(obj, f.name, value)


def check_device(run: "RunConfig") -> None:
    """``run.device = 'cuda'`` needs a GPU on *this* machine (checked when a run starts, not when a saved config is
    read back, so a GPU run's config can still be exported or inspected on a CPU machine)."""
    if run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device = 'cuda' but this machine has no usable CUDA GPU (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'none'}); use run.device = 'auto' or 'cpu'")


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
    # != 1: the learned per-category step rates (optimizer.category_rates, `log_rate`) train in their own group at
    # lr * rate_lr_scale without weight decay: six log-rates that start far from 0 and move ~lr per outer step
    # otherwise (1 % in 50 steps at lr 3e-4)
    rate_lr_scale: float = 1.0
    warmup: int = 0  # outer steps of linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0
    clip_norm: float = 1.0  # global-norm clipping of the meta-gradient (0 = off)
    pes_sigma: float = 0.01
    loss_clip: float = 1e3  # inner losses above this count as a blow-up: the task is reset
    # a learned-optimizer checkpoint to start from instead of a fresh initialisation ("" = fresh): the weights the
    # two share are copied, and a graph optimizer started from an FF checkpoint starts as exactly its rule
    # (l2o.optim.warm_start). A resumed run continues from its own checkpoint (the file is still read at every start).
    init_from: str = ""
    max_bad_steps: int = 20  # stop with an error after this many outer steps in a row without progress (see train)
    # Evaluate the optimizee losses/gradients of the tasks that share an architecture in one torch.func.vmap call
    # (TaskPool.advance) instead of task after task: the same results up to float rounding, so a run may be resumed
    # with the other value. "auto": vmap on CUDA, the per-task loop on the CPU, where oneDNN's batched convolutions
    # measured about 2x slower than K separate ones (results/benchmarks/meta_train_tasks.md).
    vectorize: bool | str = "auto"

    def __post_init__(self):
        check_section("meta", self)
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"meta.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"meta.reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.reduction == "sum" and self.estimator not in ("tbptt", "greedy"):
            raise ConfigError(f"meta.reduction = 'sum' is implemented for the tbptt and greedy estimators, not "
                             f"{self.estimator!r}")
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise ConfigError(f"meta.outer_optimizer must be one of {OUTER_OPTIMIZERS}, got {self.outer_optimizer!r}")
        if self.meta_loss not in META_LOSSES:
            raise ConfigError(f"meta.meta_loss must be one of {META_LOSSES}, got {self.meta_loss!r}")
        if self.second_order and self.estimator != "tbptt":
            raise ConfigError("meta.second_order needs estimator = 'tbptt'")
        if self.estimator == "window" and (self.window < 1 or self.meta_loss != "train" or self.second_order):
            raise ConfigError("meta.estimator = 'window' needs meta.window >= 1, meta.meta_loss = 'train' and first order")
        if not 0 < self.discount <= 1 or (self.discount < 1 and self.estimator != "window"):
            raise ConfigError(f"meta.discount = {self.discount} must be in (0, 1] and, below 1, needs "
                             f"estimator = 'window'")
        longest = max(self.horizon, self.horizon_max)
        if self.discount < 1 and -math.log(self.discount) * longest > 600:
            raise ConfigError(f"meta.discount = {self.discount} is too small for horizons up to {longest}: the "
                             f"credit's running sum weighs loss i by discount^i, which must stay within float64's "
                             f"range; use discount >= {math.exp(-600 / longest):.4f}")
        if self.truncation < 1 or self.horizon < 1 or self.outer_steps < 1:
            raise ConfigError("meta.truncation, meta.horizon and meta.outer_steps must be >= 1")


@dataclass
class TaskConfig:
    family: str = "fmnist"  # fmnist (conv family around fmnist-conv) | regression | task:<registered name>
    widths: list = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0])
    depths: list = field(default_factory=lambda: [2, 3, 4])
    batch_size: int = 128
    batch_sizes: list | None = None  # fmnist family: draw each task's batch size from this list instead
    regression_dims: list = field(default_factory=lambda: [4, 8, 16])

    def __post_init__(self):
        check_section("tasks", self)


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
    # Also save the weights of every validated outer step as <out_dir>/validated/step_NNNNNNN.pt (a loadable
    # optimizer checkpoint, like best.pt), so that any of them can be evaluated later, not just the best.
    keep_validated: bool = False

    def __post_init__(self):
        check_section("run", self)


@dataclass
class Config:
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        check_section("optimizer", self.optimizer)  # l2o's OptimizerConfig checks only its family

    def to_dict(self) -> dict:
        return {"optimizer": self.optimizer.to_dict(), "meta": asdict(self.meta), "tasks": asdict(self.tasks),
                "run": asdict(self.run)}

    @staticmethod
    def from_dict(d: dict) -> "Config":
        sections = {"optimizer": OptimizerConfig, "meta": MetaConfig, "tasks": TaskConfig, "run": RunConfig}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
        kwargs = {}
        for name, cls in sections.items():
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table of key = value pairs, got {values!r}")
            values = dict(values)
            known = {f.name for f in fields(cls)}
            bad = set(values) - known
            if bad:
                raise ConfigError(f"unknown keys in [{name}]: {sorted(bad)}; valid: {sorted(known)}")
            try:
                kwargs[name] = cls(**values)
            except ConfigError:
                raise
            except ValueError as exc:  # l2o's OptimizerConfig: an unknown family
                raise ConfigError(f"[{name}] {exc}") from exc
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
        raise ConfigError(f"config 'extends' cycle through {path}")
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from exc
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = _read_toml(path.parent / base, seen + (path.resolve(),))
    for section, values in data.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or defaults) and apply ``section.key=value`` overrides; raises :class:`ConfigError`."""
    data = _read_toml(Path(path)) if path is not None else {}
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. meta.lr=1e-4)")
        key, value = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        if "." in name:  # nested dict, e.g. optimizer.encoder_options.bidirectional=true
            name, sub = name.split(".", 1)
            table = data.setdefault(section, {}).setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override {item!r}: {section}.{name} = {table!r} is not a table, so it has no "
                                  f"key {sub!r}")
            table[sub] = _parse_value(value)
        else:
            data.setdefault(section, {})[name] = _parse_value(value)
    cfg = Config.from_dict(data)
    check_device(cfg.run)  # a config built to run here must be runnable here
    return cfg
