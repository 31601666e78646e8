"""Peak memory of one optimizer step on the CPU: the most bytes of tensor storage created by ``step()`` and alive at
once, per parameter of the model.

CUDA has an allocator counter for this (``benchmarks.step_overhead --device cuda`` reports it); the CPU has none, so
this script counts instead: a ``TorchDispatchMode`` sees every tensor an operator returns, adds the bytes of each new
storage and subtracts them when the tensor is freed. Views and in-place results (no new storage) add nothing. The
count covers the step after the one that created the optimizer state (the state that persists is not "extra"), and
comes from the tensor storages alone (no allocator overhead), so it is a lower bound of what the process needs.

    python -m benchmarks.step_memory [--tasks cifar10-conv cifar10-resnet18 ...] [--optimizers default ff ...]

Writes ``results/benchmarks/step_memory.{json,md}``.
"""
from __future__ import annotations

import argparse
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import RESULTS, machine, markdown_table, model_fwd_bwd, write_json
from benchmarks.profile_step import make_optimizer
from benchmarks.step_overhead import TASKS, state_floats


class LiveStorageCounter(TorchDispatchMode):
    """Bytes of the tensor storages that operators created while active and that are still alive; ``peak`` is the
    most of them at any moment."""

    def __init__(self, where: bool = False):
        super().__init__()
        self.live, self.peak, self._bytes = 0, 0, {}
        # where=True: keep, at each new peak, the operator and the shapes of the live storages (for --where)
        self.where, self._shape, self.at_peak = where, {}, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._bytes:  # a view or an in-place result: no new memory
                continue
            self._bytes[key] = size
            self.live += size
            if self.where:
                self._shape[key] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
            if self.live > self.peak:
                self.peak = self.live
                if self.where:
                    self.at_peak = (str(func), [(self._bytes[k], *self._shape[k]) for k in self._bytes])
            weakref.finalize(t, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.live -= self._bytes.pop(key, 0)
        self._shape.pop(key, None)


def measure(task_name: str, optimizer: str, where: bool = False, features: str = "held") -> dict:
    """``features``: "held" (the CPU step below ``l2o.runtime.CPU_STREAM_ROWS``) or "streamed" (a graph
    optimizer's per-element features made chunk by chunk, as on a GPU)."""
    import l2o.runtime

    shipped = l2o.runtime.CPU_STREAM_ROWS
    l2o.runtime.CPU_STREAM_ROWS = 0 if features == "streamed" else 1 << 62
    try:
        return _measure(task_name, optimizer, where, features)
    finally:
        l2o.runtime.CPU_STREAM_ROWS = shipped


def _measure(task_name: str, optimizer: str, where: bool, features: str) -> dict:
    task = TASKS[task_name]()
    torch.manual_seed(0)
    model = task.make_model(0)
    n = sum(p.numel() for p in model.parameters())
    fwd_bwd = model_fwd_bwd(task, model)
    fwd_bwd()
    opt = make_optimizer(model, optimizer)
    opt.step()  # creates the state
    fwd_bwd()
    counter = LiveStorageCounter(where)
    with counter:
        opt.step()
    if where:
        op, live = counter.at_peak
        print(f"{task_name} / {optimizer} / features {features}: peak {counter.peak / n:.0f} bytes/param at {op}; "
              "live storages:")
        for size, shape, dtype in sorted(live, reverse=True)[:12]:
            print(f"  {size / n:7.1f} bytes/param  {dtype} {list(shape)}")
    return {"task": task_name, "params": n, "optimizer": optimizer, "features": features,
            "peak_bytes_per_param": counter.peak / n,
            "state_floats_per_param": state_floats(opt, model), **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=["cifar10-conv", "mnist-mlp-256-128", "cifar10-resnet18"])
    ap.add_argument("--optimizers", nargs="*", default=["default", "ff"],
                    help="default (the shipped one) and/or learned families as shipped")
    ap.add_argument("--where", action="store_true", help="print the operator and the live tensors at each peak")
    ap.add_argument("--features", nargs="*", default=["held", "streamed"], choices=["held", "streamed"],
                    help="a graph optimizer's per-element features held as one [P, F] block (the CPU step) and/or "
                         "streamed chunk by chunk (the GPU step; l2o.runtime.stream_features)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    records = [measure(t, o, args.where, f) for t in args.tasks for o in args.optimizers for f in args.features
               if f == "held" or o != "ff"]  # FF has no graph encoder: nothing to stream
    table = markdown_table(records, ["task", "params", "optimizer", "features", "peak_bytes_per_param",
                                     "state_floats_per_param"])
    print(table)
    write_json("step_memory.json", records, args.out)
    (args.out or RESULTS).joinpath("step_memory.md").write_text(
        "# Peak memory of one optimizer step on the CPU (bytes of live tensor storage per parameter)\n\n"
        "Produced by `python -m benchmarks.step_memory` (see its docstring for what is counted). The optimizer state "
        "itself (`state_floats_per_param`, 4 bytes each) persists between steps and is not counted; the new state a "
        "step builds is. `features`: a graph optimizer's per-element features `[P, F]` held as one block (the CPU "
        "step below `l2o.runtime.CPU_STREAM_ROWS` elements) or made chunk by chunk twice (the step on a GPU and on "
        "very large CPU models).\n\n" + table + "\n")


if __name__ == "__main__":
    main()
