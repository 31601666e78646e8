"""The per-parameter update heads (step rules) shared by every learned optimizer family.

``(features [P, F], projected embedding [P, H] or None, time features [T], Adam direction [P]) -> step [P]``

Two step rules:

* ``"modulated"`` (:class:`UpdateHead`): a small MLP outputs a direction ``d`` and a magnitude ``m`` per element; the
  step is ``lam * d * exp(lam * m)`` (Kofinas et al. section 5 / learned_optimization), optionally multiplied by a
  learned per-category scale (first / hidden / last layer x weight / bias) and optionally added to an Adam step with
  a learned learning rate ("Adam residual"), so that an untrained optimizer behaves like Adam.

  With ``adam_scale > 0`` the head also outputs a third value ``s`` per element and the Adam step is multiplied by
  ``exp(adam_scale * tanh(s))``: a learned, bounded per-element learning-rate multiplier in
  ``[e^-adam_scale, e^adam_scale]``. With ``additive=False`` the ``lam * d * exp(lam * m)`` term is dropped, so the
  optimizer can only re-scale Adam's steps per element: it cannot stall or reverse Adam's progress.

  With ``relative=True`` the Adam step of every element is also multiplied by ``scale``, the RMS of its tensor when
  the optimizer state was created (floored at ``RELATIVE_FLOOR``; kept in the state), so the learned learning rates
  are *relative* to each layer's initial scale: a layer with small weights (large fan-in) takes proportionally
  small steps and the first layer (small fan-in, large weights) large ones. The scale is read once, not every step:
  weights grow during training, and a step that grows with them (LARS-style) is a different rule.
* ``"mlp"`` (:class:`MLPStepHead`): the plain rule of the published reference code, ``lam * d * exp(lam * m)`` from a
  ReLU MLP and nothing else.

What each choice did in meta-training and on CIFAR-10 is in ``results/README.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import RowSource, per_row_chunks
from .context import NUM_CATEGORIES, ParamContext

RELATIVE_FLOOR = 1e-3  # a zero-initialised tensor still moves (and then grows geometrically)


def first_layer(feats: torch.Tensor, linear: nn.Linear, embed: torch.Tensor | None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(feats) + embed + extra`` -> ``[P, hidden]`` with one pass over ``[P, hidden]`` per term fewer.

    ``embed [P, hidden]`` or None; ``extra``: ``[hidden]`` or ``[P, hidden]`` or None. The embedding is the input of
    the product (``addmm``) and the bias-like terms are summed first, then added in place to the fresh result.
    ``embed`` is consumed: when no gradient is recorded (the optimizer step) the product is accumulated into it.
    """
    shift = linear.bias if extra is None else linear.bias + extra
    if embed is None:
        return torch.addmm(shift, feats, linear.weight.t()) if shift.dim() == 1 else feats @ linear.weight.t() + shift
    if not torch.is_grad_enabled():
        return embed.addmm_(feats, linear.weight.t()).add_(shift)
    # In place on the fresh product: addmm's backward does not read its output, so this is autograd-safe.
    return torch.addmm(embed, feats, linear.weight.t()).add_(shift)


def activation_(act, h: torch.Tensor) -> torch.Tensor:
    """``act(h)``, in place when no gradient is recorded (``h`` must be a fresh temporary): the optimizer step runs
    under ``no_grad``, where this saves a ``[P, hidden]`` allocation per layer; meta-training keeps ``h``."""
    return act(h, inplace=True) if not torch.is_grad_enabled() else act(h)


def relative_scale(ctx: ParamContext, params: torch.Tensor) -> torch.Tensor:
    """``[P]``: the RMS of each element's tensor in ``params [P]``, floored at ``RELATIVE_FLOOR``."""
    return ctx.tensor_rms(params.detach()[:, None]).squeeze(1).clamp_min(RELATIVE_FLOOR)


