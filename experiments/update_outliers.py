"""Where a learned optimizer's loss spikes come from: per-tensor update sizes over an evaluation run, replayed.

    python -m experiments.update_outliers --task cifar10-conv-w128 --seed 0 --steps 600 \\
        --optimizers default=results/checkpoints/default.pt ff=PATH

Replays ``meta_train.inner_train.train_optimizee`` (same model seed, same batches, same update) and records, every
step and for every parameter tensor, the update's RMS and largest magnitude relative to the tensor's initial RMS. A
step after which the training loss jumps above ``--spike`` times the median of the 50 losses before it is a
*spike*: for it the ``--top`` largest element updates are kept with the element's tensor, parameter, gradient and
Adam direction ``m_hat / (sqrt(v_hat) + eps)``. Writes ``OUT/<task>-seed<seed>.json`` and a figure of the
per-tensor largest relative update against the step, one panel per optimizer, and of each tensor's RMS against its
initial RMS (how far the weights grew).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from experiments import RESULTS
from l2o.optim.features import adam_direction
from meta_train.inner_train import loss_and_grad, start_optimizee

OUT = RESULTS / "experiments" / "update-outliers"


@torch.no_grad()
def replay(optimizer, task, steps: int, seed: int, spike: float = 3.0, top: int = 10) -> dict:
    """One evaluation run of ``optimizer`` on ``task`` with per-tensor update statistics.

    Returns ``{"losses": [steps], "tensors": [names], "rel_rms": [steps][tensors], "rel_max": [steps][tensors],
    "param_rms": [steps][tensors] (each tensor's RMS after the step over its initial RMS), "spikes": [{"step",
    "loss_before", "loss_after", "top": [{"tensor", "index", "update", "param", "grad", "adam_dir"}]}]}``;
    ``rel_*`` are relative to each tensor's RMS at step 0.
    """
    model, ctx, params, state = start_optimizee(optimizer, task, seed, torch.device("cpu"))
    stream = task.batches("train", seed=seed)
    init_rms = [t.pow(2).mean().sqrt().clamp(min=1e-8).item() for t in ctx.split(params)]
    rec = {"losses": [], "tensors": list(ctx.names), "rel_rms": [], "rel_max": [], "param_rms": [], "spikes": []}
    pending = None  # the last update's top elements, kept until the next loss says whether it was a spike
    for step in range(steps):
        x, y = stream.batch(step)
        loss, grad = loss_and_grad(model, ctx, task.loss, params, x, y)
        value = float(loss)
        losses = rec["losses"]
        if pending is not None and len(losses) >= 50 and value > spike * statistics.median(losses[-50:]):
            rec["spikes"].append({**pending, "loss_before": losses[-1], "loss_after": value})
        losses.append(value)
        if not math.isfinite(value):
            break
        new_params, state = optimizer.update(ctx, params, grad, state, 1.0)
        delta = new_params - params
        rec["rel_rms"].append([d.pow(2).mean().sqrt().item() / r for d, r in zip(ctx.split(delta), init_rms)])
        rec["rel_max"].append([d.abs().max().item() / r for d, r in zip(ctx.split(delta), init_rms)])
        adam_dir = adam_direction(state) if "v" in state else None
        idx = delta.abs().topk(top).indices.tolist()
        pending = {"step": step, "top": [_element(i, ctx, delta, params, grad, adam_dir) for i in idx]}
        params = new_params
        rec["param_rms"].append([t.pow(2).mean().sqrt().item() / r for t, r in zip(ctx.split(params), init_rms)])
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {value:.3f}, largest relative update "
                  f"{max(rec['rel_max'][-1]):.3g} ({len(rec['spikes'])} spikes)", flush=True)
    return rec


def _element(i: int, ctx, delta, params, grad, adam_dir) -> dict:
    k = int(ctx.tensor_id[i])
    return {"tensor": ctx.names[k], "index": i - int(ctx.offsets[k]), "update": delta[i].item(),
            "param": params[i].item(), "grad": grad[i].item(),
            "adam_dir": None if adam_dir is None else adam_dir[i].item()}


def plot(records: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (("rel_max", "largest |update| / initial RMS"), ("param_rms", "RMS / initial RMS (weight growth)"))
    fig, axes = plt.subplots(3, len(records), figsize=(6 * len(records), 10), squeeze=False, sharex=True)
    for col, (label, rec) in enumerate(records.items()):
        for row, (key, title) in enumerate(rows):
            ax = axes[row][col]
            for j, name in enumerate(rec["tensors"]):
                ax.semilogy([r[j] for r in rec.get(key, [])], lw=0.7, label=name)
            ax.set_title(f"{label}: {title}, per tensor", fontsize=9)
            ax.legend(fontsize=6, ncol=2)
        axes[2][col].plot(rec["losses"], lw=0.7)
        axes[2][col].set_yscale("log")
        axes[2][col].set_title(f"{label}: training loss ({len(rec['spikes'])} spikes)", fontsize=9)
        axes[2][col].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from meta_train.evaluate import parse_spec
    from tasks import get_task

    ap = argparse.ArgumentParser(prog="python -m experiments.update_outliers", description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="cifar10-conv-w128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--optimizers", nargs="+", required=True, metavar="LABEL=CHECKPOINT")
    ap.add_argument("--spike", type=float, default=3.0, help="loss / median of the 50 before it that is a spike")
    ap.add_argument("--top", type=int, default=10, help="largest element updates kept per spike")
    ap.add_argument("--without-graph", action="store_true",
                    help="zero each optimizer's embedding projection (the head then reads its own features only: "
                         "the graph's contribution ablated) and record it as 'LABEL without graph'")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    task = get_task(args.task)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.task}-seed{args.seed}.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    for spec in args.optimizers:
        cand = parse_spec(spec)
        label = f"{cand.label} without graph" if args.without_graph else cand.label
        if label in records and len(records[label]["losses"]) >= args.steps:
            print(f"{label}: kept from {path}")
            continue
        optimizer = cand.build()
        if args.without_graph:
            if getattr(optimizer.head, "embed_proj", None) is None:
                ap.error(f"--without-graph: {spec} has no embedding to ablate")
            with torch.no_grad():
                optimizer.head.embed_proj.weight.zero_()
        rec = {"checkpoint": cand.checkpoint, **replay(optimizer, task, args.steps, args.seed, args.spike, args.top)}
        # one optimizer at a time (a kill loses only the one running), merged into the file as it is now (another
        # process may have added an optimizer meanwhile)
        records = {**(json.loads(path.read_text()) if path.is_file() else {}), label: rec}
        path.write_text(json.dumps(records) + "\n")
    plot(records, path.with_suffix(".png"))
    for label, rec in records.items():
        for s in rec["spikes"]:
            print(f"{label}: spike after step {s['step']} ({s['loss_before']:.3g} -> {s['loss_after']:.3g}); "
                  f"largest updates: " + ", ".join(f"{e['tensor']}[{e['index']}] {e['update']:+.3g}"
                                                   for e in s["top"][:5]))
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
