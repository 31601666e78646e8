"""Per-step cost of each optimizer next to the model's own forward+backward (batch 128).

For ``fmnist-conv``, ``cifar10-conv``, a ~1M-parameter CIFAR CNN, the MNIST MLP 784-256-128-10 and a CIFAR
ResNet-18 (11.2M parameters, BatchNorm, 1x1 projection shortcuts): forward+backward time, ``torch.optim.Adam.step()``,
and ``NeuralGraphOptimizer.step()`` for every learned family as shipped (``meta_train/configs/<family>.toml``:
relative steps, bounded multiplier; freshly initialised weights, since the cost does not depend on them) and for the
shipped default itself (``NeuralGraphOptimizer(model)``), plus the optimizer state in floats per parameter. Targets
on the 2-core CPU: a graph optimizer's step at most half of forward+backward on ``cifar10-conv``, and at most 10
floats of state per parameter.

On CUDA (``--device cuda``) the table also has the optimizer's extra peak GPU memory per parameter (peak during its
first three ``step()`` calls above the memory held before them, state included, divided by the parameter count: the
second step records the update as a CUDA graph, whose memory pool is then held). ``--eager-too`` adds a row per
optimizer with ``cuda_graph=False`` (every step launched from Python), to compare in one run.

    python -m benchmarks.step_overhead [--repeats 10] [--families ng-gnn dng ...] [--tasks cifar10-conv ...] [--device cuda]
        [--checkpoints LABEL=PATH ...] [--chunk-rows N] [--eager-too] [--matmul-precision high]

``--chunk-rows N`` times the step with the per-element MLPs evaluated ``N`` rows at a time on that device
(``l2o.runtime.CPU_CHUNK_ROWS`` / ``CUDA_CHUNK_ROWS``) instead of the shipped size: on a GPU fewer, larger chunks mean
fewer kernel launches and more memory (``results/benchmarks/step_overhead_candidates/chunk_rows_cuda.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import l2o.runtime
from benchmarks.common import RESULTS, machine, markdown_table, model_fwd_bwd, time_ms, write_json
from l2o import NeuralGraphOptimizer
from l2o.optim import LEARNED_FAMILIES, build_optimizer
from meta_train.config import load_config
from tasks import get_task
from tasks.models import ResNet18
from tasks.registry import Task, conv_task, mlp_task
from tasks.devices import device_or_exit

CONFIGS = Path(__file__).resolve().parent.parent / "meta_train" / "configs"  # <family>.toml: as shipped
# families whose recipe lives in a config not named after them; "reference" is the published NG-GNN (8 x 64)
CONFIG_FILES = {"tensor-lstm": "reference-tensor-lstm.toml", "reference ng-gnn 8x64": "reference.toml"}
TASKS = {"fmnist-conv": lambda: get_task("fmnist-conv"), "cifar10-conv": lambda: get_task("cifar10-conv"),
         "cifar10-conv-1M": lambda: conv_task("cifar10", (64, 128, 256, 256), name="cifar10-conv-1M"),
         "mnist-mlp-256-128": lambda: mlp_task("mnist", (256, 128)),
         "cifar10-resnet18": lambda: Task("cifar10-resnet18", "cifar10", ResNet18, (3, 32, 32))}


def state_floats(opt: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    n = sum(p.numel() for p in model.parameters())
    floats = sum(v.numel() for st in opt.state.values() for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0)
    return floats / n


def peak_extra_bytes(fn, device: torch.device) -> float | None:
    """Peak CUDA memory during ``fn()`` above what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated() - before)


