"""A learned rule made relative: each step times its tensor's initial RMS, started exactly where an absolute rule is.

    python -m experiments.relative_steps warm-start --source results/checkpoints/default.pt \\
        --out results/experiments/relative-steps/checkpoints/default-relative-start.pt

Why: the graph default takes absolute steps (the reference's ``mlp`` rule) whose size its embedding fixes from
structure that does not change with width (relative degree scalers, mean aggregation, LayerNorm), so at 4x the
meta-training width, where the initialisation is half as large, it moves the wide layers twice as far relative to
their scale and grows them until the loss spikes (``results/experiments/update-outliers``). With
``optimizer.relative = true`` the same output is a step in units of the tensor's initial RMS.

``warm-start`` writes the relative rule that starts as the absolute one on the meta-training task: the head's step
output ``d`` (row 0 of its last layer) is divided by ``ref``, the initial RMS of the task's median *element* (tensors
weighted by size, so the large hidden layers set it), so on a tensor of RMS ``ref`` the step is unchanged (elsewhere
it scales with the tensor: what meta-training then adapts).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

OUT = Path("results/experiments/relative-steps")


def reference_rms(task_name: str, seed: int = 0) -> float:
    """The initial RMS of its tensor for the median element of ``task_name``'s model (seed ``seed``)."""
    from tasks import get_task

    model = get_task(task_name).make_model(seed)
    rms = sorted((p.detach().pow(2).mean().sqrt().item(), p.numel()) for p in model.parameters())
    half, seen = sum(n for _, n in rms) / 2, 0
    for value, n in rms:
        seen += n
        if seen >= half:
            return value
    raise ValueError(f"{task_name}: the model has no parameters")


def relative_warm_start(source: Path, out: Path, task_name: str) -> float:
    """Write ``source``'s rule with ``relative = True`` and its step output divided by the task's reference RMS;
    returns that RMS."""
    optimizer, config, payload = load_checkpoint(source)
    if config.step_rule != "mlp" or config.relative:
        raise SystemExit(f"{source}: expected an absolute 'mlp' rule, got step_rule={config.step_rule!r}, "
                         f"relative={config.relative}")
    ref = reference_rms(task_name)
    with torch.no_grad():
        optimizer.head.out.weight[0].div_(ref)
        optimizer.head.out.bias[0].div_(ref)
    note = (f"relative warm start of {source}: step output divided by {ref:.5g} (initial tensor RMS of the median element of "
            f"{task_name})")
    save_checkpoint(out, optimizer, replace(config, relative=True), {**payload.get("summary", {}), "warm_start_note": note})
    print(note, "->", out)
    return ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.relative_steps", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ws = sub.add_parser("warm-start", help="write the relative rule that starts as an absolute one")
    ws.add_argument("--source", type=Path, required=True, help="checkpoint of an absolute 'mlp' rule")
    ws.add_argument("--out", type=Path, required=True)
    ws.add_argument("--task", default="fmnist-conv", help="meta-training task whose tensors set the reference RMS")
    args = ap.parse_args(argv)
    relative_warm_start(args.source, args.out, args.task)


if __name__ == "__main__":
    main()
