"""Encoder cost: forward and forward+backward time and peak memory of every registered encoder.

All encoders at the same size (hidden 64, depth 4, kmax 3, node_in 2, edge_in 3*3*2 = 18, their default options) on
the neural graphs of:

* ``fmnist-conv`` and ``cifar10-conv`` (the meta-training and transfer tasks of Kofinas et al.);
* ``cifar10-conv-w128-d5``: a CIFAR-10 CNN of width 128 and depth 5 (channels 128 x 5);
* ``mnist-mlp-1M``: an MLP 784-1024-192-10 (1.00M parameters, ~1M edges);

plus a linear-scaling sweep over CIFAR-10 CNNs of widths 16, 32, 64, 128 (``cifar10-conv-w{16,32,64,128}``,
channels (w, 2w, 2w)) with a least-squares fit of log(time) against log(edges) per encoder (slope 1 = linear).

What is measured:

* ``fwd_ms``: forward under ``torch.no_grad()`` (what ``NeuralGraphOptimizer.step`` runs); ``fwd_bwd_ms``: forward,
  loss ``mean(node_emb**2) + mean(edge_emb**2)``, backward into the encoder's parameters (what meta-training runs).
  Median over ``--repeats`` runs after 2 warm-up runs; ``torch.set_num_threads`` is left at its default unless
  ``--threads`` is given (on a busy shared CPU, OpenMP threads spinning against other processes make timings
  swing by 10x; one thread is then the steadier measure).
* ``peak_mb`` (``peak_fwd_mb``): peak of the bytes held by tensors allocated during one forward+backward (one
  forward under no_grad), above what was live before it. On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: the
  allocation / free events of the CPU allocator recorded by ``torch.profiler`` (``profile_memory=True``), summed in
  time order and maximised: exact for tensor memory, blind to memory the allocator or libraries keep outside
  tensors (process RSS is too coarse to attribute: malloc keeps freed pages). ``None`` when unavailable.
* A run that fails (e.g. out of memory) is recorded with its ``error`` and the benchmark goes on.

Targets (from the issue): DNG at least 3x faster than NG-GNN in forward+backward on ``cifar10-conv``, and no
encoder worse than linear in the number of edges (slope <= ~1.1).

    python -m benchmarks.encoders [--encoders dng ng-gnn] [--repeats 10] [--quick] [--device cuda] [--threads N]
                                  [--out DIR]
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, markdown_table, time_ms, write_json
from l2o.encoders import ENCODERS, build_encoder
from l2o.graph import NeuralGraph
from tasks import get_task
from tasks.registry import Task, conv_task, mlp_task
from tasks.devices import device_or_exit

HIDDEN, DEPTH, KMAX, FEATURES = 64, 4, 3, 2
SWEEP_WIDTHS = (16, 32, 64, 128)
QUICK_SWEEP_WIDTHS = (16, 32)


def main_tasks(quick: bool) -> list[Task]:
    tasks = [get_task("fmnist-conv"), get_task("cifar10-conv")]
    if not quick:
        tasks += [conv_task("cifar10", (128,) * 5, name="cifar10-conv-w128-d5"),
                  mlp_task("mnist", (1024, 192), name="mnist-mlp-1M")]
    return tasks


def sweep_tasks(quick: bool) -> list[Task]:
    return [get_task(f"cifar10-conv-w{w}") for w in (QUICK_SWEEP_WIDTHS if quick else SWEEP_WIDTHS)]


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Peak tensor memory (MiB) allocated by ``fn()`` above what was live before (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        # Raw events carry the signed byte count of every allocation (+) and free (-) in time order.
        events = [e for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
        events.sort(key=lambda e: e.start_ns())
        live = list(itertools.accumulate(e.nbytes() for e in events))
        return max([0, *live]) / 2**20
    except Exception:  # private profiler API changed: report nothing rather than a wrong number
        return None


def bench_one(name: str, task: Task, repeats: int, device: torch.device, sweep: bool) -> dict:
    model = task.make_model(0)
    graph = NeuralGraph.from_module(model, kmax=KMAX).to(device)
    record = {"encoder": name, "graph": task.name, "sweep": sweep, "num_nodes": graph.num_nodes,
              "num_edges": graph.num_edges, "num_params": sum(p.numel() for p in model.parameters()),
              "hidden": HIDDEN, "depth": DEPTH, "kmax": KMAX, "device": str(device)}
    try:
        torch.manual_seed(0)
        enc = build_encoder(name, FEATURES, KMAX * KMAX * FEATURES, hidden=HIDDEN, depth=DEPTH, kmax=KMAX).to(device)
        gen = torch.Generator().manual_seed(0)
        # Realistic sparsity: linear edges fill only the kernel centre, 3x3 convs fill all nine slots.
        node, edge = graph.scatter_flat(torch.randn(graph.num_param_elements, FEATURES, generator=gen).to(device))
        edge = edge.reshape(graph.num_edges, -1)
        record["encoder_params"] = sum(p.numel() for p in enc.parameters())

        def fwd():
            with torch.no_grad():
                enc(graph, node, edge)

        def fwd_bwd():
            enc.zero_grad(set_to_none=True)
            x, e = enc(graph, node, edge)
            (x.square().mean() + e.square().mean()).backward()

        record["fwd_ms"] = time_ms(fwd, repeats)
        record["fwd_bwd_ms"] = time_ms(fwd_bwd, repeats)
        record["peak_fwd_mb"] = peak_memory_mb(fwd, device)
        enc.zero_grad(set_to_none=True)
        record["peak_mb"] = peak_memory_mb(fwd_bwd, device)
    except Exception as exc:  # noqa: BLE001 - one failing (encoder, graph) must not stop the table
        record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        traceback.print_exc(file=sys.stderr)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def memory_guard(name: str, task: Task, records: list[dict], device: torch.device) -> dict | None:
    """Skip a measurement whose peak memory, extrapolated linearly in edges from this encoder's largest measured
    graph, would not fit in 60% of the memory available now (an out-of-memory kill would lose the whole table)."""
    import psutil

    done = [r for r in records if r["encoder"] == name and r.get("peak_mb") and "error" not in r]
    if not done or device.type != "cpu":
        return None
    ref = max(done, key=lambda r: r["num_edges"])
    graph = NeuralGraph.from_module(task.make_model(0), kmax=KMAX)
    need_mb = ref["peak_mb"] * graph.num_edges / ref["num_edges"]
    avail_mb = psutil.virtual_memory().available / 2**20
    if need_mb < 0.6 * avail_mb:
        return None
    return {"encoder": name, "graph": task.name, "sweep": False, "num_nodes": graph.num_nodes,
            "num_edges": graph.num_edges, "hidden": HIDDEN, "depth": DEPTH, "kmax": KMAX, "device": str(device),
            "error": f"skipped: estimated peak {need_mb / 1024:.1f} GiB (linear in edges from {ref['graph']}) exceeds "
                     f"60% of the {avail_mb / 1024:.1f} GiB available"}


def loglog_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x) (``None`` with fewer than two usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else None


def slopes(sweep_records: list[dict], encoders: list[str]) -> list[dict]:
    out = []
    for name in encoders:
        recs = [r for r in sweep_records if r["encoder"] == name and "error" not in r]
        out.append({"encoder": name, "record": "slope", "sweep": True,
                    "graphs": [r["graph"] for r in recs], "num_points": len(recs),
                    "slope_fwd_bwd": loglog_slope([(r["num_edges"], r["fwd_bwd_ms"]) for r in recs]),
                    "slope_fwd": loglog_slope([(r["num_edges"], r["fwd_ms"]) for r in recs]),
                    "hidden": HIDDEN, "depth": DEPTH})
    return out


def dng_ratio(records: list[dict]) -> str:
    """The issue's target: NG-GNN fwd+bwd time / DNG fwd+bwd time on cifar10-conv (>= 3x)."""
    def t(name):
        r = [r for r in records if r["encoder"] == name and r["graph"] == "cifar10-conv" and "error" not in r]
        return r[0]["fwd_bwd_ms"] if r else None

    gnn, dng = t("ng-gnn"), t("dng")
    if gnn is None or dng is None:
        missing = [n for n, v in (("ng-gnn", gnn), ("dng", dng)) if v is None]
        return f"DNG vs NG-GNN fwd+bwd on cifar10-conv: n/a (no result for {', '.join(missing)})"
    ratio = gnn / dng
    verdict = "meets" if ratio >= 3 else "misses"
    return (f"DNG vs NG-GNN fwd+bwd on cifar10-conv: NG-GNN {gnn:.3g} ms / DNG {dng:.3g} ms = {ratio:.2f}x "
            f"({verdict} the >= 3x target)")


