"""Optimizer families behind one functional interface.

Every optimizer here is an ``nn.Module`` whose own parameters are the meta-parameters (none for the hand-designed
ones) and which implements

    init_state(ctx, params [P]) -> state                       (dict of tensors)
    update(ctx, params [P], grads [P], state, lr=1.0) -> (new_params [P], new_state)

on flat parameter vectors laid out by a :class:`ParamContext`. ``update`` is pure (no in-place writes) and
differentiable with respect to the module's weights, so meta-training unrolls it directly, and
``NeuralGraphOptimizer.step()`` calls the very same function under ``torch.no_grad()``. ``lr`` multiplies the
step (a float or a per-element ``[P]`` tensor for torch.optim parameter groups; 1.0 = as meta-trained).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..encoders import build_encoder
from ..runtime import RowSource, as_tensor, stream_features
from .context import ParamContext
from .features import (FeatureConfig, adam_direction_rows, feature_rows, init_moments, time_features,
                       update_moments)
from .heads import MLPStepHead, UpdateHead, relative_scale
from .rate_adaptation import adapt_rates, init_rate_state


class Optimizer(nn.Module):
    """Base class of the functional optimizers."""

    family: str = ""
    needs_graph: bool = False
    # floats of per-element state (what the step-overhead benchmark reports)
    state_floats_per_param: int = 0

    def init_state(self, ctx: ParamContext, params: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, ctx: ParamContext, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
               lr: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, ctx, params, grads, state, lr=1.0):
        """``update`` as the module's call, so ``torch.func.functional_call`` can swap the meta-parameters."""
        return self.update(ctx, params, grads, state, lr)


STEP_RULES = ("modulated", "mlp")


