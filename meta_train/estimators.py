"""Meta-gradient estimators: each advances a :class:`TaskPool` by one truncation of K inner steps and returns the
meta-gradient as a value (:class:`Estimate`: one tensor per meta-parameter name); the outer loop writes it to
``.grad``.

* :class:`TruncatedBackprop` (``tbptt``): backpropagation through the K updates of the truncation.
* ``greedy``: the same with the trajectory detached after every step: each update is judged only by the loss right
  after it (the published one-step protocol of Kofinas et al.).
* :class:`PES`: persistent evolution strategies with antithetic pairs (Vicol et al. 2021): unbiased across
  truncations, no backprop, noisier.
* :class:`WindowCredit` (``window``): the first-order meta-gradient of the next ``W`` losses after *every* step (a
  sliding window, up to the task's horizon; optionally discounted by ``gamma^(k-j)``), at the memory of ``W``
  stored step inputs instead of ``W`` autograd graphs. Counters the short-horizon bias of 10-step truncations (see the class).

The pool moves the tasks (:meth:`TaskPool.advance`, :meth:`TaskPool.commit`); an estimator owns only what it needs
across truncations, as a small dataclass with ``state_dict`` / ``load_state_dict`` (PES: :class:`PESState`, the
window: :class:`WindowState`), keyed by pool slot and dropped when the pool replaces that slot's task.

First-order meta-gradients use a surrogate instead of a second optimizee backward: with inner gradients treated as
inputs, d meta-loss / d theta = sum_k h_k . d p_{k+1} / d theta, where h_k = d L_k / d p_{k+1} is *exactly* the
inner gradient the next step needs anyway (meta-loss ``train``: loss at the next parameters on the next batch). So
each inner step costs one optimizee forward+backward plus the learned update's forward and backward.

Blow-ups: an inner loss that is NaN/inf or above ``loss_clip`` contributes nothing, its task is reset, and it is
counted in the returned statistics; the update never sees the bad gradient (it is zeroed), so NaNs cannot leak
into the meta-gradient through the batched encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.func import functional_call

from l2o.optim import ParamContext

from .config import MetaConfig
from .unroll import TaskPool, batch_states, loss_ok

Grads = dict[str, torch.Tensor]  # meta-parameter name -> its meta-gradient (absent: no gradient reached it)


@dataclass
class Estimate:
    """One truncation's meta-gradient and what it saw."""

    grads: Grads
    stats: dict  # meta_loss, inner_loss (means over the truncation), blowups, inner_steps (+ credited: window)


class Estimator:
    """Base class: ``step(pool) -> Estimate``; state for exact resume in ``state_dict`` / ``load_state_dict``."""

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module):
        self.cfg, self.learned = cfg, learned

    def step(self, pool: TaskPool) -> Estimate:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def _grad(self, surrogate: torch.Tensor) -> Grads:
        """d surrogate / d meta-parameters, by name (those it does not depend on are left out)."""
        named = [(n, p) for n, p in self.learned.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(surrogate, [p for _, p in named], allow_unused=True)
        return {n: g for (n, _), g in zip(named, grads) if g is not None}

    def _device(self) -> torch.device:
        return next(self.learned.parameters()).device


def _add(total: Grads | None, grads: Grads) -> Grads:
    """``total + grads``, name by name (in this order, as repeated ``backward()`` calls would accumulate)."""
    if total is None:
        return grads
    return {**total, **{n: total[n] + g if n in total else g for n, g in grads.items()}}


class TruncatedBackprop(Estimator):
    """Truncated backprop through time (``greedy=False``) or one-step greedy (``greedy=True``)."""

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module, greedy: bool = False):
        super().__init__(cfg, learned)
        self.greedy = greedy

    def step(self, pool: TaskPool) -> Estimate:
        cfg = self.cfg
        K, n, second = cfg.truncation, len(pool.tasks), cfg.second_order
        scale = 1.0 / (K * n) if cfg.reduction == "mean" else 1.0 / n  # sum: over steps, mean over tasks
        grads, pending_terms = None, []
        meta_values, inner_values, blowups = [], [], 0
        for _ in range(K):
            a = pool.advance(self.learned.update, meta_loss=cfg.meta_loss, loss_clip=cfg.loss_clip,
                             create_graph=second, keep_graph=not self.greedy)
            inner_values += a.losses
            blowups += sum(a.bad)
            surrogate = a.new_params[0].new_zeros(())
            for i, m in enumerate(a.meta):
                if m is None or a.bad[i]:
                    continue
                L, h = m
                value = a.meta_values[i]
                meta_values.append(math.log(value) if cfg.log_loss else value)
                if second:
                    surrogate = surrogate + scale * (torch.log(L) if cfg.log_loss else L)
                else:
                    w = scale / value if cfg.log_loss else scale
                    surrogate = surrogate + (h.detach() * w * a.new_params[i]).sum()
            if surrogate.requires_grad:
                if self.greedy:
                    grads = _add(grads, self._grad(surrogate))
                else:
                    pending_terms.append(surrogate)
        if pending_terms:
            grads = self._grad(torch.stack(pending_terms).sum())
        pool.detach()
        return Estimate(grads or {}, _stats(meta_values, inner_values, blowups, K * n))


