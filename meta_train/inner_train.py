"""Train one optimizee from scratch with any optimizer's functional ``update`` (no meta-gradient).

Used by periodic validation during meta-training and by evaluation: the same ``update`` that meta-training
unrolls and ``NeuralGraphOptimizer.step()`` calls, here in a plain loop over flat parameters.
"""
from __future__ import annotations

import math
import time

import torch
from torch.func import functional_call, grad_and_value, vmap

from l2o.graph import NeuralGraph
from l2o.optim import ParamContext
from l2o.optim.learned import Optimizer


def context_for(model: torch.nn.Module, optimizer: Optimizer) -> ParamContext:
    """The flat layout ``optimizer`` needs for ``model``: with its neural graph for graph optimizers."""
    if optimizer.needs_graph:
        return ParamContext.for_graph(NeuralGraph.from_module(model, kmax=optimizer.kmax))
    named = list(model.named_parameters())
    return ParamContext.build(None, [n for n, _ in named], [p.shape for _, p in named])


def loss_and_grad(model: torch.nn.Module, ctx: ParamContext, loss_fn, params: torch.Tensor, x: torch.Tensor,
                  y: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of ``model`` with flat ``params [P]`` on ``(x, y)`` and its gradient ``[P]``.

    First-order (the gradient is a constant input to the optimizer) unless ``create_graph``; works under an outer
    ``no_grad`` too (validation, PES).
    """
    p = params if create_graph else params.detach().requires_grad_(True)
    with torch.enable_grad():
        named = dict(zip(ctx.names, ctx.split(p)))
        loss = loss_fn(functional_call(model, named, (x,)), y)
        (grad,) = torch.autograd.grad(loss, p, create_graph=create_graph)
    return (loss if create_graph else loss.detach()), grad


def batched_loss_and_grad(model: torch.nn.Module, ctx: ParamContext, loss_fn, params: torch.Tensor, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loss_and_grad` of K optimizees of one architecture in one vectorised call (first order only).

    ``params [K, P]`` (each row laid out by ``ctx``), ``x [K, B, ...]``, ``y [K, B, ...]`` (task k's own batch in row
    k) -> ``(losses [K], grads [K, P])``, detached. ``model`` gives only the structure: every row's parameters are
    passed functionally, so one module serves all K tasks. Row k's result does not depend on the other rows (a NaN
    stays in its row); it equals the per-task :func:`loss_and_grad` up to float rounding (the batched kernels may
    sum in another order). The model must have no buffers and no random layers (see ``unroll.vmap_key``).
    """
    def one(p: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:  # p [P], xb [B, ...] -> scalar
        return loss_fn(functional_call(model, dict(zip(ctx.names, ctx.split(p))), (xb,)), yb)

    # detach: first order, the gradients are constant inputs to the optimizer (like loss_and_grad's requires_grad_
    # on a detached copy); torch.func.grad differentiates internally, so an outer no_grad (validation, PES) is fine.
    grads, losses = vmap(grad_and_value(one))(params.detach(), x, y)
    return losses, grads


def start_optimizee(optimizer: Optimizer, task, seed: int, device: torch.device
                    ) -> tuple[torch.nn.Module, ParamContext, torch.Tensor, dict]:
    """A fresh ``task.make_model(seed)`` on ``device`` ready for ``optimizer``: ``(model, ctx, params [P], state)``,
    the parameters flattened in the layout's order and the optimizer's initial state."""
    model = task.make_model(seed).to(device)
    ctx = context_for(model, optimizer).to(device)
    named = dict(model.named_parameters())
    params = ctx.flatten([named[n].detach() for n in ctx.names])
    return model, ctx, params, optimizer.init_state(ctx, params)


@torch.no_grad()
def train_optimizee(optimizer: Optimizer, task, steps: int, seed: int, device: torch.device | str = "cpu",
                    eval_split: str | None = "val", eval_every: int = 0, lr: float = 1.0, progress=None,
                    data_root=None) -> dict:
    """Train ``task.make_model(seed)`` for ``steps`` steps on batches ``0..steps-1`` of the seeded train stream.

    Returns ``{"losses": [steps] training losses (at the parameters before each update), "evals": [(step, acc,
    loss)], "acc", "loss" (final evaluation on ``eval_split``), "step_ms" (mean optimizer update time),
    "diverged" (non-finite loss seen; training stops there)}``.
    """
    device = torch.device(device)
    model, ctx, params, state = start_optimizee(optimizer, task, seed, device)
    named = dict(model.named_parameters())
    stream = task.batches("train", seed=seed, device=device, **({"root": data_root} if data_root else {}))
    losses, evals, update_s, diverged = [], [], 0.0, False

    def evaluate() -> dict:
        with torch.no_grad():
            for n, p in zip(ctx.names, ctx.split(params)):
                named[n].copy_(p)
        kw = {"root": data_root} if data_root else {}
        return task.evaluate(model, eval_split, **kw)

    for step in range(steps):
        x, y = stream.batch(step)
        x, y = x.to(device), y.to(device)
        loss, grad = loss_and_grad(model, ctx, task.loss, params, x, y)
        value = float(loss)
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            break
        t0 = time.perf_counter()
        params, state = optimizer.update(ctx, params, grad, state, lr)
        update_s += time.perf_counter() - t0
        if eval_split and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            r = evaluate()
            evals.append((step + 1, r["acc"], r["loss"]))
        if progress is not None:
            progress(step, value)
    out = {"losses": losses, "evals": evals, "diverged": diverged,
           "step_ms": 1e3 * update_s / max(1, len(losses))}
    if eval_split:
        if diverged:
            out.update(acc=float("nan"), loss=float("nan"))
        else:
            r = evaluate()
            out.update(acc=r["acc"], loss=r["loss"])
            evals.append((len(losses), r["acc"], r["loss"]))
    return out
