"""Timing helpers shared by the benchmark scripts (median over repeats after warm-up)."""
from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from l2o.runtime import tune_cpu_allocator

tune_cpu_allocator()  # every benchmark measures with glibc keeping large blocks (see l2o/runtime.py)

RESULTS = Path(__file__).resolve().parent.parent / "results" / "benchmarks"


def time_ms(fn: Callable[[], object], repeats: int = 10, warmup: int = 2, budget_s: float = 30.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (synchronising CUDA when used).

    Slow calls get fewer runs: after the first warm-up, repeats are capped so the measurement takes about
    ``budget_s`` seconds (at least one timed run), so a 1M-edge graph does not hold the machine for minutes.
    """
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first * (warmup + repeats) > budget_s:
        warmup, repeats = 0, max(1, int(budget_s / max(first, 1e-9)) - 1)
    for _ in range(max(0, warmup - 1)):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def block_ms(fn: Callable[[], object], steps: int, device: torch.device | str = "cpu") -> float:
    """Milliseconds per call of ``steps`` calls of ``fn()`` in a row: process CPU time on the CPU (a busy machine
    shifts alternating settings alike), wall time between synchronisations on CUDA."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) / steps * 1e3
    t0 = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - t0) / steps * 1e3


def model_fwd_bwd(task, model: torch.nn.Module, batch: int = 128, device="cpu") -> Callable[[], None]:
    """A closure running forward+backward of ``model`` on one random batch of ``task``'s input shape."""
    x = torch.randn(batch, *task.input_shape, device=device)
    y = torch.randint(0, task.num_classes, (batch,), device=device)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()

    return fwd_bwd


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_json(name: str, records: list[dict], out: Path | None = None) -> Path:
    path = (out or RESULTS) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")
    return path


def markdown_table(records: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in records]
    return "\n".join(lines)
