"""``NeuralGraphOptimizer``: a meta-trained graph optimizer as a drop-in ``torch.optim.Optimizer``.

    opt = NeuralGraphOptimizer(model)                        # shipped default checkpoint
    opt = NeuralGraphOptimizer(model, checkpoint="path.pt")  # any meta-trained checkpoint
    opt = NeuralGraphOptimizer(model.parameters(), model=model, lr=0.5)

The class holds the neural graph, the parameter layout, hyperparameters (``lr`` per group multiplies the learned
step; 1.0 = as meta-trained) and per-parameter state. The arithmetic is the learned optimizer's functional
``update`` — the same function meta-training unrolls — called once per step on all parameters at once.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..graph import NeuralGraph
from .checkpoint import load_checkpoint
from .context import ParamContext
from .learned import Optimizer

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "results" / "checkpoints" / "default.pt"
FALLBACKS = ("raise", "per-parameter")


class NeuralGraphOptimizer(torch.optim.Optimizer):
    """A learned optimizer over the model's neural graph.

    Args:
        params: the model itself, or an iterable of parameters / parameter groups (then pass ``model=``).
        model: the network the parameters belong to (its neural graph is built once, here).
        checkpoint: path of a meta-trained checkpoint (default: ``results/checkpoints/default.pt``).
        lr: multiplies the learned update (1.0 = as meta-trained); schedulers may change it per group.
        fallback: ``"raise"`` (default): a layer the graph cannot represent raises ``UnsupportedModuleError``
            naming it. ``"per-parameter"``: such layers' tensors are updated by the per-parameter head alone
            (zero graph embedding), with a warning.
        optimizer: an already built learned optimizer module (instead of a checkpoint), e.g. during research.

    State per parameter: ``m`` (5 momenta), ``v`` (second moment), ``step``, plus ``h``/``c`` for LSTM optimizers.
    The time features use the optimizer's global step (the largest ``step`` among the parameters updated).
    """

    def __init__(self, params: nn.Module | Iterable, model: nn.Module | None = None,
                 checkpoint: str | Path | None = None, lr: float = 1.0, fallback: str = "raise",
                 optimizer: Optimizer | None = None):
        if isinstance(params, nn.Module):
            if model is not None and model is not params:
                raise ValueError("pass either the model as first argument or model=, not two different models")
            model, params = params, params.parameters()
        if model is None:
            raise TypeError("NeuralGraphOptimizer needs the model to build its neural graph: "
                            "NeuralGraphOptimizer(model) or NeuralGraphOptimizer(model.parameters(), model=model)")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(params, dict(lr=lr))

        if optimizer is None:
            path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
            if checkpoint is None and not path.is_file():
                raise FileNotFoundError(
                    f"no default learned optimizer is shipped at {path}. Meta-train one with "
                    "`python -m meta_train train --config meta_train/configs/quick.toml` and pass "
                    "checkpoint='<run>/best.pt', or pass optimizer=<module>.")
            optimizer, _, _ = load_checkpoint(path)
        inner = model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), nn.Module) else model
        named = dict(inner.named_parameters())
        by_id = {id(p): n for n, p in named.items()}
        group_params = [p for g in self.param_groups for p in g["params"]]
        foreign = [p for p in group_params if id(p) not in by_id]
        if foreign:
            raise ValueError(f"{len(foreign)} parameter(s) given to the optimizer do not belong to the model")

        graph = None
        if optimizer.needs_graph:
            graph = NeuralGraph.from_module(inner, kmax=optimizer.kmax,
                                            on_unsupported="skip" if fallback == "per-parameter" else "raise")
            if graph.skipped_modules:
                warnings.warn("NeuralGraphOptimizer: these parts are not on the neural graph and are updated by the "
                              f"per-parameter head alone: {', '.join(graph.skipped_modules)}", stacklevel=2)
        in_groups = {id(p) for p in group_params}
        graph_names = [n for n in (graph.param_names if graph is not None else [])]
        others = [by_id[id(p)] for p in group_params if graph is None or by_id[id(p)] not in set(graph_names)]
        names = graph_names + others
        self._params: list[torch.Tensor] = [named[n] for n in names]
        self._in_groups = [id(p) in in_groups for p in self._params]
        device = self._params[0].device if self._params else torch.device("cpu")
        self.context = ParamContext.build(graph, names, [p.shape for p in self._params]).to(device)
        self.learned = optimizer.to(device).eval()
        for p in self.learned.parameters():
            p.requires_grad_(False)
        self.graph = graph

    # ------------------------------------------------------------------ torch.optim API
    def _lr_of(self) -> dict[int, float]:
        return {id(p): g["lr"] for g in self.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params
        active = [inc and p.grad is not None for p, inc in zip(params, self._in_groups)]
        if not any(active):
            return loss
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("NeuralGraphOptimizer does not support sparse gradients")
        ctx = self.context
        flat_p = torch.cat([p.detach().reshape(-1) for p in params])
        flat_g = torch.cat([p.grad.reshape(-1) if a else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                            for p, a in zip(params, active)])
        state = self._flat_state(flat_p)
        lr_of = self._lr_of()
        lrs = [lr_of.get(id(p), 0.0) for p in params]
        lr = lrs[0] if len(set(lrs)) == 1 else torch.cat(
            [flat_p.new_full((p.numel(),), v) for p, v in zip(params, lrs)])
        new_p, new_state = self.learned.update(ctx, flat_p, flat_g, state, lr)
        if not torch.isfinite(new_p).all():
            raise FloatingPointError("NeuralGraphOptimizer produced a non-finite update (NaN/inf in the gradients or "
                                     "an out-of-distribution input); the parameters were left unchanged")
        chunks = ctx.split(new_p)
        written = [i for i, a in enumerate(active) if a]
        torch._foreach_copy_([params[i] for i in written], [chunks[i] for i in written])
        # Per-parameter state is stored as views into the new flat state (no copies); when the next step finds
        # exactly these views in self.state it reuses the flat tensors instead of concatenating them again.
        per_elem = {k: ctx.split(v) for k, v in new_state.items() if v.dim() > 0 and v.shape[0] == flat_p.shape[0]}
        step_t = new_state["step"].detach()
        for i in written:
            st = self.state[params[i]]
            for k, parts in per_elem.items():
                st[k] = parts[i]
            st["step"] = step_t
        self._flat_cache = ({k: new_state[k] for k in per_elem}, step_t) if len(written) == len(params) else None
        return loss

    def _flat_state(self, flat_p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Concatenate per-parameter state (initialising missing entries) into the flat state of ``update``."""
        params = self._params
        cache = getattr(self, "_flat_cache", None)
        if cache is not None:
            flat, step_t = cache
            views = {k: self.context.split(v) for k, v in flat.items()}
            if all(self.state[p].get("step") is step_t and all(
                    self.state[p].get(k) is not None and self.state[p][k].data_ptr() == views[k][i].data_ptr()
                    for k in flat) for i, p in enumerate(params)):
                return {**flat, "step": step_t}
        missing = [len(self.state[p]) == 0 for p in params]
        if all(missing):
            return self.learned.init_state(self.context, flat_p)
        fresh = self.learned.init_state(self.context, flat_p) if any(missing) else None
        ref = params[missing.index(False)]
        out = {}
        for k in (k for k in self.state[ref] if k != "step"):
            trailing = self.state[ref][k].shape[ref.dim():]  # per-element dims, e.g. (5,) for the momenta
            fresh_parts = self.context.split(fresh[k]) if fresh is not None else None
            chunks = [(fresh_parts[i] if missing[i] else self.state[p][k]).reshape(p.numel(), *trailing)
                      for i, p in enumerate(params)]
            out[k] = torch.cat(chunks)
        steps = [self.state[p]["step"] for p, m in zip(params, missing) if not m]
        out["step"] = torch.stack(steps).max().to(flat_p.dtype)
        return out

    def __repr__(self) -> str:
        fam = getattr(self.learned, "family", type(self.learned).__name__)
        lrs = sorted({g["lr"] for g in self.param_groups})
        return (f"NeuralGraphOptimizer(family={fam}, lr={lrs if len(lrs) > 1 else lrs[0]}, "
                f"tensors={self.context.num_tensors}, elements={self.context.num_elements}, graph={self.graph})")
