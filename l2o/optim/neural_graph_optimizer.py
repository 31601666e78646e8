"""``NeuralGraphOptimizer``: a meta-trained graph optimizer as a drop-in ``torch.optim.Optimizer``.

    opt = NeuralGraphOptimizer(model)                        # shipped default checkpoint
    opt = NeuralGraphOptimizer(model, checkpoint="path.pt")  # any meta-trained checkpoint
    opt = NeuralGraphOptimizer(model.parameters(), model=model, lr=0.5)

The class holds the neural graph, the parameter layout, hyperparameters (``lr`` per group multiplies the learned
step; 1.0 = as meta-trained) and per-parameter state. The arithmetic is the learned optimizer's functional
``update`` — the same function meta-training unrolls — called once per step on all parameters at once.
"""
from __future__ import annotations

import os
import warnings
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..graph import NeuralGraph, UnsupportedModuleError
from ..runtime import tune_cpu_allocator
from .checkpoint import load_checkpoint
from .context import ParamContext
from .cuda_graph import CapturedUpdate
from .learned import Optimizer

PRETRAINED_ENV = "L2O_PRETRAINED_DIR"


def pretrained_dir() -> Path:
    """Where the shipped learned optimizers live: ``$L2O_PRETRAINED_DIR`` if set, else the package data folder
    ``l2o/pretrained`` (installed with the wheel)."""
    env = os.environ.get(PRETRAINED_ENV)
    return Path(env) if env else Path(str(resources.files("l2o") / "pretrained"))


DEFAULT_CHECKPOINT = pretrained_dir() / "default.pt"


def shipped_checkpoint(name: str) -> Path:
    """The package's checkpoint called ``name`` (``<name>.pt`` in :func:`pretrained_dir`, e.g. ``"default"`` or
    ``"dng"``, the earlier default); ``FileNotFoundError`` naming the ones there otherwise."""
    path = pretrained_dir() / f"{name}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in pretrained_dir().glob("*.pt"))
        raise FileNotFoundError(f"no checkpoint file '{name}' and no shipped checkpoint of that name; shipped: "
                                f"{', '.join(have) or 'none'} (in {pretrained_dir()}), or pass a path to a .pt file")
    return path


FALLBACKS = ("raise", "per-parameter")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameters and structure the graph is built from: through ``torch.compile``'s
    ``OptimizedModule`` (``_orig_mod``, same parameters) and DataParallel-style ``.module`` wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


