"""Which way does each meta-gradient push the step size, task by task?

An untrained relative optimizer (FF family: relative Adam at rate ``ETA``, multiplier 1) trains each task for
``WARM`` steps; from there the derivative of the mean log training loss over the next ``K`` steps with respect to
the global log-rate (every category's ``log_adam_lr`` moved together) is computed several ways (``PROBES``):

* ``fd K``: central finite differences of the actual trajectory (rates eta e^+-0.05, same batches): the truth;
* ``2nd K``: backprop through the K updates *including* the Hessian terms (inner gradients with create_graph);
* ``1st K``: the same with inner gradients treated as inputs (the first-order surrogate of tbptt and ``window``);
* ``1st-disc K``: first order with the loss k steps later weighted by 0.98^k (``meta.discount = 0.98``);
* ``fd-val K``: finite differences of the log *validation* loss (2,000 held-out images) after the K steps.

Negative = a larger rate lowers the loss. Tasks whose best relative rate (at 1000 steps, from
``python -m experiments.hand_designed_adam``) is below eta should show positive truths; a meta-gradient that reads
the task must agree in sign.

Writes ``results/experiments/meta-gradient-probe/probe.json`` after every number and skips the numbers already in
it (a killed run continues):

    python -m experiments.meta_gradient_probe          # about 40 min on one core
    python -m experiments.meta_gradient_probe --device cuda

``--device`` (default cpu; cpu | cuda | cuda:N) is where the optimizer, the inner models and the batches go; a row
measured off the CPU records its ``device``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.func import functional_call

from experiments import RESULTS
from l2o.optim import OptimizerConfig, build_optimizer
from meta_train.unroll import TaskPool
from tasks import channels_for, conv_task
from tasks.devices import device_or_exit

OUT = RESULTS / "experiments" / "meta-gradient-probe" / "probe.json"
ETA, WARM, SEED = 0.13, 200, 0
DELTA = 0.05  # finite-difference step of the global log-rate
# (data, base channels, depth, batch)
TASKS = [("fashion-mnist", (16, 32, 32), 3, 128), ("fashion-mnist", (16, 32, 32), 3, 16),
         ("cifar10", (32, 64, 64), 1, 128), ("cifar10", (32, 64, 64), 3, 128), ("cifar10", (32, 64, 64), 5, 128)]
# (label, K, mode of `derivative`, discount)
PROBES = (("fd 10", 10, "fd", 1.0), ("2nd 10", 10, "second", 1.0), ("1st 10", 10, "first", 1.0),
          ("fd 200", 200, "fd", 1.0), ("1st 200", 200, "first-credit", 1.0),
          ("1st-disc 200", 200, "first-credit", 0.98), ("fd 800", 800, "fd", 1.0),
          ("fd-val 800", 800, "fd-val", 1.0))


def optimizer(device: str | torch.device = "cpu"):
    """The untrained FF optimizer: relative Adam at ETA with a multiplier of exactly 1 (built on the CPU's RNG, then
    moved to ``device``)."""
    torch.manual_seed(0)
    return build_optimizer(OptimizerConfig(family="ff", adam_residual=True, adam_lr=ETA, adam_scale=1.0,
                                           additive=False, relative=True)).to(device)


def start(opt, task, device: str | torch.device = "cpu"):
    """The task after WARM steps of relative Adam at ETA on ``device``: (inner task, params, state)."""
    pool = TaskPool(lambda g: task, opt, [0], 10**6, 0, seed=SEED, device=device)
    t = pool.tasks[0]
    p, s = t.params, t.state
    with torch.no_grad():
        for j in range(WARM):
            _, g = t.loss_and_grad(p, j)
            p, s = opt.update(t.ctx, p, g, s)
    return t, p, s


def unroll(opt, t, p, s, K, mode, discount=1.0):
    """Mean over k of log L(p_{WARM+k}) (k = 1..K; weighted by discount^(k-1) when discounting), differentiable in
    opt's log-rates according to ``mode``: "none", "first" or "second"."""
    total, weight = 0.0, 0.0
    for k in range(K):
        _, g = t.loss_and_grad(p, WARM + k, create_graph=mode == "second")
        if mode == "first":  # the first-order surrogate: the inner gradient is data, not a function of p
            g = g.detach()
        p, s = opt.update(t.ctx, p, g, s)
        if mode == "none":
            L = t.loss_and_grad(p, WARM + k + 1)[0]
        else:
            L, _ = t.loss_and_grad(p, WARM + k + 1, create_graph=True)
        w = discount ** k
        total, weight = total + w * torch.log(L), weight + w
    return total / weight


