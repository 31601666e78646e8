"""Inner problems being trained by the learned optimizer, carried from one truncation to the next.

An :class:`InnerTask` is one optimizee mid-training: its task (model factory, data stream, loss), the flat
parameter vector, the optimizer state, the step counter (= data position: batch ``step`` of a pure, seeded stream)
and its horizon. A :class:`TaskPool` owns a process's tasks and its RNG stream: it samples tasks from the family,
resets a task after its horizon (or after a blow-up), and staggers the first horizons so a meta-batch mixes early and
late training. Everything the pool holds is in :meth:`TaskPool.state_dict` so a killed run resumes exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from l2o.optim import ParamContext
from l2o.optim.learned import Optimizer
from tasks.seeding import mix_seed

from .inner_train import context_for, loss_and_grad


@dataclass
class InnerTask:
    task: object  # tasks.registry.Task or tasks.regression.RegressionTask (duck-typed)
    model: torch.nn.Module  # structure only: parameters are passed functionally
    ctx: ParamContext
    params: torch.Tensor  # [P]
    state: dict  # optimizer state of the learned optimizer (flat, per element)
    step: int
    horizon: int
    seed: int
    stream: object
    fresh_stream: object | None = None
    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (loss, grad) at params on batch `step`
    pes: dict = field(default_factory=dict)  # PES: antithetic states and accumulated noise
    credit: dict = field(default_factory=dict)  # window estimator: running gradient sum "S" and stored "entries"

    def loss_and_grad(self, params: torch.Tensor, step: int, fresh: bool = False, create_graph: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on batch ``step`` at ``params [P]`` and its gradient ``[P]`` (first-order unless create_graph)."""
        x, y = (self.fresh_stream if fresh else self.stream).batch(step)
        return loss_and_grad(self.model, self.ctx, self.task.loss, params, x.to(params.device), y.to(params.device),
                             create_graph)


def batch_states(states: list[dict], sizes: list[int]) -> dict:
    """Concatenate per-task flat states; scalar entries (``step``) become per-element ``[P]`` vectors."""
    out = {}
    for k in states[0]:
        parts = []
        for st, n in zip(states, sizes):
            v = st[k]
            parts.append(v.expand(n) if v.dim() == 0 else v)
        out[k] = torch.cat(parts, 0)
    return out


def split_state(state: dict, sizes: list[int], scalar_keys: set[str]) -> list[dict]:
    """Inverse of :func:`batch_states`."""
    chunks = {k: torch.split(v, sizes, 0) for k, v in state.items()}
    return [{k: (chunks[k][i][0] if k in scalar_keys else chunks[k][i]) for k in state} for i in range(len(sizes))]