class NeuralGraphOptimizer(torch.optim.Optimizer):
    """A learned optimizer over the model's neural graph.

    Args:
        params: the model itself, or an iterable of parameters / parameter groups (then pass ``model=``).
        model: the network the parameters belong to (its neural graph is built once, here). A
            ``torch.compile``-d model works: its parameters are the original module's, whose graph is built.
        checkpoint: path of a meta-trained checkpoint, or the name of a shipped one (:func:`shipped_checkpoint`:
            ``"dng"``, the earlier default, whose step is cheaper on large dense layers); default: the shipped
            ``default.pt`` in :func:`pretrained_dir`.
        lr: multiplies the learned update (1.0 = as meta-trained); schedulers may change it per group.
        weight_decay: decoupled weight decay (AdamW-style, ``p <- p - lr * weight_decay * p`` on top of the learned
            update, with the group's ``lr``); default 0, per group.
        fallback: ``"raise"`` (default): a layer the graph cannot represent raises ``UnsupportedModuleError``
            naming it. ``"per-parameter"``: the graph is cut at such layers and their tensors get no graph
            embedding (only their own features reach the update head), with a warning.
        optimizer: an already built learned optimizer module (instead of a checkpoint), e.g. during research.
        cuda_graph: record the update as a CUDA graph after the first step and replay it on every later one
            (:class:`~l2o.optim.cuda_graph.CapturedUpdate`; the step is launch-bound on a GPU otherwise). ``None``
            (default): on CUDA models; an update that cannot be recorded (one that synchronises with the host) runs
            eagerly instead, with a warning. ``False``: never. ``True``: on a CUDA model only.

    State per parameter: the optimizer's statistics (e.g. ``m``, 5 momenta; ``v``, the second moment), ``step``, plus
    ``h``/``c`` for LSTM optimizers. The time features use the optimizer's global step (the largest ``step`` among the
    parameters updated). State and arithmetic are in the learned optimizer's dtype (float32 for the shipped ones),
    whatever the parameters' dtype (bf16 / fp16 / fp64 models), and do not depend on an enclosing autocast; the
    result is written back in each parameter's dtype.
    """

    GROUP_KEYS = frozenset({"params", "lr", "weight_decay"})

    def __init__(self, params: nn.Module | Iterable, model: nn.Module | None = None,
                 checkpoint: str | Path | None = None, lr: float = 1.0, weight_decay: float = 0.0,
                 fallback: str = "raise", optimizer: Optimizer | None = None, cuda_graph: bool | None = None):
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
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: it must be >= 0")
        if cuda_graph not in (None, True, False):
            raise ValueError(f"cuda_graph must be None (auto), True or False, got {cuda_graph!r}")
        self._built = False
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

        if optimizer is None:
            path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
            if isinstance(checkpoint, str) and not path.exists() and path.suffix == "" and path.name == checkpoint:
                path = shipped_checkpoint(checkpoint)  # a bare name: one of the package's checkpoints
            if checkpoint is None and not path.is_file():
                raise FileNotFoundError(
                    f"the shipped default learned optimizer is missing ({path}): this install of l2o is incomplete "
                    f"(the wheel carries it as package data, l2o/pretrained/default.pt). Reinstall the package "
                    f"(pip install --force-reinstall l2o-neural-graphs, or pip install . from a checkout), point "
                    f"${PRETRAINED_ENV} at a folder holding default.pt, or pass checkpoint='path.pt'.")
            optimizer, _, _ = load_checkpoint(path)
        inner = _unwrap(model)
        self._named = dict(inner.named_parameters())
        self._by_id = {id(p): n for n, p in self._named.items()}
        self.graph = None
        if optimizer.needs_graph:
            try:
                self.graph = NeuralGraph.from_module(inner, kmax=optimizer.kmax,
                                                     on_unsupported="skip" if fallback == "per-parameter" else "raise")
            except UnsupportedModuleError as exc:
                if fallback != "per-parameter" or exc.path != "<model>":
                    raise
                # forward() cannot be traced at all (Python control flow): no graph, every tensor per parameter
                warnings.warn(f"NeuralGraphOptimizer: no neural graph for this model ({exc.reason}); with "
                              "fallback='per-parameter' every parameter is updated from its own features only "
                              "(no graph embedding)", stacklevel=2)
            if self.graph is not None and self.graph.skipped_modules:
                warnings.warn("NeuralGraphOptimizer: the neural graph is cut at these parts, which it cannot "
                              f"represent: {', '.join(self.graph.skipped_modules)}; their parameters are updated "
                              "from their own features only (no graph embedding)", stacklevel=2)
        self.learned = optimizer
        # The flat layout, (re)built by _layout(): here and when add_param_group adds parameters.
        self._params: list[torch.Tensor] = []
        self._in_groups: list[bool] = []
        self._flat_cache: tuple[dict, torch.Tensor] | None = None  # per-element state kept flat between steps
        self._layout()
        on_cuda = self.context.device.type == "cuda"
        if cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True records the step as a CUDA graph: the model's parameters are on "
                             f"{self.context.device}; move the model to a GPU first, or leave cuda_graph unset")
        self._cuda_graph = on_cuda if cuda_graph is None else cuda_graph
        if self.context.device.type == "cpu":
            tune_cpu_allocator()  # large per-step temporaries otherwise page-fault in on every step
        self.learned.to(self.context.device).eval()
        for p in self.learned.parameters():
            p.requires_grad_(False)
        # The arithmetic dtype: the learned optimizer's own (float32 when meta-trained as shipped); hand-designed
        # optimizers have no weights and compute in float32, or float64 for float64 models.
        own = next((t.dtype for t in self.learned.parameters()), None)
        dtypes = {p.dtype for p in self._params}
        self._dtype = own or (torch.float64 if dtypes == {torch.float64} else torch.float32)
        self._built = True

    def _layout(self) -> None:
        """The flat layout: the graph's tensors first (all of the model's, in graph order), then other group params.

        Graph tensors outside every group are part of the layout (the graph needs their features) but never
        written; ``_in_groups`` marks the ones that are updated.
        """
        group_params = [p for g in self.param_groups for p in g["params"]]
        foreign = [p for p in group_params if id(p) not in self._by_id]
        if foreign:
            raise ValueError(f"{len(foreign)} parameter(s) given to the optimizer do not belong to the model")
        in_groups = {id(p) for p in group_params}
        graph_names = list(self.graph.param_names) if self.graph is not None else []
        on_graph = set(graph_names)
        names = graph_names + [self._by_id[id(p)] for p in group_params if self._by_id[id(p)] not in on_graph]
        self._params = [self._named[n] for n in names]
        self._in_groups = [id(p) in in_groups for p in self._params]
        device = self._params[0].device if self._params else torch.device("cpu")
        self.context = ParamContext.build(self.graph, names, [p.shape for p in self._params]).to(device)
        self._flat_cache = None
        self._captured: CapturedUpdate | None = None  # the recorded update of this layout (cuda_graph)
        self._eager_steps = 0

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (checked keys); after construction the flat layout is rebuilt so the group is updated."""
        unknown = set(param_group) - self.GROUP_KEYS
        if unknown:
            raise ValueError(f"NeuralGraphOptimizer param groups take {sorted(self.GROUP_KEYS)}; got unknown "
                             f"key(s) {sorted(unknown)} (they would be silently ignored)")
        if "weight_decay" in param_group and not param_group["weight_decay"] >= 0:
            raise ValueError(f"invalid weight_decay {param_group['weight_decay']}: it must be >= 0")
        super().add_param_group(param_group)
        if getattr(self, "_built", False):
            self._layout()

    # ------------------------------------------------------------------ torch.optim API
    def _group_values(self, key: str) -> dict[int, float]:
        return {id(p): g[key] for g in self.param_groups for p in g["params"]}

    def _per_element(self, values: list[float], like: torch.Tensor) -> float | torch.Tensor:
        """One value per tensor -> a float when all agree, else ``[P]``."""
        if len(set(values)) == 1:
            return values[0]
        return torch.cat([like.new_full((p.numel(),), v) for p, v in zip(self._params, values)])

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
        ctx, dtype = self.context, self._dtype
        flat_p = torch.cat([p.detach().reshape(-1).to(dtype) for p in params])
        flat_g = torch.cat([p.grad.reshape(-1).to(dtype) if a else flat_p.new_zeros(p.numel())
                            for p, a in zip(params, active)])
        state = self._flat_state(flat_p)
        lr_of, wd_of = self._group_values("lr"), self._group_values("weight_decay")
        lr = self._per_element([lr_of.get(id(p), 0.0) for p in params], flat_p)
        wd = self._per_element([wd_of.get(id(p), 0.0) for p in params], flat_p)
        # The update must not change with an enclosing autocast region (torch's optimizers do not).
        with torch.autocast(flat_p.device.type, enabled=False):
            new_p, new_state = self._update(flat_p, flat_g, state, lr)
            if not isinstance(wd, float) or wd:
                new_p = new_p - lr * wd * flat_p  # decoupled weight decay, scaled by the group's lr
        if not torch.isfinite(new_p).all():
            if self._captured is not None:
                self._captured.restore_state()  # its output buffers are what self.state refers to
            raise FloatingPointError("NeuralGraphOptimizer produced a non-finite update (NaN/inf in the gradients or "
                                     "an out-of-distribution input); the parameters were left unchanged")
        chunks = ctx.split(new_p)
        written = [i for i, a in enumerate(active) if a]
        for i in written:
            params[i].copy_(chunks[i])  # cast back to the parameter's dtype
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

    def _update(self, flat_p: torch.Tensor, flat_g: torch.Tensor, state: dict[str, torch.Tensor],
                lr: float | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The learned update, replayed from its CUDA graph where ``cuda_graph`` allows (recorded on the second
        step: the first one builds the graph's cached index tensors and the state eagerly)."""
        if not self._cuda_graph or self._eager_steps < 1:
            self._eager_steps += 1
            return self.learned.update(self.context, flat_p, flat_g, state, lr)
        lr_t = lr if torch.is_tensor(lr) else flat_p.new_full((), lr)  # a float would be baked into the graph
        if self._captured is None or not self._captured.accepts(flat_p, state, lr_t):
            self._captured = None
            try:
                self._captured = CapturedUpdate(partial(self.learned.update, self.context), flat_p, flat_g, state,
                                                lr_t)
            except RuntimeError as exc:
                self._cuda_graph = False
                warnings.warn(f"NeuralGraphOptimizer: this optimizer's update cannot be recorded as a CUDA graph "
                              f"({str(exc).splitlines()[0]}); it runs eagerly from now on (cuda_graph=False skips "
                              f"the attempt)", stacklevel=3)
                return self.learned.update(self.context, flat_p, flat_g, state, lr)
        return self._captured(flat_p, flat_g, state, lr_t)

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the state keeps the dtype it was saved in (torch casts it to each parameter's dtype, which
        would round float32 statistics of a bf16 model to bf16 and break an exact resume)."""
        super().load_state_dict(state_dict)
        ordered = [p for g in self.param_groups for p in g["params"]]
        for idx, saved in state_dict["state"].items():
            st = self.state[ordered[int(idx)]]
            for k, v in saved.items():
                if torch.is_tensor(v) and k in st and v.is_floating_point():
                    st[k] = v.to(device=st[k].device, dtype=v.dtype, copy=True)
        self._flat_cache = None

    def _flat_state(self, flat_p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Concatenate per-parameter state (initialising missing entries) into the flat state of ``update``."""
        params = self._params
        cache = self._flat_cache
        if cache is not None:
            flat, step_t = cache
            views = {k: self.context.split(v) for k, v in flat.items()}
            if all(self.state[p].get("step") is step_t and all(
                    self.state[p].get(k) is not None and self.state[p][k].data_ptr() == views[k][i].data_ptr()
                    for k in flat) for i, p in enumerate(params)):
                return {**flat, "step": step_t}
        missing = [len(self.state[p]) == 0 for p in params]
        # Loaded state (load_state_dict casts floating state to the parameter's dtype) back to the arithmetic dtype.
        for p, m in zip(params, missing):
            if not m:
                for k, v in self.state[p].items():
                    if torch.is_tensor(v) and v.is_floating_point() and v.dtype != flat_p.dtype:
                        self.state[p][k] = v.to(flat_p.dtype)
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