@torch.no_grad()
def first_order(opt, t, p, s, K, discount=1.0):
    """The "first" derivative without a graph over K steps (a graph over 200 CIFAR-10 steps does not fit in 24 GiB):
    the multiplier of the untrained optimizer is exactly 1 and its step does not depend on p, so
    d u_j / d(global log-rate) = u_j and the derivative is sum_j c_j . u_j with the credit
    c_j = sum_{k>=j} discount^k (h_k / L_k) / sum_k discount^k, as in the ``window`` estimator."""
    steps, xs = [], []
    for k in range(K):
        _, g = t.loss_and_grad(p, WARM + k)
        p_next, s = opt.update(t.ctx, p, g, s)
        L, h = t.loss_and_grad(p_next, WARM + k + 1)
        steps.append(p_next - p)
        xs.append(discount ** k * h / float(L))
        p = p_next
    norm = sum(discount ** k for k in range(K))
    credit, total = torch.zeros_like(p), 0.0
    for k in reversed(range(K)):
        credit = credit + xs[k]
        total += float((credit * steps[k]).sum())
    return total / norm


@torch.no_grad()
def final_val_loss(opt, t, p, s, K):
    """Log of the mean loss on the first 2,000 validation images after K more steps (held-out data, not training)."""
    for k in range(K):
        _, g = t.loss_and_grad(p, WARM + k)
        p, s = opt.update(t.ctx, p, g, s)
    x, y = t.task.batches("val", batch_size=2000, seed=0, device=p.device).batch(0)  # the same 2,000 images
    named = dict(zip(t.ctx.names, t.ctx.split(p)))
    return float(torch.log(t.task.loss(functional_call(t.model, named, (x,)), y)))


def central_difference(opt, value) -> float:
    """(value at log-rate + DELTA - value at log-rate - DELTA) / (2 DELTA), moving every category's log-rate."""
    lr = opt.head.log_adam_lr
    vals = []
    for sign in (1, -1):
        with torch.no_grad():
            lr.add_(sign * DELTA)
            vals.append(value())
            lr.sub_(sign * DELTA)
    return (vals[0] - vals[1]) / (2 * DELTA)


def derivative(opt, t, p, s, K, mode, discount=1.0):
    """d(loss over the next K steps) / d(global log-rate) by ``mode``: "fd", "fd-val", "first-credit" (graph-free
    first order), or "first" / "second" (backprop through the unroll)."""
    if mode == "fd-val":
        return central_difference(opt, lambda: final_val_loss(opt, t, p, s, K))
    if mode == "fd":
        return central_difference(opt, lambda: float(unroll(opt, t, p, s, K, "none")))
    if mode == "first-credit":
        return first_order(opt, t, p, s, K, discount)
    opt.zero_grad()
    p0 = p.detach().requires_grad_(mode == "second")  # the Hessian path needs a leaf to differentiate at
    unroll(opt, t, p0, {k: v.detach() for k, v in s.items()}, K, mode, discount).backward()
    return float(opt.head.log_adam_lr.grad.sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.meta_gradient_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT.relative_to(RESULTS.parent)})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu): where the runs go")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    path = args.out
    torch.set_num_threads(1)
    rows = json.loads(path.read_text()) if path.exists() else []
    for data, base, depth, bs in TASKS:
        task = conv_task(data, channels_for(base, depth, 1.0), batch_size=bs)
        row = next((r for r in rows if r["task"] == task.name and r["batch"] == bs), None)
        if row is None:
            row = {"task": task.name, "batch": bs, **({} if device.type == "cpu" else {"device": str(device)})}
            rows.append(row)
        if all(label in row for label, *_ in PROBES):
            continue
        opt = optimizer(device)
        t, p, s = start(opt, task, device)
        for label, K, mode, disc in PROBES:
            if label not in row:
                row[label] = derivative(opt, t, p, s, K, mode, disc)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rows, indent=1) + "\n")
            print(f"{task.name:28s} bs {bs:3d}  {label:13s} {row[label]:+.4f}", flush=True)


if __name__ == "__main__":
    main()
