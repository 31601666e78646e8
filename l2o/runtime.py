"""Settings and helpers that make large CPU workloads run at the speed their arithmetic allows (glibc allocator
tuning; per-element MLPs in cache-sized row chunks)."""
from __future__ import annotations

import ctypes
import sys

import torch

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS after every step.

    By default glibc serves blocks above a (dynamic, at most 32 MiB) threshold with fresh ``mmap`` pages and unmaps
    them on free, so every step of an encoder on a 100k-edge graph page-faults its activations in again: NG-T's
    forward+backward on a 101k-edge graph took 3.0 s with the default and 1.8 s with these settings (time then grows
    linearly in edges; benchmarks/encoders.py). Called by the CLI, the benchmarks and ``NeuralGraphOptimizer`` (once
    per process; later calls return the first result). A no-op (returns False) off Linux/glibc.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = _mallopt()
    return _TUNED


_TUNED: bool | None = None


def _mallopt() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
        ok &= libc.mallopt(_M_TOP_PAD, 256 * 2**20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


# Rows per chunk of a per-element MLP evaluated without autograd (the optimizer step). On the CPU a chunk's
# [rows, hidden] temporaries stay in the core's cache (8192 x 64 floats = 2 MiB, its L2) instead of streaming [P, hidden]
# tensors through memory once per layer; on a GPU chunks only bound the peak memory, so they are much larger.
CPU_CHUNK_ROWS = 8192
CUDA_CHUNK_ROWS = 1 << 18


def row_chunks(num_rows: int, device: torch.device) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]`` covering ``range(num_rows)`` in order, in chunks sized for ``device`` (see
    ``CPU_CHUNK_ROWS``); one chunk when gradients are recorded (autograd would keep every chunk's activations)."""
    size = CPU_CHUNK_ROWS if device.type == "cpu" else CUDA_CHUNK_ROWS
    if torch.is_grad_enabled() or num_rows <= size:
        return [(0, num_rows)]
    return [(r0, min(r0 + size, num_rows)) for r0 in range(0, num_rows, size)]


class GatheredRows:
    """``table[index]`` (``table [R, D]``, ``index [P]``) made one row range at a time: a per-element input of
    :func:`per_row_chunks` that is never materialised at ``[P, D]`` (an edge embedding shared by the 9 entries of
    its 3x3 kernel is stored once, not 9 times). ``rows(r0, r1)`` is a fresh ``[r1 - r0, D]`` tensor."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        self.table, self.index = table, index

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.index.shape[0], *self.table.shape[1:]))

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self.table.index_select(0, self.index[r0:r1])


def _rows(t: torch.Tensor | GatheredRows | None, r0: int, r1: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.rows(r0, r1) if isinstance(t, GatheredRows) else t[r0:r1]


def per_row_chunks(mlp, feats: torch.Tensor, *per_row: torch.Tensor | GatheredRows | None) -> torch.Tensor:
    """``mlp(feats [n, F], *per_row) -> [n, O]``, a row-wise map, applied to all ``P`` rows; ``per_row``: more
    ``[P, ...]`` inputs (tensors, :class:`GatheredRows` or None), sliced with the rows.

    Without autograd (the optimizer step) the rows go through in cache-sized chunks (``row_chunks``): every
    ``[n, hidden]`` temporary then stays in cache and is reused instead of being allocated at ``[P, hidden]`` once
    per layer. The same arithmetic on every row either way."""
    chunks = row_chunks(feats.shape[0], feats.device)
    if len(chunks) == 1:
        return mlp(feats, *(_rows(t, 0, feats.shape[0]) for t in per_row))
    out = None
    for r0, r1 in chunks:
        part = mlp(feats[r0:r1], *(_rows(t, r0, r1) for t in per_row))
        if out is None:
            out = part.new_empty(feats.shape[0], *part.shape[1:])
        out[r0:r1] = part
    return out
