"""Optimizer configurations: small dataclasses that round-trip through checkpoints and TOML files."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .features import FeatureConfig
from .learned import (Adam, FFOptimizer, GraphOptimizer, LSTMOptimizer, Optimizer, RelativeAdam, SGDMomentum,
                      TensorLSTMOptimizer)

GRAPH_FAMILIES = ("ng-gnn", "ng-t", "dng", "nfn")
LEARNED_FAMILIES = GRAPH_FAMILIES + ("ff", "lstm", "tensor-lstm")
HAND_FAMILIES = ("adam", "adamw", "sgdm", "relative-adam")
FAMILIES = LEARNED_FAMILIES + HAND_FAMILIES


@dataclass
class OptimizerConfig:
    """Everything needed to rebuild an optimizer (its weights come from a checkpoint's state_dict).

    One flat record for every family, so that every checkpoint ever written loads (the field names and defaults are
    part of the checkpoint format: do not rename or change them). Which fields each family reads:

    ============================  ===============================================================================
    family                        fields read
    ============================  ===============================================================================
    every learned family          ``inputs``, ``preprocess`` (features); ``step_rule``, ``head_hidden``, ``lam``
    (GRAPH_FAMILIES, ff, lstm,    (the update head), and the step rule's own fields below; ``max_update`` (a
    tensor-lstm)                  bound on each element's step relative to its tensor's RMS, 0 = none);
                                  ``rate_adapt``, ``rate_adapt_min`` (per-tensor rates adapted online, 0 = none)
    ng-gnn, ng-t, dng, nfn        + ``hidden``, ``depth``, ``kmax``, ``encoder_options``, ``positional`` (encoder)
    lstm, tensor-lstm             + ``lstm_hidden``
    ff                            nothing more
    adam, adamw                   ``lr``, ``weight_decay`` (decoupled; > 0 makes it AdamW)
    sgdm                          ``lr``, ``momentum``, ``weight_decay`` (added to the gradient)
    relative-adam                 ``lr`` (a rate relative to each tensor's initial RMS)
    ============================  ===============================================================================

    The step rule's fields (``step_rule``):

    * ``"modulated"`` (:class:`l2o.optim.heads.UpdateHead`): ``layer_scale``, ``adam_residual``, ``adam_lr``,
      ``adam_scale``, ``additive``, ``relative``. ``relative = True``, ``adam_scale > 0`` and ``additive = False``
      each need ``adam_residual = True``, which needs ``inputs = "adam"`` (the second moment). The shipped
      optimizers: ``adam_residual = True, adam_scale = 1, additive = False, relative = True``.
    * ``"mlp"`` (:class:`l2o.optim.heads.MLPStepHead`, the published reference rule): ``head_layers``,
      ``relative`` (each step times its tensor's initial RMS; not in the reference), ``category_rates`` (each step
      times a learned rate of its tensor's category, first / hidden / last layer x weight / bias; not in the
      reference); ``adam_residual`` must stay False, and ``layer_scale``, ``adam_lr``, ``adam_scale``, ``additive``
      are not read.

    Invalid combinations are refused when the optimizer is built (:func:`build_optimizer`), naming the fields.
    """

    family: str = "ng-gnn"  # one of FAMILIES
    # learned optimizers
    hidden: int = 32  # encoder width
    depth: int = 2  # encoder layers
    kmax: int = 3
    encoder_options: dict = field(default_factory=dict)  # e.g. {"bidirectional": True} for dng
    positional: str = "role"  # input/output node embeddings: "role" (shared) or "index" (one per neuron)
    head_hidden: int = 32
    lam: float = 0.01
    # "modulated": lam d exp(lam m) with per-layer scales and time features, optionally + or only a modulated Adam
    # step (the flags below); "mlp": the published reference rule, a plain ReLU MLP with head_layers hidden layers
    step_rule: str = "modulated"
    head_layers: int = 2  # hidden layers of the "mlp" step rule
    inputs: str = "adam"  # per-element inputs: "adam" (EMA momenta, second moment, Adam direction) | "reference"
    preprocess: str = "logsign"
    layer_scale: bool = True
    adam_residual: bool = False
    adam_lr: float = 1e-3
    adam_scale: float = 0.0  # > 0: learned per-element Adam lr multiplier in [e^-adam_scale, e^adam_scale]
    additive: bool = True  # False: no free-form additive term (only the modulated Adam step)
    # "modulated": the Adam residual step x RMS of its tensor (adam_lr is then a relative rate); "mlp": every step
    # x its tensor's initial RMS
    relative: bool = False
    # "mlp": every step x exp(a learned log-rate of its tensor's category) (first / hidden / last x weight / bias)
    category_rates: bool = False
    # "mlp" with relative / category_rates: > 0 caps each element's multiplier (initial tensor RMS x category rate)
    # at rate_cap; 1 keeps a relative rule derived from an absolute one from ever stepping further than it (0 = none)
    rate_cap: float = 0.0
    lstm_hidden: int = 8  # lstm: per-element state size; tensor-lstm: width of its MLP and its cell
    # every learned family: > 0 clamps each element's update to max_update x the RMS of its tensor (0 = no bound)
    max_update: float = 0.0
    # every learned family: > 0 multiplies each tensor's step by a rate adapted online by hypergradient descent,
    # rate_adapt = the largest change of its log per step (l2o/optim/rate_adaptation.py; 0 = the rule's own rates)
    rate_adapt: float = 0.0
    rate_adapt_min: float = 0.1  # the lowest adapted rate, x the rule's step (1 = adapt upward only; at most 10x up)
    # hand-designed optimizers
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown optimizer family {self.family!r}; choose one of {FAMILIES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "OptimizerConfig":
        known = {f.name for f in fields(OptimizerConfig)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown optimizer config keys {sorted(unknown)}")
        return OptimizerConfig(**d)


def build_optimizer(cfg: OptimizerConfig) -> Optimizer:
    """A freshly initialised optimizer module for ``cfg`` (use ``torch.manual_seed`` first for a fixed init)."""
    head = dict(head_hidden=cfg.head_hidden, lam=cfg.lam, layer_scale=cfg.layer_scale,
                adam_residual=cfg.adam_residual, adam_lr=cfg.adam_lr, adam_scale=cfg.adam_scale,
                additive=cfg.additive, relative=cfg.relative, category_rates=cfg.category_rates,
                rate_cap=cfg.rate_cap, step_rule=cfg.step_rule, head_layers=cfg.head_layers, max_update=cfg.max_update,
                rate_adapt=cfg.rate_adapt, rate_adapt_min=cfg.rate_adapt_min)
    feats = FeatureConfig(preprocess=cfg.preprocess, inputs=cfg.inputs)
    if cfg.family in GRAPH_FAMILIES:
        return GraphOptimizer(encoder=cfg.family, hidden=cfg.hidden, depth=cfg.depth, kmax=cfg.kmax,
                              encoder_options=dict(cfg.encoder_options), features=feats, positional=cfg.positional,
                              **head)
    if cfg.family == "ff":
        return FFOptimizer(features=feats, **head)
    if cfg.family == "lstm":
        return LSTMOptimizer(lstm_hidden=cfg.lstm_hidden, features=feats, **head)
    if cfg.family == "tensor-lstm":
        return TensorLSTMOptimizer(lstm_hidden=cfg.lstm_hidden, features=feats, **head)
    if cfg.family == "relative-adam":
        return RelativeAdam(cfg.lr)
    if cfg.family in ("adam", "adamw"):
        return Adam(cfg.lr, weight_decay=cfg.weight_decay)
    return SGDMomentum(cfg.lr, cfg.momentum, cfg.weight_decay)