@dataclass
class AntitheticPair:
    """PES's state for one task: the trajectory trained with theta - eps (the pool's task is the theta + eps one)
    and the noise drawn since the task's reset."""

    neg_params: torch.Tensor  # [P]
    neg_state: dict  # the optimizer state of that trajectory
    xi: Grads  # meta-parameter name -> the sum of its noise eps since the reset

    def state_dict(self) -> dict:
        return {"neg_params": self.neg_params.detach().cpu(),
                "neg_state": {k: v.detach().cpu() for k, v in self.neg_state.items()},
                "xi": {k: v.detach().cpu() for k, v in self.xi.items()}}

    @classmethod
    def from_state_dict(cls, sd: dict, device: torch.device) -> "AntitheticPair":
        return cls(sd["neg_params"].to(device), {k: v.to(device) for k, v in sd["neg_state"].items()},
                   {k: v.to(device) for k, v in sd["xi"].items()})


@dataclass
class PESState:
    """PES's state: one :class:`AntitheticPair` per pool slot whose task has made a PES step."""

    pairs: dict[int, AntitheticPair] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"pairs": {i: pair.state_dict() for i, pair in self.pairs.items()}}

    def load_state_dict(self, sd: dict, device: torch.device) -> None:
        self.pairs = {int(i): AntitheticPair.from_state_dict(rec, device) for i, rec in sd["pairs"].items()}


class PES(Estimator):
    """Persistent evolution strategies with antithetic pairs.

    Each task keeps two trajectories, trained with theta + eps and theta - eps, and the sum ``xi`` of the noise
    drawn since its last reset; the estimate is ``(L+ - L-) / (2 sigma^2) * xi``, averaged over tasks, where ``L`` is
    the mean (log) loss over the truncation. The noise comes from the task slot's generator (in the checkpoint).
    """

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module):
        super().__init__(cfg, learned)
        self.state = PESState()

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.state.load_state_dict(sd, self._device())

    @torch.no_grad()
    def step(self, pool: TaskPool) -> Estimate:
        cfg, learned = self.cfg, self.learned
        names = [n for n, _ in learned.named_parameters()]
        theta = [p.detach() for _, p in learned.named_parameters()]
        sigma, K, n = cfg.pes_sigma, cfg.truncation, len(pool.tasks)
        grad = [torch.zeros_like(p) for p in theta]
        meta_values, inner_values, blowups = [], [], 0
        for i, t in enumerate(pool.tasks):
            pair = self.state.pairs.get(i)
            if pair is None:
                pair = self.state.pairs[i] = AntitheticPair(
                    t.params.clone(), {k: v.clone() for k, v in t.state.items()},
                    {nm: torch.zeros_like(p) for nm, p in zip(names, theta)})
            eps = {nm: sigma * torch.randn(p.shape, generator=pool.generators[i]).to(p) for nm, p in zip(names, theta)}
            for nm in names:
                pair.xi[nm] += eps[nm]
            results = []
            for sign, params, state in ((1.0, t.params, t.state), (-1.0, pair.neg_params, pair.neg_state)):
                pdict = {nm: p + sign * eps[nm] for nm, p in zip(names, theta)}
                total, ok = 0.0, True
                for k in range(K):
                    L, g = t.loss_and_grad(params, t.step + k)
                    if sign > 0:
                        inner_values.append(float(L))
                    if not loss_ok(L, cfg.loss_clip):
                        ok = False
                        break
                    params, state = functional_call(learned, pdict, (t.ctx, params, g, state))
                    L2, _ = t.loss_and_grad(params, t.step + k + (1 if cfg.meta_loss == "train" else 0),
                                            fresh=cfg.meta_loss == "fresh")
                    if not loss_ok(L2, cfg.loss_clip):
                        ok = False
                        break
                    total += (math.log(float(L2)) if cfg.log_loss else float(L2)) / K
                results.append((total, params, state, ok))
            (lp, pp, sp, okp), (ln, pn, sn, okn) = results
            ok = okp and okn
            if ok:
                meta_values.append(0.5 * (lp + ln))
                coef = (lp - ln) / (2 * sigma * sigma) / n
                for j, nm in enumerate(names):
                    grad[j] += coef * pair.xi[nm]
                pair.neg_params, pair.neg_state = pn, sn
            else:
                blowups += 1
            if pool.commit(i, pp, sp, K, bad=not ok):  # a fresh task starts a fresh pair
                del self.state.pairs[i]
        return Estimate(dict(zip(names, grad)), _stats(meta_values, inner_values, blowups, 2 * K * n))