class TaskPool:
    """A process's inner problems and the RNG stream they are drawn from."""

    def __init__(self, sample_task: Callable[[torch.Generator], object], learned: Optimizer, slots: list[int],
                 horizon: int, horizon_max: int, seed: int, batch_size: int | None = None,
                 device: torch.device | str = "cpu"):
        """``slots``: global task-slot numbers owned by this process (process r of a run with n tasks per process
        owns ``r*n .. r*n+n-1``). Each slot draws from its own generator seeded by ``(seed, slot)``, so the tasks do not
        depend on how slots are spread over processes: 2 processes x 1 task == 1 process x 2 tasks."""
        self.sample_task, self.learned = sample_task, learned
        self.slots, self.num_tasks = list(slots), len(slots)
        self.horizon, self.horizon_max = horizon, horizon_max
        self.batch_size, self.device = batch_size, torch.device(device)
        self.generators = [torch.Generator().manual_seed(mix_seed(seed, s)) for s in self.slots]
        self._ctx_cache: dict[str, ParamContext] = {}
        self._batched_key: tuple | None = None  # ids of the task contexts the batched context was built from
        self._batched: ParamContext | None = None
        self.resets = 0
        self.tasks: list[InnerTask] = [self._new_task(i, stagger=True) for i in range(self.num_tasks)]

    # ------------------------------------------------------------------ sampling
    def _draw_horizon(self, gen: torch.Generator) -> int:
        if self.horizon_max > self.horizon:
            u = float(torch.rand((), generator=gen))
            return int(round(math.exp(math.log(self.horizon) + u * (math.log(self.horizon_max) - math.log(self.horizon)))))
        return self.horizon

    def _context(self, task, model) -> ParamContext:
        # Same layer shapes = same architecture for the model families used here: share one graph.
        key = f"{type(model).__name__}:{[(n, tuple(p.shape)) for n, p in model.named_parameters()]}"
        if key not in self._ctx_cache:
            self._ctx_cache[key] = context_for(model, self.learned).to(self.device)
        return self._ctx_cache[key]

    def _build(self, task, seed: int, step: int, horizon: int, params=None, state=None) -> InnerTask:
        model = task.make_model(seed).to(self.device)
        ctx = self._context(task, model)
        if params is None:
            named = dict(model.named_parameters())
            params = ctx.flatten([named[n].detach() for n in ctx.names])
        if state is None:
            state = self.learned.init_state(ctx, params)
        kw = {"batch_size": self.batch_size} if self.batch_size else {}
        stream = task.batches("train", seed=seed, **kw)
        fresh = task.batches("train", seed=seed + 7919, **kw)
        return InnerTask(task, model, ctx, params, state, step, horizon, seed, stream, fresh)

    def _new_task(self, i: int, stagger: bool = False) -> InnerTask:
        gen = self.generators[i]
        task = self.sample_task(gen)
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        horizon = self._draw_horizon(gen)
        u = float(torch.rand((), generator=gen))  # always drawn, so streams do not depend on `stagger`
        if stagger and self.slots[i] > 0:  # first horizons spread out so resets do not happen in lockstep
            horizon = max(1, int(round(horizon * u)))
        return self._build(task, seed, 0, horizon)

    def reset(self, i: int) -> None:
        self.tasks[i] = self._new_task(i)
        self.resets += 1

    def _probe_context(self) -> ParamContext:
        """A one-element context (graph-free): enough to ask the optimizer which state keys it keeps."""
        return ParamContext.build(None, ["probe"], [torch.Size([1])])

    def contexts(self) -> ParamContext:
        """One context over all tasks (graphs batched), rebuilt only when the set of architectures changes."""
        key = tuple(id(t.ctx) for t in self.tasks)
        if self._batched_key != key:
            self._batched_key, self._batched = key, ParamContext.batch([t.ctx for t in self.tasks])
        return self._batched

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "generators": [g.get_state() for g in self.generators],
            "resets": self.resets,
            "tasks": [{"task": _task_spec(t.task), "seed": t.seed, "step": t.step, "horizon": t.horizon,
                       "params": t.params.detach().cpu(), "state": {k: v.detach().cpu() for k, v in t.state.items()},
                       "pending": None if t.pending is None else [x.detach().cpu() for x in t.pending],
                       "pes": {k: v.detach().cpu() if torch.is_tensor(v) else
                               {kk: vv.detach().cpu() for kk, vv in v.items()} for k, v in t.pes.items()},
                       "credit": _pack_credit(t.credit)}
                      for t in self.tasks],
        }

    def load_state_dict(self, sd: dict) -> None:
        for g, st in zip(self.generators, sd["generators"]):
            g.set_state(st)
        self.resets = sd["resets"]
        need = set(self.learned.init_state(self._probe_context(), torch.zeros(1)))
        tasks = []
        for rec in sd["tasks"]:
            if set(rec["state"]) != need:
                raise ValueError(
                    f"the checkpointed task pool holds optimizer state {sorted(rec['state'])}, but this optimizer "
                    f"keeps {sorted(need)}: the optimizer config changed since the checkpoint was written. Resume "
                    f"with the original config, or start a fresh run (another run.out_dir / --out-dir).")
            task = _task_from_spec(rec["task"])
            t = self._build(task, rec["seed"], rec["step"], rec["horizon"], rec["params"].to(self.device),
                            {k: v.to(self.device) for k, v in rec["state"].items()})
            if rec["pending"] is not None:
                t.pending = tuple(x.to(self.device) for x in rec["pending"])
            t.pes = {k: v.to(self.device) if torch.is_tensor(v) else {kk: vv.to(self.device) for kk, vv in v.items()}
                     for k, v in rec["pes"].items()}
            t.credit = _unpack_credit(rec.get("credit", {}), self.device)
            tasks.append(t)
        self.tasks = tasks


def _pack_credit(credit: dict) -> dict:
    """The window estimator's per-task buffer as stacked tensors: ``S [P]`` and, per stored step, ``[n, ...]``."""
    if not credit:
        return {}
    entries = credit["entries"]
    out = {"S": credit["S"].detach().cpu(), "n": torch.tensor(len(entries))}
    if entries:
        for key in ("params", "grads", "before"):
            out[key] = torch.stack([e[key] for e in entries]).detach().cpu()
        out["state"] = {k: torch.stack([e["state"][k] for e in entries]).detach().cpu() for k in entries[0]["state"]}
    return out


def _unpack_credit(packed: dict, device) -> dict:
    if not packed:
        return {}
    entries = [{"params": packed["params"][j].to(device), "grads": packed["grads"][j].to(device),
                "before": packed["before"][j].to(device),
                "state": {k: v[j].to(device) for k, v in packed["state"].items()}}
               for j in range(int(packed["n"]))]
    return {"S": packed["S"].to(device), "entries": entries}


def _task_spec(task) -> dict:
    """A plain-data description of a task (checkpoints hold no pickled objects)."""
    from tasks.regression import RegressionTask

    if isinstance(task, RegressionTask):
        return {"kind": "regression", "dim": task.dim, "task_seed": task.task_seed, "batch_size": task.batch_size}
    build = task.build  # functools.partial(ConvNet | MLP, in_channels, widths, num_classes, activation=...)
    return {"kind": build.func.__name__, "name": task.name, "dataset": task.dataset, "batch_size": task.batch_size,
            "widths": list(build.args[1]), "activation": build.keywords.get("activation", "relu")}


def _task_from_spec(spec: dict):
    from tasks import registry
    from tasks.regression import RegressionTask

    if spec["kind"] == "regression":
        return RegressionTask(spec["dim"], spec["task_seed"], spec["batch_size"])
    make = {"ConvNet": registry.conv_task, "MLP": registry.mlp_task}.get(spec["kind"])
    if make is None:
        raise ValueError(f"cannot rebuild task {spec['name']!r} (model {spec['kind']}) from a checkpoint")
    return make(spec["dataset"], spec["widths"], name=spec["name"], batch_size=spec["batch_size"],
                activation=spec["activation"])
