"""Per-parameter optimizer features and the statistics kept as optimizer state.

Two input sets (``FeatureConfig.inputs``):

* ``"adam"`` (default): momenta at decays ``(0.5, 0.9, 0.99, 0.999, 0.9999)`` kept as moving averages
  ``m <- beta m + (1 - beta) g`` (``m [P, 5]``) and an Adam-style second moment ``v [P]``: 6 floats of state. The
  features are the parameter, the gradient, the 5 momenta, ``sqrt(v_hat)`` and the Adam direction
  ``m_hat / sqrt(v_hat + eps)`` (bias-corrected, decay 0.9): ``RAW_FEATURES = 9`` values.
* ``"reference"``: what the released code of Kofinas et al. feeds its L2O models: the parameter, the gradient and
  the 5 momenta kept as plain accumulating sums ``m <- beta m + g`` (no ``1 - beta``, no bias correction, no second
  moment): 7 values, 5 floats of state.
* ``"reference+v"``: the reference set plus ``sqrt(v_hat)`` of an Adam second moment (decay 0.999, bias-corrected):
  8 values, 6 floats of state. It separates what the ``"adam"`` set adds: under the log/sign preprocessing the
  ``(1 - beta)`` factor of a moving average only shifts ``log|m|`` by a constant (absorbed by the first layer's
  bias) and the Adam direction's log-magnitude is ``log|m_0.9| - log sqrt(v_hat)`` up to bias corrections that vanish
  after about 50 steps, so the second moment is the one new piece of information.

Plus one step counter per tensor. Two preprocessings (``FeatureConfig.preprocess``):

* ``"logsign"`` (Andrychowicz et al. 2016): each value ``x`` -> ``(log|x| / p, sign x)`` if ``|x| >= e^-p``, else
  ``(-1, e^p x)``, ``p = 10``: 18 features;
* ``"rms"`` (learned_optimization): each value divided by its RMS over its tensor: 9 features.

Time features ``tanh(t / tau - 1)`` for ``tau in (1, 3, 10, ..., 1e5)`` are global (one vector per step).
Every sqrt has its epsilon inside, so second-order meta-gradients stay finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..runtime import ComputedRows, as_tensor, device_constant
from .context import ParamContext

DECAYS = (0.5, 0.9, 0.99, 0.999, 0.9999)
BETA2 = 0.999
TIME_TAUS = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
RAW_FEATURES = 9
REFERENCE_RAW_FEATURES = 7
INPUT_SETS = ("adam", "reference", "reference+v")
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class FeatureConfig:
    preprocess: str = "logsign"  # "logsign" | "rms"
    logsign_p: float = 10.0
    inputs: str = "adam"  # "adam" | "reference" | "reference+v" (see the module docstring)

    def __post_init__(self):
        if self.preprocess not in ("logsign", "rms"):
            raise ValueError(f"preprocess must be 'logsign' or 'rms', got {self.preprocess!r}")
        if self.inputs not in INPUT_SETS:
            raise ValueError(f"inputs must be one of {INPUT_SETS}, got {self.inputs!r}")

    @property
    def raw_features(self) -> int:
        return {"adam": RAW_FEATURES, "reference": REFERENCE_RAW_FEATURES,
                "reference+v": REFERENCE_RAW_FEATURES + 1}[self.inputs]

    @property
    def num_features(self) -> int:
        return 2 * self.raw_features if self.preprocess == "logsign" else self.raw_features

    @property
    def state_floats(self) -> int:
        """Floats of per-element state the statistics need: 5 momenta, plus ``v`` where the input set reads it."""
        return len(DECAYS) + int(self.has_second_moment)

    @property
    def has_second_moment(self) -> bool:
        return self.inputs != "reference"

    @property
    def num_time_features(self) -> int:
        return len(TIME_TAUS)


def init_moments(P: int, dtype=torch.float32, device=None, cfg: FeatureConfig = FeatureConfig()
                 ) -> dict[str, torch.Tensor]:
    """Zero statistics for ``P`` elements: ``m [P, 5]``, ``v [P]`` (input sets with a second moment), ``step``
    (0-dim, number of updates done)."""
    state = {"m": torch.zeros(P, len(DECAYS), dtype=dtype, device=device),
             "step": torch.zeros((), dtype=dtype, device=device)}
    if cfg.has_second_moment:
        state["v"] = torch.zeros(P, dtype=dtype, device=device)
    return state


def update_moments(grads: torch.Tensor, state: dict[str, torch.Tensor], cfg: FeatureConfig = FeatureConfig()
                   ) -> dict[str, torch.Tensor]:
    """Advance the statistics by one gradient ``[P]``; returns new tensors (no in-place writes).

    ``"adam"`` inputs: moving averages and a second moment; ``"reference"``: plain sums ``m <- beta m + g``;
    ``"reference+v"``: plain sums and the second moment.
    """
    decays = device_constant(tuple(DECAYS), grads.dtype, grads.device)
    # Accumulated in place into the fresh products (whose backward does not read them): one [P, 5] allocation
    # instead of three, on the optimizer step's path to its peak of memory.
    m = state["m"] * decays
    if cfg.inputs == "adam":
        m.addcmul_(grads[:, None], 1 - decays)
    else:
        m.add_(grads[:, None])
    new = {**state, "m": m, "step": state["step"] + 1}
    if cfg.has_second_moment:
        new["v"] = (state["v"] * BETA2).addcmul_(grads, grads, value=1 - BETA2)
    return new


def adam_direction(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Bias-corrected ``m_hat / (sqrt(v_hat) + eps)`` with decay 0.9 (the Adam step before the learning rate)."""
    t = state["step"].clamp(min=1)
    m_hat = state["m"][:, 1] / (1 - 0.9 ** t)
    v_hat = state["v"] / (1 - BETA2 ** t)
    return m_hat / (torch.sqrt(v_hat + ADAM_EPS ** 2) + ADAM_EPS)


