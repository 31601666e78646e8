"""Per-step cost of each optimizer next to the model's own forward+backward (batch 128).

For ``fmnist-conv``, ``cifar10-conv`` and a ~1M-parameter CIFAR CNN: forward+backward time, ``torch.optim.Adam.step()``,
and ``NeuralGraphOptimizer.step()`` for every learned family as shipped (``meta_train/configs/<family>.toml``:
relative steps, bounded multiplier; freshly initialised weights, since the cost does not depend on them) and for the
shipped default itself (``NeuralGraphOptimizer(model)``), plus the optimizer state in floats per parameter. Targets
on the 2-core CPU: a graph optimizer's step at most half of forward+backward on ``cifar10-conv``, and at most 10
floats of state per parameter.

    python benchmarks/step_overhead.py [--repeats 10] [--families ng-gnn dng ...] [--tasks cifar10-conv ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, markdown_table, model_fwd_bwd, time_ms, write_json  # noqa: E402
from l2o import NeuralGraphOptimizer  # noqa: E402
from l2o.optim import LEARNED_FAMILIES, build_optimizer  # noqa: E402
from meta_train.config import load_config  # noqa: E402
from tasks import get_task  # noqa: E402
from tasks.registry import conv_task  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "meta_train" / "configs"  # <family>.toml: as shipped
TASKS = {"fmnist-conv": lambda: get_task("fmnist-conv"), "cifar10-conv": lambda: get_task("cifar10-conv"),
         "cifar10-conv-1M": lambda: conv_task("cifar10", (64, 128, 256, 256), name="cifar10-conv-1M")}


def state_floats(opt: torch.optim.Optimizer, model: torch.nn.Module) -> float:
    n = sum(p.numel() for p in model.parameters())
    floats = sum(v.numel() for st in opt.state.values() for k, v in st.items() if torch.is_tensor(v) and v.dim() > 0)
    return floats / n


def bench_task(name: str, families: list[str], repeats: int) -> list[dict]:
    task = TASKS[name]()
    model = task.make_model(0)
    fwd_bwd = model_fwd_bwd(task, model)
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
    candidates = [(fam, lambda fam=fam: NeuralGraphOptimizer(
        model, optimizer=build_optimizer(load_config(CONFIGS / f"{fam}.toml").optimizer))) for fam in families]
    candidates.append(("shipped default", lambda: NeuralGraphOptimizer(model)))
    for label, make in candidates:
        torch.manual_seed(0)
        opt = make()
        ms = time_ms(opt.step, repeats)
        records.append({"task": name, "optimizer": label, "fwd_bwd_ms": fb, "step_ms": ms,
                        "state_floats_per_param": state_floats(opt, model)})
        restore()
    for r in records:
        r["step_over_fwd_bwd"] = r["step_ms"] / fb
        r.update(machine())
    return records


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--families", nargs="*", default=list(LEARNED_FAMILIES))
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    records = []
    for name in args.tasks:
        records += bench_task(name, args.families, args.repeats)
        print(f"done {name}", file=sys.stderr)
    cols = ["task", "optimizer", "fwd_bwd_ms", "step_ms", "step_over_fwd_bwd", "state_floats_per_param"]
    table = markdown_table(records, cols)
    print(table)
    write_json("step_overhead.json", records, args.out)
    md = (args.out or RESULTS) / "step_overhead.md"
    md.write_text("# Optimizer step overhead (batch 128, CPU)\n\n"
                  "Produced by `python benchmarks/step_overhead.py`. Targets: a graph optimizer's step <= 0.5 x "
                  "forward+backward on cifar10-conv; state <= 10 floats per parameter.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
