"""What evaluating the per-element MLPs in row chunks buys the optimizer step (``l2o.runtime.row_chunks``).

Without autograd, the update heads and DNG's edge decoder run over chunks of ``CPU_CHUNK_ROWS`` rows (8192) so that
their ``[rows, hidden]`` temporaries stay in cache. This measures ``NeuralGraphOptimizer.step()`` with the chunk
size as shipped against one chunk (the whole ``[P, hidden]`` at once, as before), for the shipped default and the
reference NG-GNN (8 x 64 ReLU head), on the step-overhead tasks. The two settings alternate inside one process, and
each is timed in process CPU time (not wall time) and reported as the median over rounds, so a busy machine shifts
both alike; the ratio is the result.

    python -m benchmarks.step_chunks [--tasks mnist-mlp-256-128 cifar10-conv] [--rounds 5] [--steps 2]
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import l2o.runtime
from benchmarks.common import RESULTS, block_ms, machine, markdown_table, model_fwd_bwd, write_json
from benchmarks.step_overhead import CONFIG_FILES, CONFIGS, TASKS
from l2o import NeuralGraphOptimizer
from l2o.optim import build_optimizer
from meta_train.config import load_config

OPTIMIZERS = ("shipped default", "reference ng-gnn 8x64")
WHOLE = 1 << 62  # one chunk: every row at once


def _optimizer(label: str, model: torch.nn.Module) -> NeuralGraphOptimizer:
    torch.manual_seed(0)
    if label == "shipped default":
        return NeuralGraphOptimizer(model)
    cfg = load_config(CONFIGS / CONFIG_FILES[label]).optimizer
    return NeuralGraphOptimizer(model, optimizer=build_optimizer(cfg))


def bench(task_name: str, label: str, rounds: int, steps: int) -> dict:
    """Step CPU ms with the shipped chunk size and with one chunk, alternating, median over ``rounds``."""
    task = TASKS[task_name]()
    model = task.make_model(0)
    model_fwd_bwd(task, model)()  # gradients to step with
    opt = _optimizer(label, model)
    shipped = l2o.runtime.CPU_CHUNK_ROWS
    times: dict[int, list[float]] = {shipped: [], WHOLE: []}
    try:
        for size in (shipped, WHOLE):  # warm-up: graph, state and allocator
            l2o.runtime.CPU_CHUNK_ROWS = size
            opt.step()
        for _ in range(rounds):
            for size in (shipped, WHOLE):
                l2o.runtime.CPU_CHUNK_ROWS = size
                times[size].append(block_ms(opt.step, steps))
    finally:
        l2o.runtime.CPU_CHUNK_ROWS = shipped
    chunked, whole = statistics.median(times[shipped]), statistics.median(times[WHOLE])
    return {"task": task_name, "optimizer": label, "params": sum(p.numel() for p in model.parameters()),
            "chunk_rows": shipped, "chunked_cpu_ms": chunked, "whole_cpu_ms": whole, "chunked_over_whole": chunked / whole,
            **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=["mnist-mlp-256-128", "cifar10-conv", "cifar10-conv-1M"],
                    choices=sorted(TASKS))
    ap.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    for task in args.tasks:
        for label in args.optimizers:
            records.append(bench(task, label, args.rounds, args.steps))
            r = records[-1]
            print(f"{task} / {label}: {r['chunked_cpu_ms']:.1f} ms chunked, {r['whole_cpu_ms']:.1f} ms whole "
                  f"({r['chunked_over_whole']:.2f}x)", flush=True)
    table = markdown_table(records, ["task", "params", "optimizer", "chunk_rows", "chunked_cpu_ms", "whole_cpu_ms",
                                     "chunked_over_whole"])
    write_json("step_chunks.json", records, args.out)
    md = (args.out or RESULTS) / "step_chunks.md"
    md.write_text("# Optimizer step: per-element MLPs in row chunks vs all rows at once (CPU)\n\n"
                  "Produced by `python -m benchmarks.step_chunks`: `NeuralGraphOptimizer.step()` CPU time (process "
                  f"time, {args.threads} thread(s), median of {args.rounds} alternating rounds of {args.steps} steps), "
                  "with `l2o.runtime.CPU_CHUNK_ROWS` as shipped and with one chunk.\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
