"""Online per-tensor rate adaptation by hypergradient descent (Baydin et al., 2018), for learned step rules.

A learned rule meta-trained on one task takes about one effective rate everywhere, while the best rate of a network
moves with its shape and data by 20x (relative Adam on a CIFAR-10 CNN: about 1.0 at depth 1, 0.05 or less at depth 5;
Fashion-MNIST does not share that dependence, so meta-training on it cannot teach it). This module lets each
tensor's step size follow its own training run instead: every step is multiplied by ``exp(log_rate)`` per tensor,
and ``log_rate`` descends the loss's derivative with respect to it. For ``theta_t = theta_{t-1} + a u_{t-1}``
that derivative is ``g_t . u_{t-1}``: a gradient that still opposes the last step (the step was too short)
raises the rate, one that agrees with it (the step overshot) lowers it. The signal is normalised to a cosine per
tensor, so ``beta`` is the largest change of ``log_rate`` per step whatever the tensor's scale, and the rate is kept
within ``[min_ratio, max_ratio]`` (default 0.1 to 10) of the learned rule's own step.

``min_ratio = 1`` adapts upward only. The signal is greedy (it sees the next step's loss), and greedy rate adaptation
is biased toward rates smaller than the best ones over a longer horizon (Wu et al., 2018, "Understanding
short-horizon bias in stochastic meta-optimization"): a signal to go larger is a sign the step is far too short, one
to go smaller may be that bias.

The adaptation is not meta-trained: the signal is detached (a constant of each step, as in hypergradient descent),
so a meta-gradient sees the multiplier but not how it came about. State: the last update and the log-rate, each
``[P]`` (every element holds its tensor's value), two floats per parameter.
"""
from __future__ import annotations

import math

import torch

from .context import ParamContext

DEFAULT_MAX_RATIO = 10.0  # the adapted step stays within 10x of the learned rule's, either way


def init_rate_state(num_elements: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The state of a rule that adapts its rates: ``last_update [P]`` (zero: the first step has no signal) and
    ``log_rate [P]`` (zero: the learned rule's own step)."""
    zeros = torch.zeros(num_elements, dtype=dtype, device=device)
    return {"last_update": zeros, "log_rate": zeros.clone()}


def tensor_cosine(ctx: ParamContext, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """``[T]``: the cosine between ``a [P]`` and ``b [P]`` within each tensor (0 where either is all zero)."""
    sums = ctx.tensor_sums(torch.stack((a * b, a * a, b * b), dim=1))
    return sums[:, 0] / torch.sqrt(sums[:, 1] * sums[:, 2] + eps)


def adapt_rates(ctx: ParamContext, grads: torch.Tensor, state: dict[str, torch.Tensor], beta: float,
                min_ratio: float = 1 / DEFAULT_MAX_RATIO, max_ratio: float = DEFAULT_MAX_RATIO) -> torch.Tensor:
    """``[P]``: each element's new log-rate, from its tensor's old one (``state["log_rate"] [P]``) moved by
    ``-beta`` times the cosine between this step's gradient ``grads [P]`` and the last update
    (``state["last_update"] [P]``) in that tensor, kept within ``[log(min_ratio), log(max_ratio)]``; detached."""
    if not beta > 0:
        raise ValueError(f"rate adaptation needs beta > 0, got {beta}")
    if not 0 < min_ratio <= 1 < max_ratio:
        raise ValueError(f"need 0 < min_ratio <= 1 < max_ratio, got min_ratio={min_ratio}, max_ratio={max_ratio}")
    with torch.no_grad():
        cos = tensor_cosine(ctx, grads.detach(), state["last_update"])
        log_rate = state["log_rate"] - beta * cos.index_select(0, ctx.tensor_id)
        return log_rate.clamp(math.log(min_ratio), math.log(max_ratio))