class LearnedOptimizer(Optimizer):
    """Moments + features + update head; subclasses add how the per-element embedding is computed.

    ``step_rule`` picks the head: ``"modulated"`` (:class:`UpdateHead`: ``lam d exp(lam m)`` with learned per-layer
    scales and time features, optionally plus or only a modulated Adam step) or ``"mlp"`` (:class:`MLPStepHead`: the
    plain ReLU-MLP rule of the published reference code, ``head_layers`` hidden layers).

    Every argument is a keyword (here and in the subclasses): the head settings are many flags of one type, and
    ``OptimizerConfig`` documents which of them each step rule reads.
    """

    def __init__(self, *, features: FeatureConfig = FeatureConfig(), head_hidden: int = 32, embed_dim: int = 0,
                 lam: float = 0.01, layer_scale: bool = True, adam_residual: bool = False, adam_lr: float = 1e-3,
                 adam_scale: float = 0.0, additive: bool = True, relative: bool = False, category_rates: bool = False,
                 rate_cap: float = 0.0, step_rule: str = "modulated", head_layers: int = 2, max_update: float = 0.0,
                 rate_adapt: float = 0.0, rate_adapt_min: float = 0.1):
        super().__init__()
        if step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, got {step_rule!r}")
        if not max_update >= 0:
            raise ValueError(f"max_update must be >= 0 (0 = no bound), got {max_update}")
        if not rate_adapt >= 0:
            raise ValueError(f"rate_adapt must be >= 0 (0 = the learned rule's own rates), got {rate_adapt}")
        if not 0 < rate_adapt_min <= 1:
            raise ValueError(f"rate_adapt_min must be in (0, 1] (1 = adapt upward only), got {rate_adapt_min}")
        self.features = features
        self.max_update = float(max_update)
        self.rate_adapt, self.rate_adapt_min = float(rate_adapt), float(rate_adapt_min)
        if step_rule == "mlp":
            if adam_residual:
                raise ValueError("step_rule='mlp' is the plain learned rule: it takes no Adam residual "
                                 "(use step_rule='modulated' for that)")
            self.head = MLPStepHead(num_features=features.num_features, embed_dim=embed_dim, hidden=head_hidden,
                                    layers=head_layers, lam=lam, relative=relative, category_rates=category_rates,
                                    rate_cap=rate_cap)
        else:
            if rate_cap:
                raise ValueError("rate_cap is an option of step_rule='mlp' (with relative or category_rates)")
            if category_rates:
                raise ValueError("category_rates=True is an option of step_rule='mlp' (the 'modulated' rule has its "
                                 "own per-category scales: layer_scale)")
            if features.inputs != "adam" and adam_residual:
                raise ValueError("an Adam residual needs the second moment: use features inputs='adam'")
            self.head = UpdateHead(num_features=features.num_features, time_features=features.num_time_features,
                                   embed_dim=embed_dim, hidden=head_hidden, lam=lam, layer_scale=layer_scale,
                                   adam_residual=adam_residual, adam_lr=adam_lr, adam_scale=adam_scale,
                                   additive=additive, relative=relative)

    extra_state_floats = 0  # per-element state a subclass keeps besides the statistics (LSTM: h and c)

    @property
    def state_floats_per_param(self) -> int:  # type: ignore[override]
        """The statistics, + the per-element scale of relative steps, + the adapted rates' two floats, + the
        subclass's own state."""
        return (self.features.state_floats + int(self.head.relative) + 2 * bool(self.rate_adapt)
                + self.extra_state_floats)

    def init_state(self, ctx: ParamContext, params: torch.Tensor) -> dict[str, torch.Tensor]:
        state = init_moments(params.numel(), params.dtype, params.device, self.features)
        if self.head.relative:
            state["scale"] = relative_scale(ctx, params)
        if self.rate_adapt:
            state.update(init_rate_state(params.numel(), params.dtype, params.device))
        return state

    embed_reads_features = False  # whether embed() reads the features (then a tensor, never a RowSource)

    def embed_takes_tensor(self, num_rows: int, device: torch.device) -> bool:
        """Whether ``embed`` gets the features as one tensor in the optimizer step (default:
        ``embed_reads_features``)."""
        return self.embed_reads_features

    def embed(self, ctx: ParamContext, feats: torch.Tensor | RowSource, state: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor | RowSource | None, dict[str, torch.Tensor]]:
        """Per-element embedding ``[P, head_hidden]`` already projected to the head's width (or None; or, in the
        optimizer step, a :class:`~l2o.runtime.RowSource` that the head reads chunk by chunk). ``feats [P, F]``
        is a tensor where ``embed_takes_tensor``."""
        return None, {}

    def update(self, ctx, params, grads, state, lr=1.0):
        if params.shape != grads.shape or params.dim() != 1:
            raise ValueError(f"update expects flat params and grads [P], got {list(params.shape)} and {list(grads.shape)}")
        new_state = update_moments(grads, state, self.features)
        # Without autograd the per-element inputs are RowSources made chunk by chunk inside the head (see
        # feature_rows). A family whose embedding reads every row at once gets the tensor, which the head then
        # reuses (making the rows twice cost a third more step time on an MLP's graph than the memory is worth).
        feats = feature_rows(ctx, params, grads, new_state, self.features)
        if self.embed_takes_tensor(params.shape[0], params.device):
            feats = as_tensor(feats)
        emb, extra = self.embed(ctx, feats, state)
        adam_dir = adam_direction_rows(new_state) if self.head.needs_adam_direction else None
        step = self.head(ctx, feats, emb, time_features(new_state["step"]), adam_dir, state.get("scale"))
        if self.rate_adapt:  # each tensor's step x its rate, adapted online (rate_adaptation.py)
            new_state["log_rate"] = adapt_rates(ctx, grads, state, self.rate_adapt, self.rate_adapt_min)
            step = step * torch.exp(new_state["log_rate"])
        if self.max_update > 0:
            step = bound_update(ctx, params, step, self.max_update)
        if self.rate_adapt:
            new_state["last_update"] = step.detach()
        new_state.update(extra)
        return params + lr * step, new_state


def bound_update(ctx: ParamContext, params: torch.Tensor, step: torch.Tensor, ratio: float) -> torch.Tensor:
    """``step [P]`` with every element clamped to ``ratio`` times the RMS of its tensor in ``params [P]``.

    A guard against the rare element whose learned update is orders of magnitude off its usual size (an input far
    outside what meta-training saw): the element still moves, by at most ``ratio`` RMS of its tensor. Usual steps
    are far inside a bound of 1 (the default's largest element step on CIFAR-10 CNNs is at most about a quarter of
    its tensor's initial RMS, and tensors grow), so there the update is unchanged, bit for bit. The bound is a
    constant of the step (no gradient through it); where it clamps, the meta-gradient of that element's step is zero.
    """
    bound = ratio * ctx.tensor_rms(params.detach()[:, None])[:, 0]
    return torch.minimum(torch.maximum(step, -bound), bound)


