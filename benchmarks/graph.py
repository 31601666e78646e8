"""Neural-graph cost: construction once per architecture, scatter + gather every optimizer step.

For each task: build time of ``NeuralGraph.from_module``; one ``scatter_flat`` of F=14 per-parameter features
(the optimizer's input width) plus one ``gather_flat`` of D=32-wide embeddings (its output width); and the
model's own forward+backward on a batch of 128 for scale. Aim: scatter + gather < 10% of forward+backward.

    python -m benchmarks.graph [--repeats 20] [--out results/benchmarks] [--device cuda]

The graph is built from the model on the CPU (construction walks the module), then moved with the model, the
features and the embeddings to ``--device`` (default cpu; cpu | cuda | cuda:N) for the timed scatter + gather and
forward+backward. Writes ``graph.json`` (``graph_cuda.json`` off the CPU), each record with its ``device``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import machine, markdown_table, model_fwd_bwd, time_ms, write_json
from l2o.graph import NeuralGraph
from tasks import get_task
from tasks.devices import device_or_exit
from tasks.registry import conv_task

FEATURES, EMBED = 14, 32


def tasks():
    yield get_task("fmnist-conv")
    yield get_task("cifar10-conv")
    # ~1M parameters: 3->64->128->256->256 3x3 convs + linear.
    yield conv_task("cifar10", (64, 128, 256, 256), name="cifar10-conv-1M")


def bench(task, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    model = task.make_model(0)
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    graph = NeuralGraph.from_module(model)
    build_ms = (time.perf_counter() - t0) * 1e3
    if device.type != "cpu":
        model, graph = model.to(device), graph.to(device)
    feats = torch.randn(graph.num_param_elements, FEATURES).to(device)
    node_emb, edge_emb = torch.randn(graph.num_nodes, EMBED).to(device), torch.randn(graph.num_edges, EMBED).to(device)

    def scatter_gather():
        graph.scatter_flat(feats)
        graph.gather_flat(node_emb, edge_emb)

    fwd_bwd = model_fwd_bwd(task, model, device=device)
    sg = time_ms(scatter_gather, repeats)
    fb = time_ms(fwd_bwd, repeats)
    return {"task": task.name, "num_params": n_params, "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
            "build_ms": build_ms, "scatter_gather_ms": sg, "fwd_bwd_ms": fb, "ratio": sg / fb,
            "features": FEATURES, "embed": EMBED, "device": str(device), **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    records = [bench(t, args.repeats, device) for t in tasks()]
    table = markdown_table(records, ["task", "num_params", "num_nodes", "num_edges", "build_ms",
                                     "scatter_gather_ms", "fwd_bwd_ms", "ratio"])
    print(table)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    path = write_json(f"graph{suffix}.json", records, args.out)
    worst = max(r["ratio"] for r in records)
    print(f"\nscatter+gather / fwd+bwd: worst {worst:.1%} (aim < 10%)  -> {path}")


if __name__ == "__main__":
    main()