class UpdateHead(nn.Module):
    """The ``"modulated"`` step rule: see the module docstring.

    Keyword arguments only (``OptimizerConfig`` names the same settings):
        num_features: per-element input features ``F``. time_features: size ``T`` of the time features.
        embed_dim: per-element embedding size (0 = none). hidden: width of the MLP. lam: the step scale.
        layer_scale: a learned per-category scale of the additive term. adam_residual: add (subtract) a learned-rate
        Adam step. adam_lr: its initial rate (relative with ``relative``). adam_scale: > 0 adds the per-element
        multiplier ``exp(adam_scale * tanh(s))``. additive: keep the ``lam d exp(lam m)`` term. relative: scale the
        Adam step by each tensor's initial RMS.
    Valid combinations: ``relative``, ``adam_scale > 0`` and ``additive=False`` each need ``adam_residual``.
    Shapes: ``forward(ctx, feats [P, F], embed [P, hidden] or None, tfeat [T], adam_dir [P], scale [P]) -> step [P]``;
    ``embed`` is consumed (see :func:`first_layer`); without autograd it may be a :class:`~l2o.runtime.GatheredRows`.
    """

    needs_adam_direction = True

    def __init__(self, *, num_features: int, time_features: int, embed_dim: int = 0, hidden: int = 32,
                 lam: float = 0.01, layer_scale: bool = True, adam_residual: bool = False,
                 adam_lr: float = 1e-3, adam_scale: float = 0.0, additive: bool = True, relative: bool = False):
        super().__init__()
        if relative and not adam_residual:
            raise ValueError("relative=True scales the Adam residual: it needs adam_residual=True")
        self.relative = relative
        if adam_scale < 0 or (adam_scale and not adam_residual):
            raise ValueError(f"adam_scale={adam_scale} must be >= 0 and needs adam_residual=True")
        if not additive and not adam_residual:
            raise ValueError("additive=False leaves no update at all: it needs adam_residual=True")
        self.lam, self.layer_scale, self.adam_residual = lam, layer_scale, adam_residual
        self.adam_scale, self.additive = adam_scale, additive
        self.feat_in = nn.Linear(num_features, hidden)
        self.time_in = nn.Linear(time_features, hidden, bias=False)
        # Projects node/edge embeddings to the head's width *before* they are gathered per element
        # (E rows instead of P rows: a conv edge holds kmax^2 elements).
        self.embed_proj = nn.Linear(embed_dim, hidden, bias=False) if embed_dim else None
        self.hidden = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 3 if adam_scale else 2)
        self.log_scale = nn.Parameter(torch.zeros(NUM_CATEGORIES)) if layer_scale and additive else None
        # One learned Adam learning rate per category (first / hidden / last layer x weight / bias).
        self.log_adam_lr = nn.Parameter(torch.full((NUM_CATEGORIES,), math.log(adam_lr))) if adam_residual else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.feat_in, self.time_in, self.hidden, self.embed_proj):
            if lin is not None:
                lin.reset_parameters()
        # Small outputs at init: with the Adam residual the untrained optimizer is Adam; without it, tiny steps.
        nn.init.normal_(self.out.weight, std=1e-3 if not self.adam_residual else 0.0)
        nn.init.zeros_(self.out.bias)

    def forward(self, ctx: ParamContext, feats: torch.Tensor | RowSource, embed: torch.Tensor | RowSource | None,
                tfeat: torch.Tensor, adam_dir: torch.Tensor | RowSource | None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale [P]`` (each element's tensor RMS at the start, :func:`relative_scale`) only with ``relative``.

        The whole rule (MLP and step arithmetic) is one row-wise map through :func:`per_row_chunks`: without autograd
        every per-element input and temporary exists a chunk at a time (``feats``, ``embed`` and ``adam_dir`` may
        be :class:`~l2o.runtime.RowSource`), and only the step ``[P]`` is made at full size."""
        if self.relative and scale is None:
            raise ValueError("a relative update head needs the per-element scale kept in the optimizer state")
        use_mlp = self.additive or self.adam_scale
        rows = slice(None) if self.additive else slice(2, 3)  # without the additive term only s is computed
        shift, out_weight, out_bias = self.time_in(tfeat), self.out.weight[rows], self.out.bias[rows]
        # [hidden] for one step count; [P, hidden] for per-element steps (tasks at different steps updated together)
        row_shift = shift if shift.dim() == 2 else None
        # per-tensor factors [T], gathered per element by tensor id inside the chunk
        layer_scale = torch.exp(self.log_scale)[ctx.category] if self.log_scale is not None else None
        adam_lr = torch.exp(self.log_adam_lr)[ctx.category] if self.adam_residual else None

        def rule(f, e, s, tensor_id, a, sc):
            out = None
            if use_mlp:
                h = activation_(F.silu, first_layer(f, self.feat_in, e, shift if s is None else s))
                h = activation_(F.silu, self.hidden(h))
                out = F.linear(h, out_weight, out_bias)
            step = None
            if self.additive:
                step = self.lam * out[:, 0] * torch.exp(self.lam * out[:, 1])
                if layer_scale is not None:
                    step = step * layer_scale.index_select(0, tensor_id)
            if self.adam_residual:
                adam_step = adam_lr.index_select(0, tensor_id) * a
                if self.adam_scale:
                    adam_step = adam_step * torch.exp(self.adam_scale * torch.tanh(out[:, -1]))
                if self.relative:
                    adam_step = adam_step * sc
                step = -adam_step if step is None else step - adam_step
            return step

        return per_row_chunks(rule, feats, embed, row_shift, ctx.tensor_id, adam_dir, scale)


class MLPStepHead(nn.Module):
    """The plain learned step rule of Kofinas et al.'s released L2O code (step rule ``"mlp"``).

    ``[features, embedding]`` -> ReLU MLP with ``layers`` hidden layers of width ``hidden`` -> ``(d, m)`` per
    element; the step is ``lam * d * exp(lam * m)``. Nothing else: no Adam term, no per-layer scale, no time
    features, PyTorch's default initialisation everywhere (so the untrained rule already takes steps of order
    ``lam``). With ``relative`` (not in the reference) the step is also multiplied by the RMS its tensor had at
    the start (``scale``): a step size in units of the tensor's own scale, which shrinks with fan-in as the
    initialisation does, so a rule whose output does not see width still moves a wide layer by the same fraction.
    With ``category_rates`` (not in the reference) the step is also multiplied by ``exp(log_rate[c])``, a learned
    rate per tensor category ``c`` (first / hidden / last layer x weight / bias, zero-initialised): with
    ``relative``, ``log_rate = -log(RMS of the category on the meta-training task)`` starts the relative rule
    exactly where an absolute one is on every layer of that task (``experiments/relative_steps.py``).

    Keyword arguments only:
        num_features: per-element input features ``F``. embed_dim: per-element embedding size (0 = none).
        hidden: width of the hidden layers. layers: number of hidden layers (>= 1). lam: the step scale.
        relative: multiply each step by ``scale [P]`` (each element's tensor RMS at the start).
        category_rates: multiply each step by its category's learned rate.
        rate_cap: > 0 caps that multiplier (RMS x rate) at ``rate_cap``. With the rates of a relative warm start,
            1 means no tensor steps further than under the absolute rule it came from: tensors whose scale is
            unlike the meta-training task's, such as normalisation gains initialised at 1, cannot take steps tens of
            times larger than it; smaller ones still take proportionally smaller steps.
    Shapes: ``forward(ctx, feats [P, F], embed [P, hidden] or None, ..., scale [P] or None) -> step [P]``;
    ``embed`` comes already projected by :attr:`embed_proj` (``[E, embed_dim] -> [E, hidden]``, applied before the
    per-element gather, which equals a first linear layer on the concatenation ``[features, embedding]``) and is
    consumed (:func:`first_layer`).
    """

    needs_adam_direction = False

    def __init__(self, *, num_features: int, embed_dim: int = 0, hidden: int = 64, layers: int = 2,
                 lam: float = 0.01, relative: bool = False, category_rates: bool = False, rate_cap: float = 0.0):
        super().__init__()
        if not rate_cap >= 0:
            raise ValueError(f"rate_cap must be >= 0 (0 = no cap), got {rate_cap}")
        if rate_cap and not (relative or category_rates):
            raise ValueError("rate_cap caps the relative / category-rate multiplier: it needs relative=True or "
                             "category_rates=True")
        if layers < 1 or hidden < 1:
            raise ValueError(f"an MLP step head needs layers >= 1 and hidden >= 1, got layers={layers}, "
                             f"hidden={hidden}")
        self.lam, self.relative, self.rate_cap = lam, relative, float(rate_cap)
        self.feat_in = nn.Linear(num_features, hidden)
        self.embed_proj = nn.Linear(embed_dim, hidden, bias=False) if embed_dim else None
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, 2)
        self.log_rate = nn.Parameter(torch.zeros(NUM_CATEGORIES)) if category_rates else None

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.log_rate is not None:
            nn.init.zeros_(self.log_rate)

    def forward(self, ctx: ParamContext, feats: torch.Tensor, embed: torch.Tensor | None, tfeat=None,
                adam_dir=None, scale=None) -> torch.Tensor:
        if self.relative and scale is None:
            raise ValueError("a relative update head needs the per-element scale kept in the optimizer state")

        def mlp(f: torch.Tensor, e: torch.Tensor | None, sc: torch.Tensor | None) -> torch.Tensor:
            h = activation_(F.relu, first_layer(f, self.feat_in, e))
            for lin in self.hidden:
                h = activation_(F.relu, lin(h))

            out = self.out(h)
            step = self.lam * out[:, 0] * torch.exp(self.lam * out[:, 1])
            return step * sc if sc is not None else step

        mult = self.multiplier(ctx, scale)
        if self.rate_cap:
            mult = mult.clamp(max=self.rate_cap)
        return per_row_chunks(mlp, feats, embed, mult)

    def multiplier(self, ctx: ParamContext, scale: torch.Tensor | None) -> torch.Tensor | None:
        """``[P]``: each element's step multiplier before ``rate_cap``, its tensor's initial RMS (``scale``, with
        ``relative``) times its category's rate (with ``category_rates``); None with neither."""
        mult = scale if self.relative else None
        if self.log_rate is not None:
            rate = torch.exp(self.log_rate).index_select(0, ctx.category).index_select(0, ctx.tensor_id)
            mult = rate if mult is None else mult * rate
        return mult
