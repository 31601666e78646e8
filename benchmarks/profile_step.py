"""Where one ``NeuralGraphOptimizer.step()`` spends its time: a torch.profiler table of the top operators.

Profiles ``--repeats`` steps (after two warm-up steps that create the optimizer state) of the shipped default, or of
a learned family as shipped (``meta_train/configs/<family>.toml``), on one of ``benchmarks.step_overhead``'s tasks,
and prints the operators sorted by their own device time (CUDA) or CPU time, with the number of calls per step (on a
GPU, many small kernels mean launch-bound), plus the step's wall time, the matrix-product FLOPs of one
step (``torch.utils.flop_counter``: the arithmetic no implementation of the same encoder avoids) and, on CUDA, its
extra peak memory per parameter. Writes the table to ``results/benchmarks/profile_step_<task>[_cuda].md``.

    python -m benchmarks.profile_step --task cifar10-resnet18 --device cuda [--optimizer default|<family>] [--rows 25]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import RESULTS, machine, model_fwd_bwd, time_ms
from benchmarks.step_overhead import CONFIG_FILES, CONFIGS, TASKS, peak_extra_bytes
from l2o import NeuralGraphOptimizer
from l2o.optim import build_optimizer
from meta_train.config import load_config
from tasks.devices import device_or_exit


def make_optimizer(model: torch.nn.Module, name: str) -> NeuralGraphOptimizer:
    if name == "default":
        return NeuralGraphOptimizer(model)
    cfg = load_config(CONFIGS / CONFIG_FILES.get(name, f"{name}.toml"))
    return NeuralGraphOptimizer(model, optimizer=build_optimizer(cfg.optimizer))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cifar10-conv", choices=sorted(TASKS))
    ap.add_argument("--optimizer", default="default", help="default (the shipped one) or a learned family")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    task = TASKS[args.task]()
    torch.manual_seed(0)
    model = task.make_model(0).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    fwd_bwd = model_fwd_bwd(task, model, device=device)
    fwd_bwd()
    opt = make_optimizer(model, args.optimizer)
    for _ in range(2):  # state created, caches warm
        opt.step()
    step_ms = time_ms(opt.step, repeats=5)
    fb_ms = time_ms(fwd_bwd, repeats=5)
    extra = peak_extra_bytes(opt.step, device)
    with FlopCounterMode(display=False) as flops:  # matmul / conv FLOPs only: the floor the step cannot go below
        opt.step()
    gflop = flops.get_total_flops() / 1e9
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.repeats):
            opt.step()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60)
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key.startswith("cudaLaunchKernel")) / args.repeats if cuda else None
    head = (f"# One optimizer step profiled: {args.optimizer} on {args.task} ({n_params:,} parameters), "
            f"{machine()['cuda'] or 'CPU'}\n\n"
            f"Produced by `python -m benchmarks.profile_step --task {args.task} --optimizer {args.optimizer} "
            f"--device {device.type}`. Step {step_ms:.2f} ms, forward+backward {fb_ms:.2f} ms "
            f"(ratio {step_ms / fb_ms:.2f}); {gflop:.2f} GFLOP of matrix products per step "
            f"({1000 * gflop / step_ms:.0f} GFLOP/s over the whole step)"
            + (f", extra peak {extra / n_params:.0f} bytes/parameter, {launches:.0f} kernel launches per step"
               if cuda else "")
            + f"; the table covers {args.repeats} steps.\n\n")
    print(head + table)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    out = (args.out or RESULTS) / f"profile_step_{args.task}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + "```\n" + table + "\n```\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