class GraphOptimizer(LearnedOptimizer):
    """Learned optimizer whose per-element embedding comes from a graph encoder over the neural graph.

    Features are scattered onto the graph (biases on nodes, kernel entries on their edge's kernel slots), the
    encoder (NG-GNN, NG-T, DNG or NFN) produces node and edge embeddings, and every element receives the embedding
    of its edge / node, concatenated (through the head's first layer) with its own features.
    """

    needs_graph = True
    embed_reads_features = True

    def __init__(self, *, encoder: str = "ng-gnn", hidden: int = 32, depth: int = 2, kmax: int = 3,
                 encoder_options: dict | None = None, features: FeatureConfig = FeatureConfig(),
                 positional: str = "role", **head):
        super().__init__(features=features, embed_dim=hidden, **head)
        self.encoder_name, self.kmax = encoder, kmax
        F = features.num_features
        # positional="role": all input (output) neurons share one embedding, so an optimizer meta-trained on
        # 1-channel images meets 3-channel ones without untrained table rows.
        self.encoder = build_encoder(encoder, F, kmax * kmax * F, hidden=hidden, depth=depth, kmax=kmax,
                                     positional=positional, **(encoder_options or {}))

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.encoder_name

    def embed_takes_tensor(self, num_rows: int, device: torch.device) -> bool:
        """On a GPU and on very large CPU models (``l2o.runtime.stream_features``) the encoder's input projection
        makes the feature rows chunk by chunk in the optimizer step (and the head makes them again), so the
        ``[P, F]`` features never exist at once: 72 bytes per parameter, the largest part of the step's peak on a
        conv net. Otherwise, and for an encoder that reads all rows at once (DNG's traversal), one tensor, which
        the head then reuses."""
        return self.encoder.reads_all_rows or not stream_features(num_rows, device)

    def embed(self, ctx, feats, state):
        g = ctx.graph
        if g is None:  # a model that cannot be traced, under fallback='per-parameter': own features only
            return None, {}
        whole = ctx.graph_index is None and g.num_param_elements == ctx.num_elements  # every element on the graph
        if isinstance(feats, RowSource) and not whole:
            feats = as_tensor(feats)  # elements off the graph: pick the graph's rows from the tensor
        # Slot-sparse edge features: a linear weight fills 1 of the kmax**2 slots of its edge, so the dense
        # [E, kmax**2, F] form would be mostly zeros that every encoder then multiplies.
        node, edge = g.scatter_slots(feats if isinstance(feats, RowSource) else ctx.graph_part(feats))
        # The head's projection is applied to nodes and edges before the per-element gather (E rows, not P); the
        # encoder may fold it into its own last linear layer.
        weight = self.head.embed_proj.weight
        if not torch.is_grad_enabled() and whole:
            # The optimizer step: the head gathers each chunk's rows itself (the same values) instead of a [P, hidden]
            # copy of every edge's embedding per element, made once at full size.
            return self.encoder.encode_projected_rows(g, node, edge, weight), {}
        node_emb, edge_emb = self.encoder.encode_projected(g, node, edge, weight)
        return ctx.from_graph_part(g.gather_flat(node_emb, edge_emb)), {}


class FFOptimizer(LearnedOptimizer):
    """Per-parameter MLP (Metz et al. 2019): the update head over each element's own features alone."""

    family = "ff"


class LSTMOptimizer(LearnedOptimizer):
    """Per-parameter recurrent optimizer (Metz et al. 2020 style): an LSTM cell per element whose hidden state
    persists across steps; the head reads [features, LSTM output]."""

    family = "lstm"
    embed_reads_features = True

    def __init__(self, *, lstm_hidden: int = 8, features: FeatureConfig = FeatureConfig(), **head):
        super().__init__(features=features, embed_dim=lstm_hidden, **head)
        self.lstm_hidden = lstm_hidden
        self.cell = nn.LSTMCell(features.num_features, lstm_hidden)
        self.extra_state_floats = 2 * lstm_hidden

    def init_state(self, ctx, params):
        state = super().init_state(ctx, params)
        P = params.numel()
        state["h"] = params.new_zeros(P, self.lstm_hidden)
        state["c"] = params.new_zeros(P, self.lstm_hidden)
        return state

    def embed(self, ctx, feats, state):
        h, c = self.cell(feats, (state["h"], state["c"]))
        return self.head.embed_proj(h), {"h": h, "c": c}