def report(records: list[dict], slope_records: list[dict], info: dict, quick: bool) -> str:
    cols = ["encoder", "graph", "num_edges", "fwd_ms", "fwd_bwd_ms", "peak_fwd_mb", "peak_mb"]
    main = [r for r in records if not r["sweep"]]
    sweep = [r for r in records if r["sweep"]]
    errors = [r for r in records if "error" in r]
    slope_rows = [{**s, "slope_fwd_bwd": s["slope_fwd_bwd"] if s["slope_fwd_bwd"] is not None else "n/a",
                   "slope_fwd": s["slope_fwd"] if s["slope_fwd"] is not None else "n/a",
                   "verdict": ("n/a" if s["slope_fwd_bwd"] is None else
                               "ok" if s["slope_fwd_bwd"] <= 1.1 else "worse than linear")} for s in slope_records]
    lines = [
        "# Encoder benchmark" + (" (--quick: partial)" if quick else ""),
        "",
        f"hidden {HIDDEN}, depth {DEPTH}, kmax {KMAX}, node_in {FEATURES}, edge_in {KMAX * KMAX * FEATURES}; "
        f"device {info['device']}, {info['processor']}, {info['threads']} threads, torch {info['torch']}"
        + (f", {info['cuda']}" if info.get("cuda") else "") + ".",
        "Times: median ms (fwd under no_grad; fwd+bwd into the encoder parameters). Memory: peak MiB of tensors "
        "allocated during the call (CUDA allocator stats, or torch.profiler allocation events on CPU).",
        "",
        "## Graphs",
        "",
        markdown_table(main, cols),
        "",
        "## " + dng_ratio(records),
        "",
        "## Linear-scaling sweep (cifar10-conv-w{16,32,64,128})",
        "",
        markdown_table(sweep, ["encoder", "graph", "num_edges", "fwd_ms", "fwd_bwd_ms", "peak_mb"]),
        "",
        "Log-log slope of time against edges (target <= ~1.1: no worse than linear; small graphs are dominated by "
        "per-call overhead, which pulls the slope below 1):",
        "",
        markdown_table(slope_rows, ["encoder", "num_points", "slope_fwd", "slope_fwd_bwd", "verdict"]),
    ]
    if errors:
        lines += ["", "## Failed runs", "", markdown_table(errors, ["encoder", "graph", "num_edges", "error"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=None, help=f"subset of {sorted(ENCODERS)} (default: all)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true",
                    help="only fmnist-conv, cifar10-conv and the two smallest sweep widths (a smoke test)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: left as is; set 1 on a shared, busy CPU)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for encoders.json and encoders.md (encoders_cuda.* on a GPU)")
    args = ap.parse_args(argv)
    encoders = args.encoders or sorted(ENCODERS)
    unknown = [n for n in encoders if n not in ENCODERS]
    if unknown:
        ap.error(f"unknown encoders {unknown}; registered: {sorted(ENCODERS)}")
    device = device_or_exit(ap, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = {**machine(), "device": str(device)}

    records = []
    for sweep, tasks in ((False, main_tasks(args.quick)), (True, sweep_tasks(args.quick))):
        for task in tasks:
            for name in encoders:
                skip = memory_guard(name, task, records, device)
                rec = bench_one(name, task, args.repeats, device, sweep) if skip is None else skip
                rec.update(info)
                rec["record"] = "sweep" if sweep else "main"
                records.append(rec)
                print(f"{name:8s} {task.name:22s} E={rec['num_edges']:8d} "
                      + (f"fwd {rec['fwd_ms']:.3g} ms  fwd+bwd {rec['fwd_bwd_ms']:.3g} ms  peak {rec['peak_mb']} MiB"
                         if "error" not in rec else f"ERROR {rec['error']}"), file=sys.stderr, flush=True)
    slope_records = [{**s, **info} for s in slopes([r for r in records if r["sweep"]], encoders)]

    md = report(records, slope_records, info, args.quick)
    print(md)
    suffix = "" if device.type == "cpu" else f"_{device.type}"  # a GPU run does not replace the CPU tables
    write_json(f"encoders{suffix}.json", records + slope_records, args.out)
    (args.out / f"encoders{suffix}.md").write_text(md)
    print(f"-> {args.out / 'encoders.json'}, {args.out / 'encoders.md'}")


if __name__ == "__main__":
    main()
