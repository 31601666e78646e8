"""Where meta-training time goes: a torch.profiler table of a short run of one recipe with K tasks per process.

The recipes and the shortened measurement runs are those of ``benchmarks.meta_train_throughput --tasks`` (10-step
truncations, no validation or checkpoints, ``meta.vectorize = true``); the run is in this process, under the
profiler (its first outer step's one-time work, data loading and graph building, is mostly host time: sort by device
time on a GPU to look past it). Prints the operators sorted by their own device time (CUDA) or CPU time, with their
call counts over the run and (CUDA) the kernel launches per batched inner step, and writes
``results/benchmarks/profile_meta_step_<recipe>_K<K>[_cuda].md``.

    python -m benchmarks.profile_meta_step --recipe ng-gnn --tasks 64 --device cuda [--outer-steps 2] [--rows 30]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from benchmarks.common import RESULTS, machine
from benchmarks.meta_train_throughput import CONFIGS, MEASUREMENT, RECIPES
from meta_train.config import load_config
from meta_train.train import train
from tasks.devices import device_or_exit


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="ng-gnn", choices=sorted(RECIPES))
    ap.add_argument("--tasks", type=int, default=16, help="K: tasks per process")
    ap.add_argument("--outer-steps", type=int, default=2, help="profiled outer steps (the first included)")
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    config, extra = RECIPES[args.recipe]
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIGS / config, [*extra, *MEASUREMENT, f"meta.tasks_per_process={args.tasks}",
                                             "meta.vectorize=true", f"run.device='{device.type}'",
                                             f"run.out_dir='{tmp}/run'", f"meta.outer_steps={args.outer_steps}"])
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            train(cfg)
            if cuda:
                torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    inner = args.outer_steps * cfg.meta.truncation * args.tasks  # inner steps of all tasks
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=60)
    launches = (sum(e.count for e in prof.key_averages() if e.key.startswith("cudaLaunchKernel"))
                / (args.outer_steps * cfg.meta.truncation)) if cuda else None
    head = (f"# Meta-training profiled: {args.recipe} ({config}), K = {args.tasks} tasks, "
            f"{machine()['cuda'] or 'CPU'}\n\n"
            f"Produced by `python -m benchmarks.profile_meta_step --recipe {args.recipe} --tasks {args.tasks} "
            f"--device {device.type}`. {args.outer_steps} outer steps of {cfg.meta.truncation} inner steps under "
            f"the profiler (the first includes loading the data and building the graphs, mostly host time): "
            f"{inner / wall:.0f} inner steps/s with the profiler's overhead"
            + (f", {launches:.0f} kernel launches per batched inner step" if cuda else "") + ".\n\n")
    print(head + table)
    suffix = "_cuda" if cuda else ""
    out = (args.out or RESULTS) / f"profile_meta_step_{args.recipe}_K{args.tasks}{suffix}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + "```\n" + table + "\n```\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
