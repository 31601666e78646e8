"""Inner problems being trained by the learned optimizer, carried from one truncation to the next.

An :class:`InnerTask` is one optimizee mid-training: its task (model factory, data stream, loss), the flat
parameter vector, the optimizer state, the step counter (= data position: batch ``step`` of a pure, seeded stream)
and its horizon. A :class:`TaskPool` owns a process's tasks and their RNG streams: it samples tasks from the family,
resets a task after its horizon (or after a blow-up), and staggers the first horizons so a meta-batch mixes early and
late training.

The pool is the only thing that moves tasks, in two ways (the shape of learned_optimization's truncated step):

* :meth:`TaskPool.advance`: one inner step of every task through an update function the estimator supplies; returns
  what happened as an :class:`Advance` (losses, gradients, new parameters, blow-ups, which tasks were replaced).
* :meth:`TaskPool.commit`: put one task where an estimator's own unroll of it ended (PES unrolls each task alone).

Both reset the tasks that blew up or reached their horizon. Estimators keep their own per-task state (PES's
antithetic trajectories, the window's credit buffers) and drop it when the pool reports a task replaced. Everything
the pool holds is in :meth:`TaskPool.state_dict`, so a killed run resumes exactly.

Vectorised tasks (``vectorize=True``, config ``meta.vectorize``): :meth:`TaskPool.advance` computes the optimizee
losses and gradients of the tasks that share an architecture in one ``torch.func.vmap`` call (one shared module for
the structure, the tasks' parameters ``[K, P]`` and their own batches ``[K, B, ...]`` stacked) instead of task after
task; the results equal the loop's up to float rounding, each task keeping its own data, blow-up flags and resets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from l2o.optim import ParamContext
from l2o.optim.learned import Optimizer
from tasks import BatchStreamProtocol, TaskProtocol, task_from_spec
from tasks.seeding import mix_seed

from .inner_train import batched_loss_and_grad, context_for, loss_and_grad

# update(ctx, params [P], grads [P], state) -> (new params [P], new state): an optimizer's functional update, with or
# without autograd, with the meta-parameters it was given
UpdateFn = Callable[[ParamContext, torch.Tensor, torch.Tensor, dict], tuple[torch.Tensor, dict]]


@dataclass
class InnerTask:
    """One optimizee mid-training. Estimators read it; only the pool changes it (advance, commit, reset)."""

    task: TaskProtocol
    model: torch.nn.Module  # structure only: parameters are passed functionally
    ctx: ParamContext
    params: torch.Tensor  # [P]
    state: dict  # optimizer state of the learned optimizer (flat, per element)
    step: int
    horizon: int
    seed: int
    stream: BatchStreamProtocol
    fresh_stream: BatchStreamProtocol | None = None
    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (loss, grad) at params on batch `step`
    vmap_key: tuple | None = None  # tasks with equal keys are evaluated in one vmapped call; None: never (vmap_key)

    def batch(self, step: int, fresh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of the train stream (or of the held-out ``fresh`` one): ``(x [B, ...], y [B, ...])``."""
        return (self.fresh_stream if fresh else self.stream).batch(step)

    def loss_and_grad(self, params: torch.Tensor, step: int, fresh: bool = False, create_graph: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on batch ``step`` at ``params [P]`` and its gradient ``[P]`` (first-order unless create_graph)."""
        x, y = self.batch(step, fresh)
        return loss_and_grad(self.model, self.ctx, self.task.loss, params, x.to(params.device), y.to(params.device),
                             create_graph)


# One loss/gradient evaluation asked of the pool: (task index, params [P], step = batch position, fresh stream?)
Job = tuple[int, torch.Tensor, int, bool]


def vmap_key(task: TaskProtocol, model: torch.nn.Module, ctx: ParamContext) -> tuple | None:
    """Which tasks can share one vmapped loss/gradient call: those with equal keys; ``None`` for a task that is
    always evaluated alone (by the per-task loop).

    Equal keys mean one module can stand for all of them: the same layout (the pool's shared ``ctx``), the same
    module structure (its class and ``repr``, which names every layer and its hyperparameters: a ReLU and a GELU
    network have the same parameter shapes, hence the same ctx, but not the same repr) and the same loss function
    (``type(task).loss``: the tasks here compute their loss from ``(output, y)`` alone, not from instance data).

    Left to the loop:

    * models with buffers (BatchNorm): in training mode their forward writes running statistics into the module's
      own buffers in place, which vmap cannot do for K tasks through one shared module, and each task's module keeps
      its own statistics (not part of the pool's checkpoint), which the loop updates as before;
    * models with dropout: the loop draws each task's mask from the global RNG in turn; vmap would draw other masks
      (and refuses random ops by default), so the results would differ;
    * a layout that does not cover every parameter of the model: the shared module would lend its own values of the
      rest to every task.
    """
    if next(model.buffers(), None) is not None:
        return None
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules()):
        return None
    if sorted(ctx.names) != sorted(n for n, _ in model.named_parameters()):
        return None
    loss = getattr(type(task), "loss", None)  # None: a loss set on the instance, which groups the task with no other
    return (id(ctx), type(model), repr(model), type(task), loss if loss is not None else ("instance", id(task)))


@dataclass
class Advance:
    """What :meth:`TaskPool.advance` did: one inner step ``k -> k + 1`` of every task (lists indexed by pool slot).

    The tensors are those of the step itself, also for a task the pool has since replaced.
    """

    contexts: list[ParamContext]  # each task's layout
    steps: list[int]  # k: each task's step (= data position) before the update
    losses: list[float]  # L_k at p_k, NaN where it blew up
    params: list[torch.Tensor]  # p_k [P_i]: the update's inputs
    grads: list[torch.Tensor]  # g_k [P_i] as fed to the update (zeros where L_k blew up)
    states: list[dict]  # the optimizer state before the update
    new_params: list[torch.Tensor]  # p_{k+1} [P_i], carrying the update's autograd graph when it has one
    meta: list[tuple[torch.Tensor, torch.Tensor] | None]  # (meta-loss, its gradient h_k [P_i]) at p_{k+1}, or None
    #                                                       where it was not evaluated (L_k or p_{k+1} not finite)
    meta_values: list[float]  # the meta-losses as floats, NaN where not evaluated (read once for all tasks)
    bad: list[bool]  # blew up at this step (L_k, p_{k+1} or the meta-loss): the task was reset
    finished: list[bool]  # bad, or the horizon reached: the task was replaced by a fresh one after this step


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


def loss_ok(loss: torch.Tensor, clip: float) -> bool:
    """A usable inner loss: finite and at most ``clip`` (else the step counts as a blow-up)."""
    return _usable(float(loss), clip)


def host_checks(losses: list[torch.Tensor], tensors: list[torch.Tensor]) -> tuple[list[float], list[bool]]:
    """``([float(L) for L in losses], [bool(isfinite(x).all()) for x in tensors])`` with one device-to-host copy
    for all of them: on a GPU each ``float()`` is a synchronisation that stalls the device, K times per check."""
    parts = [torch.stack([L.detach().reshape(()) for L in losses]).double()] if losses else []
    # Tensors of one shape (the tasks of one architecture) are checked in one stacked call, not one per tensor: at
    # K tasks per process on a GPU the per-tensor kernels were hundreds of launches per inner step.
    by_shape: dict[tuple, list[int]] = {}
    for i, x in enumerate(tensors):
        by_shape.setdefault((tuple(x.shape), x.device), []).append(i)
    order = [i for group in by_shape.values() for i in group]
    for group in by_shape.values():
        stacked = torch.stack([tensors[i].detach() for i in group])
        parts.append(torch.isfinite(stacked).reshape(len(group), -1).all(1).double())
    if not parts:
        return [], []
    values = torch.cat(parts).tolist()
    finite = [False] * len(tensors)
    for i, v in zip(order, values[len(losses):]):
        finite[i] = v > 0
    return values[: len(losses)], finite


def _usable(value: float, clip: float) -> bool:
    """:func:`loss_ok` of a loss already on the host."""
    return math.isfinite(value) and value <= clip


class TaskPool:
    """A process's inner problems and the RNG streams they are drawn from."""

    def __init__(self, sample_task: Callable[[torch.Generator], TaskProtocol], learned: Optimizer, slots: list[int],
                 horizon: int, horizon_max: int, seed: int, batch_size: int | None = None,
                 device: torch.device | str = "cpu", vectorize: bool = True):
        """``slots``: global task-slot numbers owned by this process (process r of a run with n tasks per process
        owns ``r*n .. r*n+n-1``). Each slot draws from its own generator seeded by ``(seed, slot)``, so the tasks do not
        depend on how slots are spread over processes: 2 processes x 1 task == 1 process x 2 tasks.

        ``vectorize``: :meth:`advance` evaluates the optimizee losses and gradients of tasks sharing an architecture
        in one vmapped call (equal to the per-task loop up to float rounding); False keeps the per-task loop."""
        self.sample_task, self.learned = sample_task, learned
        self.vectorize = vectorize
        self.slots, self.num_tasks = list(slots), len(slots)
        self.horizon, self.horizon_max = horizon, horizon_max
        self.batch_size, self.device = batch_size, torch.device(device)
        self.generators = [torch.Generator().manual_seed(mix_seed(seed, s)) for s in self.slots]
        self._ctx_cache: dict[str, ParamContext] = {}
        self._batched_key: tuple | None = None  # ids of the task contexts the batched context was built from
        self._batched: ParamContext | None = None
        self.resets = 0
        self.tasks: list[InnerTask] = [self._new_task(i, stagger=True) for i in range(self.num_tasks)]

    # ------------------------------------------------------------------ moving tasks
    def advance(self, update: UpdateFn, *, meta_loss: str = "train", loss_clip: float = math.inf,
                create_graph: bool = False, keep_graph: bool = False, finite_meta_grad: bool = False) -> Advance:
        """One inner step of every task, the tasks batched into one ``update`` call; then the tasks that blew up or
        reached their horizon are replaced.

        Per task: the loss and gradient at ``p_k`` on batch ``k`` (kept from the previous step's meta-loss when
        ``meta_loss = "train"``); a loss that is not finite or above ``loss_clip``, or a non-finite gradient, counts
        as a blow-up and the update sees a zero gradient instead (so NaNs cannot reach the other tasks through the
        batched encoder). Where ``p_{k+1}`` is finite, the meta-loss is evaluated there: on batch ``k + 1``
        (``"train"``, which is also the next step's inner loss), batch ``k`` (``"same"``) or a held-out batch ``k``
        (``"fresh"``); one that is not finite or above ``loss_clip`` (or, with ``finite_meta_grad``, whose gradient is
        not finite) is a blow-up too.

        ``create_graph``: inner gradients and meta-losses keep their autograd graphs (second-order meta-gradients).
        ``keep_graph``: the tasks keep ``p_{k+1}`` and the new state with their graphs (backprop through several
        steps, until :meth:`detach`); otherwise they keep them detached.
        """
        tasks = self.tasks
        jobs: list[Job] = []
        for i, t in enumerate(tasks):
            if t.pending is None:  # second order: a fresh or detached task's params become a leaf to differentiate
                p = t.params.detach().requires_grad_(True) if create_graph and not t.params.requires_grad else t.params
                jobs.append((i, p, t.step, False))
        for i, result in self.losses_and_grads(jobs, create_graph).items():
            tasks[i].pending = result
        values, finite = host_checks([t.pending[0] for t in tasks], [t.pending[1] for t in tasks])
        bad = [not (_usable(v, loss_clip) and f) for v, f in zip(values, finite)]
        grads = [torch.zeros_like(t.pending[1]) if b else t.pending[1] for t, b in zip(tasks, bad)]
        sizes = [t.params.numel() for t in tasks]
        params, states = [t.params for t in tasks], [t.state for t in tasks]
        new_p, new_s = update(self.contexts(), torch.cat(params), torch.cat(grads), batch_states(states, sizes))
        new_params = list(torch.split(new_p, sizes))
        new_states = split_state(new_s, sizes, {"step"})
        losses = [v if not b else float("nan") for v, b in zip(values, bad)]
        meta: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(tasks)
        meta_values = [float("nan")] * len(tasks)
        next_pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(tasks)
        jobs = []
        _, finite = host_checks([], new_params)
        for i, t in enumerate(tasks):
            if bad[i]:
                continue
            if not finite[i]:
                bad[i] = True
                continue
            if meta_loss == "train":  # the next batch: this is also the next step's inner loss and gradient
                jobs.append((i, new_params[i], t.step + 1, False))
            else:
                jobs.append((i, new_params[i], t.step, meta_loss == "fresh"))
        results = self.losses_and_grads(jobs, create_graph)
        values, finite = host_checks([L for L, _ in results.values()],
                                     [h for _, h in results.values()] if finite_meta_grad else [])
        for n, (i, (L, h)) in enumerate(results.items()):
            meta[i], meta_values[i] = (L, h), values[n]
            if meta_loss == "train":
                next_pending[i] = meta[i]
            if not _usable(values[n], loss_clip) or (finite_meta_grad and not finite[n]):
                bad[i] = True
                next_pending[i] = None
        steps = [t.step for t in tasks]
        contexts = [t.ctx for t in tasks]
        for i, t in enumerate(tasks):
            t.params = new_params[i] if keep_graph else new_params[i].detach()
            t.state = new_states[i] if keep_graph else {k: v.detach() for k, v in new_states[i].items()}
            t.pending = next_pending[i]
            if t.pending is not None and not create_graph:
                t.pending = (t.pending[0].detach(), t.pending[1].detach())
            t.step += 1
        finished = [b or t.step >= t.horizon for t, b in zip(tasks, bad)]
        for i, done in enumerate(finished):
            if done:
                self.reset(i)
        return Advance(contexts, steps, losses, params, grads, states, new_params, meta, meta_values, bad, finished)

    def losses_and_grads(self, jobs: list[Job], create_graph: bool = False
                         ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{task index: (loss, grad [P])}`` for each job ``(task index, params [P], step, fresh)``: the loss of
        task i on its batch ``step`` (of the held-out stream when ``fresh``) at ``params`` and its gradient.

        With ``vectorize``, jobs whose tasks share a :func:`vmap_key` and whose batches have the same shapes are
        evaluated in one vmapped call per group; the rest (groups of one, tasks that cannot be vmapped) in the
        per-task loop. Second order (``create_graph``) always takes the loop: it needs each loss's autograd graph
        back to the task's own parameter tensor (a leaf, or the update's output under tbptt), and the vmapped path
        is first order only.
        """
        if not (self.vectorize and not create_graph and len(jobs) > 1):
            return {i: self.tasks[i].loss_and_grad(p, step, fresh=fresh, create_graph=create_graph)
                    for i, p, step, fresh in jobs}
        out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for group in self._vmap_groups(jobs):
            out.update(self._group_losses_and_grads(group))
        return out

    def _vmap_groups(self, jobs: list[Job]) -> list[list[tuple[Job, tuple[torch.Tensor, torch.Tensor]]]]:
        """The jobs with their batches ``(x [B, ...], y [B, ...])``, grouped so that each group can be stacked:
        the same vmap key (architecture, structure, loss), batch shapes and dtypes, parameter dtype and device. A
        task without a key (:func:`vmap_key`) is a group of its own."""
        groups: dict[tuple, list] = {}
        for job in jobs:
            i, p, step, fresh = job
            t = self.tasks[i]
            x, y = t.batch(step, fresh)
            key = (("alone", i) if t.vmap_key is None else
                   (t.vmap_key, x.shape, x.dtype, y.shape, y.dtype, p.dtype, p.device))
            groups.setdefault(key, []).append((job, (x, y)))
        return list(groups.values())

    def _group_losses_and_grads(self, group: list[tuple[Job, tuple[torch.Tensor, torch.Tensor]]]
                                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """One group of :meth:`_vmap_groups`: a single task by :func:`loss_and_grad` (vmap would only add its
        overhead), several in one :func:`batched_loss_and_grad` call on params ``[K, P]`` and batches
        ``[K, B, ...]``. Each task's ``(loss, grad [P])`` is a view into the stacked results."""
        first = self.tasks[group[0][0][0]]
        if len(group) == 1:
            (i, p, _, _), (x, y) = group[0]
            return {i: loss_and_grad(first.model, first.ctx, first.task.loss, p, x.to(p.device), y.to(p.device))}
        device = group[0][0][1].device
        params = torch.stack([job[1].detach() for job, _ in group])  # [K, P]
        # Stacked where the streams produced them, then moved once: one copy to the device instead of K.
        x = torch.stack([b[0] for _, b in group]).to(device)  # [K, B, ...]
        y = torch.stack([b[1] for _, b in group]).to(device)  # [K, B, ...]
        losses, grads = batched_loss_and_grad(first.model, first.ctx, first.task.loss, params, x, y)
        return {job[0]: (L, g) for (job, _), L, g in zip(group, losses.unbind(0), grads.unbind(0))}

    def commit(self, i: int, params: torch.Tensor, state: dict, steps: int, bad: bool) -> bool:
        """Record that an estimator's own unroll advanced task ``i`` by ``steps`` steps to ``params [P]`` and
        ``state`` (ignored when ``bad``: it blew up). Replaces the task when it blew up or reached its horizon, and
        returns whether it did."""
        t = self.tasks[i]
        t.step += steps
        if not bad:
            t.params, t.state = params, state
        if bad or t.step >= t.horizon:
            self.reset(i)
            return True
        return False

    def detach(self) -> None:
        """Cut every task's autograd history: a truncation boundary, so nothing carries a graph into the next one."""
        for t in self.tasks:
            t.params = t.params.detach()
            t.state = {k: v.detach() for k, v in t.state.items()}
            if t.pending is not None:
                t.pending = (t.pending[0].detach(), t.pending[1].detach())

    def reset(self, i: int) -> None:
        """Replace task ``i`` by a fresh one from its slot's generator."""
        self.tasks[i] = self._new_task(i)
        self.resets += 1

    # ------------------------------------------------------------------ sampling
    def _draw_horizon(self, gen: torch.Generator) -> int:
        if self.horizon_max > self.horizon:
            u = float(torch.rand((), generator=gen))
            return int(round(math.exp(math.log(self.horizon) + u * (math.log(self.horizon_max) - math.log(self.horizon)))))
        return self.horizon

    def _context(self, task: TaskProtocol, model: torch.nn.Module) -> ParamContext:
        # Same layer shapes = same architecture for the model families used here: share one graph.
        key = f"{type(model).__name__}:{[(n, tuple(p.shape)) for n, p in model.named_parameters()]}"
        if key not in self._ctx_cache:
            self._ctx_cache[key] = context_for(model, self.learned).to(self.device)
        return self._ctx_cache[key]

    def _build(self, task: TaskProtocol, seed: int, step: int, horizon: int, params=None, state=None) -> InnerTask:
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
        return InnerTask(task, model, ctx, params, state, step, horizon, seed, stream, fresh,
                         vmap_key=vmap_key(task, model, ctx))

    def _new_task(self, i: int, stagger: bool = False) -> InnerTask:
        gen = self.generators[i]
        task = self.sample_task(gen)
        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        horizon = self._draw_horizon(gen)
        u = float(torch.rand((), generator=gen))  # always drawn, so streams do not depend on `stagger`
        if stagger and self.slots[i] > 0:  # first horizons spread out so resets do not happen in lockstep
            horizon = max(1, int(round(horizon * u)))
        return self._build(task, seed, 0, horizon)

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
        """The RNG streams and every task (as its spec, seed, position, parameters, optimizer state and pending
        loss), as plain tensors on the CPU."""
        return {
            "generators": [g.get_state() for g in self.generators],
            "resets": self.resets,
            "tasks": [{"task": t.task.to_spec(), "seed": t.seed, "step": t.step, "horizon": t.horizon,
                       "params": t.params.detach().cpu(), "state": {k: v.detach().cpu() for k, v in t.state.items()},
                       "pending": None if t.pending is None else [x.detach().cpu() for x in t.pending]}
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
            t = self._build(task_from_spec(rec["task"]), rec["seed"], rec["step"], rec["horizon"],
                            rec["params"].to(self.device), {k: v.to(self.device) for k, v in rec["state"].items()})
            if rec["pending"] is not None:
                t.pending = tuple(x.to(self.device) for x in rec["pending"])
            tasks.append(t)
        self.tasks = tasks