class TensorLSTMOptimizer(LearnedOptimizer):
    """The recurrent baseline as the published reference code runs it ("LSTM" in Kofinas et al.'s table).

    No state across steps beyond the momenta: within one step each element's features go through a ReLU MLP
    ``F -> lstm_hidden -> lstm_hidden``, are averaged over the element's tensor, and one LSTM cell runs over the
    network's tensors in order (``ctx.names``), from a zero state on every call. Each tensor's LSTM output is
    broadcast to its elements and joined (through the head's first layer) with their features.

    Batched tasks (``ParamContext.batch``) each get their own sequence: step ``t`` of the recurrence advances the
    ``t``-th tensor of every task at once, so the Python loop runs over sequence positions, never over elements.
    """

    family = "tensor-lstm"
    embed_reads_features = True

    def __init__(self, *, lstm_hidden: int = 32, features: FeatureConfig = FeatureConfig(), **head):
        super().__init__(features=features, embed_dim=lstm_hidden, **head)
        self.lstm_hidden = lstm_hidden
        self.encode = nn.Sequential(nn.Linear(features.num_features, lstm_hidden), nn.ReLU(),
                                    nn.Linear(lstm_hidden, lstm_hidden), nn.ReLU())
        self.cell = nn.LSTMCell(lstm_hidden, lstm_hidden)

    def embed(self, ctx, feats, state):
        T = ctx.num_tensors
        z = self.encode(feats)
        # index_add, not ctx.tensor_sums: in meta-training this runs under autograd over K tasks' tensors at once,
        # one launch and one backward node here against one per tensor there (not measured in that setting)
        sums = z.new_zeros(T, z.shape[1]).index_add(0, ctx.tensor_id, z)
        counts = torch.tensor(ctx.sizes, dtype=z.dtype, device=z.device)[:, None]
        per_tensor = sums / counts  # [T, H]
        task, pos = ctx.tensor_positions()
        num_tasks, length = int(task.max()) + 1, int(pos.max()) + 1
        h = z.new_zeros(num_tasks, self.lstm_hidden)
        c = z.new_zeros(num_tasks, self.lstm_hidden)
        out = per_tensor.new_zeros(T, self.lstm_hidden)
        for t in range(length):  # the recurrence over tensor positions (all tasks at once)
            idx = (pos == t).nonzero().squeeze(1)
            who = task.index_select(0, idx)
            h_t, c_t = self.cell(per_tensor.index_select(0, idx), (h.index_select(0, who), c.index_select(0, who)))
            h, c = h.index_copy(0, who, h_t), c.index_copy(0, who, c_t)
            out = out.index_copy(0, idx, h_t)
        return self.head.embed_proj(out).index_select(0, ctx.tensor_id), {}


# ---------------------------------------------------------------------- hand-designed, same interface
class Adam(Optimizer):
    """Adam / AdamW (decoupled weight decay) on flat vectors; bias-corrected, eps outside the sqrt as torch does."""

    family = "adam"
    state_floats_per_param = 2

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__()
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        if weight_decay:
            self.family = "adamw"

    def init_state(self, ctx, params):
        return {"exp_avg": torch.zeros_like(params), "exp_avg_sq": torch.zeros_like(params),
                "step": params.new_zeros(())}

    def update(self, ctx, params, grads, state, lr=1.0):
        b1, b2 = self.betas
        t = state["step"] + 1
        m = state["exp_avg"] * b1 + grads * (1 - b1)
        v = state["exp_avg_sq"] * b2 + grads * grads * (1 - b2)
        rate = self.lr * lr
        if "scale" in state:  # RelativeAdam: per-tensor rates
            rate = rate * state["scale"]
        if self.weight_decay:
            params = params * (1 - rate * self.weight_decay)
        step = (m / (1 - b1 ** t)) / (torch.sqrt(v / (1 - b2 ** t)) + self.eps)
        new_state = {"exp_avg": m, "exp_avg_sq": v, "step": t}
        if "scale" in state:
            new_state["scale"] = state["scale"]
        return params - rate * step, new_state


class RelativeAdam(Adam):
    """Adam with a per-tensor learning rate ``lr x RMS(tensor at the start)`` (floored at ``RELATIVE_FLOOR``).

    The hand-designed core of the ``relative`` learned optimizers: one relative rate, tuned like Adam's.
    """

    family = "relative-adam"
    state_floats_per_param = 3

    def __init__(self, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(lr, betas, eps)

    def init_state(self, ctx, params):
        return {**super().init_state(ctx, params), "scale": relative_scale(ctx, params)}


class SGDMomentum(Optimizer):
    """SGD with (heavy-ball) momentum, as torch.optim.SGD(momentum=mu) with dampening 0."""

    family = "sgdm"
    state_floats_per_param = 1

    def __init__(self, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__()
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def init_state(self, ctx, params):
        return {"momentum_buffer": torch.zeros_like(params), "step": params.new_zeros(())}

    def update(self, ctx, params, grads, state, lr=1.0):
        if self.weight_decay:
            grads = grads + self.weight_decay * params
        # torch's first step copies the gradient into the buffer; momentum * 0 + g gives the same.
        buf = state["momentum_buffer"] * self.momentum + grads
        return params - self.lr * lr * buf, {"momentum_buffer": buf, "step": state["step"] + 1}