def bench_task(name: str, families: list[str], repeats: int, device: torch.device = torch.device("cpu"),
               checkpoints: dict[str, Path] | None = None, eager_too: bool = False) -> list[dict]:
    """``families``: as shipped (``meta_train/configs``); ``checkpoints``: label -> any checkpoint file, timed too;
    ``eager_too``: also every optimizer with ``cuda_graph=False`` (label + " (eager)")."""
    task = TASKS[name]()
    model = task.make_model(0).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    fwd_bwd = model_fwd_bwd(task, model, device=device)
    fb = time_ms(fwd_bwd, repeats)
    fwd_bwd()
    snapshot = [p.detach().clone() for p in model.parameters()]

    def restore():
        with torch.no_grad():
            for p, s in zip(model.parameters(), snapshot):
                p.copy_(s)

    records = []
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    records.append({"task": name, "optimizer": "adam (torch)", "fwd_bwd_ms": fb, "step_ms": time_ms(adam.step, repeats),
                    "state_floats_per_param": state_floats(adam, model)})
    restore()
    candidates = [(fam, lambda graphed, fam=fam: NeuralGraphOptimizer(
        model, optimizer=build_optimizer(load_config(CONFIGS / CONFIG_FILES.get(fam, f"{fam}.toml")).optimizer),
        cuda_graph=graphed)) for fam in families]
    candidates += [(label, lambda graphed, path=path: NeuralGraphOptimizer(model, checkpoint=path, cuda_graph=graphed))
                   for label, path in (checkpoints or {}).items()]
    candidates.append(("shipped default", lambda graphed: NeuralGraphOptimizer(model, cuda_graph=graphed)))
    runs = [(label, make, None) for label, make in candidates]
    if eager_too and device.type == "cuda":
        runs += [(f"{label} (eager)", make, False) for label, make in candidates]
    for label, make, graphed in runs:
        torch.manual_seed(0)
        opt = make(graphed)
        # the first step creates the state, the second records the CUDA graph: both counted
        extra = peak_extra_bytes(lambda: [opt.step() for _ in range(3)], device)
        ms = time_ms(opt.step, repeats)
        records.append({"task": name, "optimizer": label, "fwd_bwd_ms": fb, "step_ms": ms,
                        "state_floats_per_param": state_floats(opt, model),
                        "extra_peak_bytes_per_param": None if extra is None else extra / n_params})
        del opt
        restore()
    for r in records:
        r["step_over_fwd_bwd"] = r["step_ms"] / fb
        r["params"] = n_params
        r["device"] = str(device)
        r["chunk_rows"] = l2o.runtime.CPU_CHUNK_ROWS if device.type == "cpu" else l2o.runtime.CUDA_CHUNK_ROWS
        r["matmul_precision"] = torch.get_float32_matmul_precision()
        r.update(machine())
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--families", nargs="*", default=[*LEARNED_FAMILIES, "reference ng-gnn 8x64"],
                    help="learned families (meta_train/configs/<family>.toml) and 'reference ng-gnn 8x64'")
    ap.add_argument("--tasks", nargs="*", default=None,
                    help="default: every task; on the CPU all but cifar10-resnet18 (about 7 GB and minutes per "
                         "optimizer there; name it to include it)")
    ap.add_argument("--checkpoints", nargs="*", default=[], metavar="LABEL=PATH",
                    help="also time these checkpoint files (e.g. candidates for the default)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    ap.add_argument("--eager-too", action="store_true",
                    help="on CUDA, also time every optimizer with cuda_graph=False")
    ap.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                    help="rows per chunk of the per-element MLPs on --device (default: as shipped)")
    ap.add_argument("--matmul-precision", choices=["highest", "high", "medium"], default=None,
                    help="torch.set_float32_matmul_precision for the whole run, model included (high: TF32 on "
                         "CUDA); default: torch's (highest)")
    args = ap.parse_args(argv)
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    device = device_or_exit(ap, args.device)
    if args.chunk_rows is not None:
        if args.chunk_rows < 1:
            ap.error(f"--chunk-rows {args.chunk_rows}: expected a positive number of rows")
        setattr(l2o.runtime, "CPU_CHUNK_ROWS" if device.type == "cpu" else "CUDA_CHUNK_ROWS", args.chunk_rows)
    if args.tasks is None:
        args.tasks = [t for t in TASKS if device.type == "cuda" or t != "cifar10-resnet18"]
    checkpoints = {}
    for item in args.checkpoints:
        label, sep, path = item.partition("=")
        if not sep or not label or not Path(path).is_file():
            ap.error(f"--checkpoints {item!r}: expected LABEL=PATH of an existing checkpoint file")
        checkpoints[label] = Path(path)
    records = []
    for name in args.tasks:
        records += bench_task(name, args.families, args.repeats, device, checkpoints, args.eager_too)
        print(f"done {name}", file=sys.stderr)
    cols = ["task", "params", "optimizer", "fwd_bwd_ms", "step_ms", "step_over_fwd_bwd", "state_floats_per_param"]
    if device.type == "cuda":
        cols.append("extra_peak_bytes_per_param")
    table = markdown_table(records, cols)
    print(table)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_json(f"step_overhead{suffix}.json", records, args.out)
    md = (args.out or RESULTS) / f"step_overhead{suffix}.md"
    md.write_text(f"# Optimizer step overhead (batch 128, {records[0]['cuda'] or 'CPU'})\n\n"
                  "Produced by `python -m benchmarks.step_overhead`. Targets: a graph optimizer's step <= 0.5 x "
                  "forward+backward on cifar10-conv; state <= 10 floats per parameter.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