@dataclass
class CreditEntry:
    """The inputs of one inner step whose window of losses is still open."""

    params: torch.Tensor  # p_j [P]
    grads: torch.Tensor  # g_j [P]
    state: dict  # the optimizer state before step j
    before: torch.Tensor  # [P] the running sum S when step j was taken


@dataclass
class CreditBuffer:
    """The window estimator's state for one task: the running sum ``S [P]`` of weighted inner gradients since the
    task's reset (float64 when discounted) and the steps still waiting for their window."""

    total: torch.Tensor
    entries: list[CreditEntry] = field(default_factory=list)

    def state_dict(self) -> dict:
        """``S [P]`` and, per stored step, its tensors stacked ``[n, ...]``."""
        entries = self.entries
        out = {"S": self.total.detach().cpu(), "n": torch.tensor(len(entries))}
        if entries:
            for key in ("params", "grads", "before"):
                out[key] = torch.stack([getattr(e, key) for e in entries]).detach().cpu()
            out["state"] = {k: torch.stack([e.state[k] for e in entries]).detach().cpu() for k in entries[0].state}
        return out

    @classmethod
    def from_state_dict(cls, sd: dict, device: torch.device) -> "CreditBuffer":
        entries = [CreditEntry(sd["params"][j].to(device), sd["grads"][j].to(device),
                               {k: v[j].to(device) for k, v in sd["state"].items()}, sd["before"][j].to(device))
                   for j in range(int(sd["n"]))]
        return cls(sd["S"].to(device), entries)


@dataclass
class WindowState:
    """The window estimator's state: one :class:`CreditBuffer` per pool slot."""

    buffers: dict[int, CreditBuffer] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"buffers": {i: buf.state_dict() for i, buf in self.buffers.items()}}

    def load_state_dict(self, sd: dict, device: torch.device) -> None:
        self.buffers = {int(i): CreditBuffer.from_state_dict(rec, device) for i, rec in sd["buffers"].items()}


