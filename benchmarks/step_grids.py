"""What taking dense weight blocks as grids buys the NG-GNN optimizer step (``l2o.encoders.ng_gnn.edge_pieces``).

Without autograd on a graph larger than one row chunk, each NG-GNN layer goes through its edges in pieces. With
``DENSE_GRIDS`` (shipped) the edges of a Linear or ungrouped conv are taken as ``[out, in]`` grids: the node terms of
messages and edge updates are broadcasts and each node's aggregate a reduction along one axis; without it every
piece gathers its edges' node terms and scatters its messages (the same values up to rounding). This measures
``NeuralGraphOptimizer.step()`` of the shipped default both ways, with two optimizers on two copies of the model
stepping in alternation inside one process, so a busy machine shifts both alike; the ratio is the result. CPU: process
CPU time; CUDA: wall time after synchronising (the second step of each records its CUDA graph in its own setting).

    python -m benchmarks.step_grids [--tasks mnist-mlp-256-128 cifar10-conv ...] [--rounds 5] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

import l2o.encoders.ng_gnn as ng_gnn
from benchmarks.common import RESULTS, block_ms, machine, markdown_table, model_fwd_bwd, write_json
from benchmarks.step_overhead import TASKS
from l2o import NeuralGraphOptimizer


def bench(task_name: str, rounds: int, steps: int, device: torch.device) -> dict:
    """Step ms of the shipped default with and without grids, alternating, median over ``rounds``."""
    task = TASKS[task_name]()
    model = task.make_model(0).to(device)
    model_fwd_bwd(task, model, device=device)()  # gradients to step with
    twin = copy.deepcopy(model)  # the same weights and gradients
    for a, b in zip(model.parameters(), twin.parameters()):
        b.grad = a.grad.clone()
    opts = {True: NeuralGraphOptimizer(model), False: NeuralGraphOptimizer(twin)}
    shipped = ng_gnn.DENSE_GRIDS
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for grids in (True, False):  # warm-up: graph, state, allocator (and the CUDA graph, recorded here)
            ng_gnn.DENSE_GRIDS = grids
            for _ in range(3):
                opts[grids].step()
        for _ in range(rounds):
            for grids in (True, False):
                ng_gnn.DENSE_GRIDS = grids
                times[grids].append(block_ms(opts[grids].step, steps, device))
    finally:
        ng_gnn.DENSE_GRIDS = shipped
    grid, plain = statistics.median(times[True]), statistics.median(times[False])
    return {"task": task_name, "params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "grids_ms": grid, "row_chunks_ms": plain, "grids_over_row_chunks": grid / plain, **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=["mnist-mlp-256-128", "cifar10-conv", "cifar10-conv-1M"],
                    choices=sorted(TASKS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timed block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch here")
    records = []
    for task in args.tasks:
        records.append(bench(task, args.rounds, args.steps, device))
        r = records[-1]
        print(f"{task}: {r['grids_ms']:.1f} ms with grids, {r['row_chunks_ms']:.1f} ms with row chunks "
              f"({r['grids_over_row_chunks']:.2f}x)", flush=True)
    table = markdown_table(records, ["task", "params", "device", "grids_ms", "row_chunks_ms", "grids_over_row_chunks"])
    suffix = "" if device.type == "cpu" else "_cuda"
    write_json(f"step_grids{suffix}.json", records, args.out)
    md = (args.out or RESULTS) / f"step_grids{suffix}.md"
    timing = "process CPU time" if device.type == "cpu" else "wall time, synchronised"
    md.write_text("# NG-GNN optimizer step: dense weight blocks as grids vs plain row chunks\n\n"
                  f"Produced by `python -m benchmarks.step_grids{' --device ' + args.device if suffix else ''}`: "
                  f"`NeuralGraphOptimizer(model).step()` of the shipped default ({timing}, {args.threads} thread(s), "
                  f"median of {args.rounds} alternating rounds of {args.steps} steps), with "
                  "`l2o.encoders.ng_gnn.DENSE_GRIDS` on (shipped) and off.\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
