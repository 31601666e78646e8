"""Meta-gradient estimators: each advances a :class:`TaskPool` by one truncation of K inner steps and leaves the
meta-gradient in ``.grad`` of the learned optimizer's parameters.

* :class:`TruncatedBackprop` (``tbptt``): backpropagation through the K updates of the truncation.
* ``greedy``: the same with the trajectory detached after every step: each update is judged only by the loss right
  after it (the published one-step protocol of Kofinas et al.).
* :class:`PES`: persistent evolution strategies with antithetic pairs (Vicol et al. 2021): unbiased across
  truncations, no backprop, noisier.
* :class:`WindowCredit` (``window``): the first-order meta-gradient of the next ``W`` losses after *every* step (a
  sliding window, up to the task's horizon; optionally discounted by ``gamma^(k-j)``), at the memory of ``W``
  stored step inputs instead of ``W`` autograd graphs. Counters the short-horizon bias of 10-step truncations (see the class).

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

import torch
from torch.func import functional_call

from .config import MetaConfig
from .unroll import TaskPool, batch_states, split_state


def _ok(loss: torch.Tensor, clip: float) -> bool:
    v = float(loss)
    return math.isfinite(v) and v <= clip


class Estimator:
    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module):
        self.cfg, self.learned = cfg, learned

    def step(self, pool: TaskPool) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


class TruncatedBackprop(Estimator):
    """Truncated backprop through time (``greedy=False``) or one-step greedy (``greedy=True``)."""

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module, greedy: bool = False):
        super().__init__(cfg, learned)
        self.greedy = greedy

    def step(self, pool: TaskPool) -> dict:
        cfg, learned = self.cfg, self.learned
        K, n = cfg.truncation, len(pool.tasks)
        second = cfg.second_order
        pending_terms: list[torch.Tensor] = []
        meta_values, inner_values, blowups = [], [], 0
        for _ in range(K):
            tasks = pool.tasks
            for t in tasks:
                if t.pending is None:  # second order: a fresh or detached task's params become a leaf to differentiate
                    p = t.params.detach().requires_grad_(True) if second and not t.params.requires_grad else t.params
                    t.pending = t.loss_and_grad(p, t.step, create_graph=second)
            bad = [not (_ok(t.pending[0], cfg.loss_clip) and bool(torch.isfinite(t.pending[1]).all())) for t in tasks]
            grads = [torch.zeros_like(t.pending[1]) if b else t.pending[1] for t, b in zip(tasks, bad)]
            sizes = [t.params.numel() for t in tasks]
            ctx = pool.contexts()
            params = torch.cat([t.params for t in tasks])
            new_p, new_s = learned.update(ctx, params, torch.cat(grads), batch_states([t.state for t in tasks], sizes))
            new_params = torch.split(new_p, sizes)
            new_states = split_state(new_s, sizes, {"step"})
            surrogate = new_p.new_zeros(())
            next_pending = [None] * n
            for i, t in enumerate(tasks):
                inner_values.append(float(t.pending[0]) if not bad[i] else float("nan"))
                if bad[i]:
                    continue
                if not bool(torch.isfinite(new_params[i]).all()):
                    bad[i] = True
                    continue
                if cfg.meta_loss == "train":
                    L, h = t.loss_and_grad(new_params[i], t.step + 1, create_graph=second)
                    next_pending[i] = (L, h)
                else:
                    L, h = t.loss_and_grad(new_params[i], t.step, fresh=cfg.meta_loss == "fresh", create_graph=second)
                if not _ok(L, cfg.loss_clip):
                    bad[i] = True
                    next_pending[i] = None
                    continue
                meta_values.append(math.log(float(L)) if cfg.log_loss else float(L))
                scale = 1.0 / (K * n) if cfg.reduction == "mean" else 1.0 / n  # sum: over steps, mean over tasks
                if second:
                    surrogate = surrogate + scale * (torch.log(L) if cfg.log_loss else L)
                else:
                    w = scale / float(L) if cfg.log_loss else scale
                    surrogate = surrogate + (h.detach() * w * new_params[i]).sum()
            if surrogate.requires_grad:
                if self.greedy:
                    surrogate.backward()
                else:
                    pending_terms.append(surrogate)
            for i, t in enumerate(tasks):
                keep = not self.greedy
                t.params = new_params[i] if keep else new_params[i].detach()
                t.state = new_states[i] if keep else {k: v.detach() for k, v in new_states[i].items()}
                t.pending = next_pending[i]
                if t.pending is not None and not second:
                    t.pending = (t.pending[0].detach(), t.pending[1].detach())
                t.step += 1
            for i, t in enumerate(list(pool.tasks)):
                if bad[i] or t.step >= t.horizon:
                    blowups += int(bad[i])
                    pool.reset(i)
        if pending_terms:
            torch.stack(pending_terms).sum().backward()
        for t in pool.tasks:  # truncation boundary: nothing carries a graph into the next one
            t.params = t.params.detach()
            t.state = {k: v.detach() for k, v in t.state.items()}
            if t.pending is not None:
                t.pending = (t.pending[0].detach(), t.pending[1].detach())
        return _stats(meta_values, inner_values, blowups, K * n)


class PES(Estimator):
    """Persistent evolution strategies with antithetic pairs.

    Each task keeps two trajectories, trained with theta + eps and theta - eps, and the sum ``xi`` of the noise
    drawn since its last reset; the estimate is ``(L+ - L-) / (2 sigma^2) * xi``, averaged over tasks, where ``L`` is
    the mean (log) loss over the truncation. The noise comes from the task slot's generator (in the checkpoint).
    """

    @torch.no_grad()
    def step(self, pool: TaskPool) -> dict:
        cfg, learned = self.cfg, self.learned
        names = [n for n, _ in learned.named_parameters()]
        theta = [p.detach() for _, p in learned.named_parameters()]
        sigma, K, n = cfg.pes_sigma, cfg.truncation, len(pool.tasks)
        grad = [torch.zeros_like(p) for p in theta]
        meta_values, inner_values, blowups = [], [], 0
        for i, t in enumerate(pool.tasks):
            if not t.pes:
                t.pes = {"neg_params": t.params.clone(), "neg_state": {k: v.clone() for k, v in t.state.items()},
                         "xi": {nm: torch.zeros_like(p) for nm, p in zip(names, theta)}}
            eps = {nm: sigma * torch.randn(p.shape, generator=pool.generators[i]).to(p) for nm, p in zip(names, theta)}
            for nm in names:
                t.pes["xi"][nm] += eps[nm]
            results = []
            for sign, params, state in ((1.0, t.params, t.state), (-1.0, t.pes["neg_params"], t.pes["neg_state"])):
                pdict = {nm: p + sign * eps[nm] for nm, p in zip(names, theta)}
                total, ok = 0.0, True
                for k in range(K):
                    L, g = t.loss_and_grad(params, t.step + k)
                    if sign > 0:
                        inner_values.append(float(L))
                    if not _ok(L, cfg.loss_clip):
                        ok = False
                        break
                    params, state = functional_call(learned, pdict, (t.ctx, params, g, state))
                    L2, _ = t.loss_and_grad(params, t.step + k + (1 if cfg.meta_loss == "train" else 0),
                                            fresh=cfg.meta_loss == "fresh")
                    if not _ok(L2, cfg.loss_clip):
                        ok = False
                        break
                    total += (math.log(float(L2)) if cfg.log_loss else float(L2)) / K
                results.append((total, params, state, ok))
            (lp, pp, sp, okp), (ln, pn, sn, okn) = results
            t.step += K
            if okp and okn:
                meta_values.append(0.5 * (lp + ln))
                coef = (lp - ln) / (2 * sigma * sigma) / n
                for j, nm in enumerate(names):
                    grad[j] += coef * t.pes["xi"][nm]
                t.params, t.state = pp, sp
                t.pes["neg_params"], t.pes["neg_state"] = pn, sn
            else:
                blowups += 1
            if not (okp and okn) or t.step >= t.horizon:
                pool.reset(i)
        for p, g in zip(learned.parameters(), grad):
            p.grad = g if p.grad is None else p.grad + g
        return _stats(meta_values, inner_values, blowups, 2 * K * n)


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
    Every stored input is in the pool's checkpoint, so a resumed run continues exactly.
    """

    chunk = 8  # stored steps recomputed together (batched graphs)

    def __init__(self, cfg: MetaConfig, learned: torch.nn.Module):
        super().__init__(cfg, learned)
        self._contexts: dict[tuple, tuple] = {}  # ids of the contexts -> (batched context, the contexts kept alive)

    def _batched(self, contexts: list) -> "ParamContext":
        """``ParamContext.batch`` cached by the contexts' identities (the pool shares one per architecture)."""
        from l2o.optim import ParamContext

        key = tuple(id(c) for c in contexts)
        if key not in self._contexts:
            if len(self._contexts) > 64:
                self._contexts.clear()
            self._contexts[key] = (ParamContext.batch(contexts), contexts)  # alive, so the ids stay unique
        return self._contexts[key][0]

    def step(self, pool: TaskPool) -> dict:
        cfg, learned = self.cfg, self.learned
        W, K, n, gamma = cfg.window, cfg.truncation, len(pool.tasks), cfg.discount
        meta_values, inner_values, blowups = [], [], 0
        matured: list[tuple] = []  # (ctx, entry, credit)
        for _ in range(K):
            tasks = pool.tasks
            for t in tasks:
                if t.pending is None:
                    t.pending = t.loss_and_grad(t.params, t.step)
                if not t.credit:
                    t.credit = {"S": torch.zeros_like(t.params, dtype=torch.float64 if gamma < 1 else None),
                                "entries": []}
            bad = [not (_ok(t.pending[0], cfg.loss_clip) and bool(torch.isfinite(t.pending[1]).all())) for t in tasks]
            grads = [torch.zeros_like(t.pending[1]) if b else t.pending[1] for t, b in zip(tasks, bad)]
            sizes = [t.params.numel() for t in tasks]
            with torch.no_grad():
                new_p, new_s = learned.update(pool.contexts(), torch.cat([t.params for t in tasks]), torch.cat(grads),
                                              batch_states([t.state for t in tasks], sizes))
            new_params = torch.split(new_p, sizes)
            new_states = split_state(new_s, sizes, {"step"})
            for i, t in enumerate(tasks):
                inner_values.append(float(t.pending[0]) if not bad[i] else float("nan"))
                next_pending = None
                if not bad[i] and bool(torch.isfinite(new_params[i]).all()):
                    t.credit["entries"].append({"params": t.params, "grads": grads[i], "state": t.state,
                                                "before": t.credit["S"]})
                    L, h = t.loss_and_grad(new_params[i], t.step + 1)
                    if _ok(L, cfg.loss_clip) and bool(torch.isfinite(h).all()):
                        meta_values.append(math.log(float(L)) if cfg.log_loss else float(L))
                        x = h / float(L) if cfg.log_loss else h
                        if gamma < 1:  # loss index t.step: weight gamma^t.step (see the class docstring)
                            x = x.double() * gamma ** t.step
                        t.credit["S"] = t.credit["S"] + x
                        next_pending = (L, h)
                    else:
                        bad[i] = True
                else:
                    bad[i] = True
                t.params, t.state, t.pending, t.step = new_params[i], new_states[i], next_pending, t.step + 1
                entries = t.credit["entries"]
                finished = bad[i] or t.step >= t.horizon
                while entries and (finished or len(entries) >= W):
                    first = t.step - len(entries)  # entries are contiguous and end at step t.step - 1
                    e = entries.pop(0)
                    c = t.credit["S"] - e["before"]
                    if gamma < 1:
                        c = (c * gamma ** -first).to(t.params.dtype)
                    matured.append((t.ctx, e, c))
            for i, t in enumerate(list(pool.tasks)):
                if bad[i] or t.step >= t.horizon:
                    blowups += int(bad[i])
                    pool.reset(i)
        # Each matured step carries a (discounted) sum of up to W loss gradients, of total weight at most
        # W_eff = sum_{i<W} gamma^i (= W undiscounted): 1 / (K n W_eff) makes the surrogate a mean loss.
        w_eff = W if gamma == 1 else (1 - gamma ** W) / (1 - gamma)
        scale = 1.0 / (K * n * w_eff)
        for c in range(0, len(matured), self.chunk):
            part = matured[c:c + self.chunk]
            ctx = self._batched([m[0] for m in part])
            sizes = [m[1]["params"].numel() for m in part]
            new_p, _ = learned.update(ctx, torch.cat([m[1]["params"] for m in part]),
                                      torch.cat([m[1]["grads"] for m in part]),
                                      batch_states([m[1]["state"] for m in part], sizes))
            (scale * (torch.cat([m[2] for m in part]) * new_p).sum()).backward()
        stats = _stats(meta_values, inner_values, blowups, K * n)
        stats["credited"] = len(matured)
        return stats


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