class WindowCredit(Estimator):
    """First-order credit assignment over a sliding window of ``W = cfg.window`` future losses.

    With inner gradients treated as inputs (as in the first-order ``tbptt``), moving ``p_{j+1}`` by ``delta`` moves
    every later parameter vector by ``delta``, so the meta-gradient of the losses ``L_j .. L_{j+W-1}`` through step
    ``j``'s update ``u_j(theta)`` is ``c_j . d u_j / d theta`` with the *credit* ``c_j = sum_{k=j}^{j+W-1} w_k h_k``
    (``h_k = dL_k / dp_{k+1}``, the inner gradient the next step computes anyway; ``w_k = 1 / L_k`` for the log-loss).

    Truncated backprop over ``K`` steps gives step ``j`` of a truncation only the ``K - j`` losses left in it (K/2 on
    average): with ``K = 10`` the meta-objective sees ~5 steps ahead, and every shipped optimizer learned to shrink
    Adam's step to its lower bound (short-horizon bias, results/README.md). Here every step is judged by the ``W``
    losses after it (or all of those left before its task's horizon).

    With ``cfg.discount = gamma < 1`` the credit is discounted, ``c_j = sum_k gamma^(k-j) w_k h_k``: the first-order
    assumption that a displacement of ``p_{j+1}`` persists unchanged for ``W`` steps ignores that later updates
    correct it (so the undiscounted window overvalues large steps); ``gamma`` models that correction as a geometric
    decay with time constant ``1 / (1 - gamma)`` steps. The running sum is then ``S = sum_i gamma^i w_i h_i`` over
    the task's losses ``i`` (float64; the config bounds ``gamma^horizon``) and ``c_j = gamma^(-j) (S_now - S_before_j)``.

    Per task, the unroll runs without autograd and stores each step's inputs (params, grads, state) together with the
    running sum ``S`` of weighted inner gradients at that moment; once ``W`` further losses are in (or the task
    ends), ``c_j = S_now - S_before_j`` and the update is recomputed with autograd and back-propagated against
    ``c_j`` (with the current theta: the meta-gradient is at most ``W`` inner steps stale). One optimizee
    forward+backward per inner step, plus the update twice (once without autograd).
    Every stored input is in :meth:`state_dict`, so a resumed run continues exactly.
    """

    chunk = 8  # stored steps recomputed together (batched graphs)

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module):
        super().__init__(cfg, learned)
        self.state = WindowState()
        self._contexts: dict[tuple, tuple] = {}  # ids of the contexts -> (batched context, the contexts kept alive)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.state.load_state_dict(sd, self._device())

    def _batched(self, contexts: list[ParamContext]) -> ParamContext:
        """``ParamContext.batch`` cached by the contexts' identities (the pool shares one per architecture)."""
        key = tuple(id(c) for c in contexts)
        if key not in self._contexts:
            if len(self._contexts) > 64:
                self._contexts.clear()
            self._contexts[key] = (ParamContext.batch(contexts), contexts)  # alive, so the ids stay unique
        return self._contexts[key][0]

    def _update_without_graph(self, ctx, params, grads, state):
        """The unroll's update: no autograd (the credited steps are recomputed with it)."""
        with torch.no_grad():
            return self.learned.update(ctx, params, grads, state)

    def step(self, pool: TaskPool) -> Estimate:
        cfg, learned = self.cfg, self.learned
        W, K, n, gamma = cfg.window, cfg.truncation, len(pool.tasks), cfg.discount
        buffers = self.state.buffers
        meta_values, inner_values, blowups = [], [], 0
        matured: list[tuple] = []  # (ctx, entry, credit)
        for _ in range(K):
            for i, t in enumerate(pool.tasks):
                if i not in buffers:
                    buffers[i] = CreditBuffer(torch.zeros_like(t.params, dtype=torch.float64 if gamma < 1 else None))
            a = pool.advance(self._update_without_graph, meta_loss="train", loss_clip=cfg.loss_clip,
                             finite_meta_grad=True)
            inner_values += a.losses
            blowups += sum(a.bad)
            for i in range(n):
                buf = buffers[i]
                if a.meta[i] is not None:  # step taken: credited once the W losses after it are in
                    buf.entries.append(CreditEntry(a.params[i], a.grads[i], a.states[i], buf.total))
                    if not a.bad[i]:
                        _, h = a.meta[i]
                        value = a.meta_values[i]
                        meta_values.append(math.log(value) if cfg.log_loss else value)
                        x = h / value if cfg.log_loss else h
                        if gamma < 1:  # loss index k: weight gamma^k (see the class docstring)
                            x = x.double() * gamma ** a.steps[i]
                        buf.total = buf.total + x
                entries, now = buf.entries, a.steps[i] + 1
                while entries and (a.finished[i] or len(entries) >= W):
                    first = now - len(entries)  # entries are contiguous and end at step now - 1
                    e = entries.pop(0)
                    c = buf.total - e.before
                    if gamma < 1:
                        c = (c * gamma ** -first).to(a.params[i].dtype)
                    matured.append((a.contexts[i], e, c))
                if a.finished[i]:  # the pool replaced the task: its successor starts from S = 0
                    del buffers[i]
        # Each matured step carries a (discounted) sum of up to W loss gradients, of total weight at most
        # W_eff = sum_{i<W} gamma^i (= W undiscounted): 1 / (K n W_eff) makes the surrogate a mean loss.
        w_eff = W if gamma == 1 else (1 - gamma ** W) / (1 - gamma)
        scale = 1.0 / (K * n * w_eff)
        grads = None
        for c in range(0, len(matured), self.chunk):
            part = matured[c:c + self.chunk]
            ctx = self._batched([m[0] for m in part])
            sizes = [m[1].params.numel() for m in part]
            new_p, _ = learned.update(ctx, torch.cat([m[1].params for m in part]),
                                      torch.cat([m[1].grads for m in part]),
                                      batch_states([m[1].state for m in part], sizes))
            grads = _add(grads, self._grad(scale * (torch.cat([m[2] for m in part]) * new_p).sum()))
        stats = _stats(meta_values, inner_values, blowups, K * n)
        stats["credited"] = len(matured)
        return Estimate(grads or {}, stats)


def _stats(meta_values: list[float], inner_values: list[float], blowups: int, inner_steps: int) -> dict:
    finite = [v for v in inner_values if math.isfinite(v)]
    return {"meta_loss": sum(meta_values) / len(meta_values) if meta_values else float("nan"),
            "inner_loss": sum(finite) / len(finite) if finite else float("nan"),
            "blowups": blowups, "inner_steps": inner_steps}


def build_estimator(cfg: MetaConfig, learned: torch.nn.Module) -> Estimator:
    if cfg.estimator == "pes":
        return PES(cfg, learned)
    if cfg.estimator == "window":
        return WindowCredit(cfg, learned)
    return TruncatedBackprop(cfg, learned, greedy=cfg.estimator == "greedy")
