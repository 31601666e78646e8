"""How a learned optimizer's steps compare with Adam's, per parameter category, along a real training run.

    python -m meta_train step-stats results/checkpoints/ng-gnn.pt --task cifar10-conv --steps 300 --ref-lr 3e-3

At every step of a run driven by the learned optimizer, its update ``u [P]`` is compared with the Adam step
``ref_lr * adam_dir [P]`` computed from the same moments (the learned optimizers keep Adam's first and second
moments in their state): per category (first / hidden / last layer x weight / bias) the norm ratio
``|u| / |ref_lr * adam_dir|`` (the *effective learning rate* relative to ``ref_lr``) and the cosine between ``u``
and ``-adam_dir``. With ``relative`` the reference is relative Adam, ``ref_lr * adam_dir * scale`` (``scale [P]``: each
tensor's RMS at the start, kept in a relative optimizer's state), so the ratio at ``ref_lr = 1`` is the optimizer's
effective *relative* rate. This is the diagnostic behind ``results/README.md``'s account of why meta-trained optimizers
fell behind tuned Adam: their steps shrink to the smallest size they are allowed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from l2o.optim import load_checkpoint
from l2o.optim.context import CATEGORIES
from l2o.optim.features import adam_direction
from tasks import get_task

from ..inner_train import loss_and_grad, start_optimizee


@torch.no_grad()
def step_stats(optimizer, task, steps: int, ref_lr: float, seed: int = 0, every: int = 10,
               relative: bool = False, device: str | torch.device = "cpu") -> list[dict]:
    """Records ``{"step", "loss", "<category>": {"ratio", "cos"}}`` every ``every`` steps. The run is on ``device``
    (the optimizer is moved there)."""
    device = torch.device(device)
    optimizer = optimizer.to(device)
    model, ctx, params, state = start_optimizee(optimizer, task, seed, device)
    if "m" not in state or "v" not in state:
        raise ValueError(f"{optimizer.family} keeps no Adam moments; step_stats needs a learned optimizer")
    if relative and "scale" not in state:
        raise ValueError(f"{optimizer.family} takes no relative steps (no 'scale' in its state): drop --relative")
    ref_scale = state["scale"] if relative else 1.0
    stream = task.batches("train", seed=seed, device=device)
    category = ctx.category.index_select(0, ctx.tensor_id)  # [P]
    records = []
    for step in range(steps):
        x, y = stream.batch(step)
        loss, grad = loss_and_grad(model, ctx, task.loss, params, x, y)
        new_params, state = optimizer.update(ctx, params, grad, state)
        if step % every == 0 or step == steps - 1:
            u, ref = new_params - params, -ref_lr * adam_direction(state) * ref_scale
            rec = {"step": step, "loss": float(loss)}
            for c, name in enumerate(CATEGORIES):
                mask = category == c
                if mask.any():
                    uc, rc = u[mask], ref[mask]
                    rec[name] = {"ratio": float(uc.norm() / rc.norm().clamp_min(1e-30)),
                                 "cos": float(torch.nn.functional.cosine_similarity(uc, rc, dim=0))}
            records.append(rec)
        params = new_params
    return records


def plot(records: list[dict], path: Path, title: str) -> None:
    """The norm ratios (log scale) and cosines per category against the step."""
    # Imported here, not at the top: selecting the Agg backend is process-wide (callers importing step_stats keep
    # theirs), and matplotlib takes about a second to import.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in records]
    for name in CATEGORIES:
        if name in records[0]:
            ax_r.plot(steps, [r[name]["ratio"] for r in records], label=name)
            ax_c.plot(steps, [r[name]["cos"] for r in records], label=name)
    ax_r.set(xlabel="step", ylabel="|update| / |Adam step at ref lr|", title=title, yscale="log")
    ax_c.set(xlabel="step", ylabel="cosine(update, Adam step)", ylim=(-1.05, 1.05))
    for ax in (ax_r, ax_c):
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> None:
    """``python -m meta_train step-stats``: print a few records, write ``step_stats.{json,png}`` into ``--out``."""
    optimizer = load_checkpoint(args.checkpoint)[0]
    ref_lr = args.ref_lr if args.ref_lr is not None else (1.0 if args.relative else 3e-3)
    records = step_stats(optimizer, get_task(args.task), args.steps, ref_lr, args.seed, relative=args.relative,
                         device=args.device)
    for r in records[:: max(1, len(records) // 6)] + records[-1:]:
        cells = "  ".join(f"{n}: x{r[n]['ratio']:.2f} cos {r[n]['cos']:+.2f}" for n in CATEGORIES if n in r)
        print(f"step {r['step']:4d}  loss {r['loss']:.3f}  {cells}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "step_stats.json").write_text(json.dumps(records) + "\n")
        plot(records, out / "step_stats.png", f"{Path(args.checkpoint).stem} on {args.task}")