def logsign(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """``[..., F] -> [..., 2F]``: the log/sign preprocessing; the log branch never sees |x| < e^-p (finite grads)."""
    mag = x.abs()
    big = mag >= math.exp(-p)
    # Scalar branches of torch.where: no [P, F] tensors of ones.
    first = torch.where(big, torch.log(torch.where(big, mag, 1.0)) / p, -1.0)
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.cat([first, second], -1)


def raw_features(params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
                 cfg: FeatureConfig = FeatureConfig()) -> torch.Tensor:
    """``[P, cfg.raw_features]`` (state already updated): parameter, gradient, 5 momenta, then ``sqrt(v_hat)`` for
    the input sets with a second moment and the Adam direction for ``"adam"``."""
    cols = [params[:, None], grads[:, None], state["m"]]
    if cfg.has_second_moment:
        cols.append(_sqrt_v_hat(state)[:, None])
    if cfg.inputs == "adam":
        cols.append(adam_direction(state)[:, None])
    return torch.cat(cols, 1)


def _sqrt_v_hat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    t = state["step"].clamp(min=1)
    return torch.sqrt(state["v"] / (1 - BETA2 ** t) + 1e-30)


def state_rows(state: dict[str, torch.Tensor], num_rows: int, r0: int, r1: int) -> dict[str, torch.Tensor]:
    """Rows ``r0:r1`` of every per-element entry of ``state`` (first dim ``num_rows``); the rest shared."""
    return {k: v[r0:r1] if v.dim() and v.shape[0] == num_rows else v for k, v in state.items()}


def feature_rows(ctx: ParamContext, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
                 cfg: FeatureConfig) -> torch.Tensor | ComputedRows:
    """The preprocessed per-element features ``[P, cfg.num_features]`` as the update reads them.

    Without autograd (the optimizer step) the log/sign features are a :class:`~l2o.runtime.ComputedRows`: each
    chunk's rows are made from that chunk's parameters, gradients and statistics when the head reaches them (the same
    arithmetic row by row, equal results), so the ``[P, 18]`` block (72 bytes per parameter) and the ``[P, R]`` raw
    values never exist at once; on large models they were the step's peak of memory. With autograd (meta-training)
    and for the RMS preprocessing (which reads whole tensors) it is the tensor."""
    if cfg.preprocess != "logsign" or torch.is_grad_enabled():
        return _preprocessed(ctx, params, grads, state, cfg)
    P = params.shape[0]

    def rows(r0: int, r1: int) -> torch.Tensor:
        return _preprocessed(ctx, params[r0:r1], grads[r0:r1], state_rows(state, P, r0, r1), cfg)

    return ComputedRows(rows, P, (cfg.num_features,), params.device)


def param_features(ctx: ParamContext, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
                   cfg: FeatureConfig) -> torch.Tensor:
    """:func:`feature_rows` as one tensor ``[P, cfg.num_features]`` (made in row chunks without autograd)."""
    return as_tensor(feature_rows(ctx, params, grads, state, cfg))


def adam_direction_rows(state: dict[str, torch.Tensor]) -> torch.Tensor | ComputedRows:
    """:func:`adam_direction` ``[P]``; without autograd a :class:`~l2o.runtime.ComputedRows` made chunk by chunk."""
    if torch.is_grad_enabled():
        return adam_direction(state)
    P = state["v"].shape[0]
    return ComputedRows(lambda r0, r1: adam_direction(state_rows(state, P, r0, r1)), P, (), state["v"].device)


def _preprocessed(ctx, params, grads, state, cfg):
    raw = raw_features(params, grads, state, cfg)
    if cfg.preprocess == "logsign":
        return logsign(raw, cfg.logsign_p)
    return raw / ctx.tensor_rms(raw, eps=1e-16)


def time_features(step: torch.Tensor) -> torch.Tensor:
    """``tanh(t / tau - 1)``: ``[len(TIME_TAUS)]`` for a scalar step, ``[P, len(TIME_TAUS)]`` for per-element steps
    (several tasks at different steps updated together in meta-training)."""
    taus = device_constant(tuple(TIME_TAUS), step.dtype, step.device)
    return torch.tanh(step[..., None] / taus - 1)
