"""Settings and helpers that make large workloads run at the speed their arithmetic allows (glibc allocator
tuning; per-element MLPs in cache-sized row chunks; constants made once per device)."""
from __future__ import annotations

import ctypes
import functools
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


@functools.lru_cache(maxsize=1024)  # a few entries per architecture
def device_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, made once: a fresh one would be copied from the host on every step,
    and a host-to-device copy cannot be recorded in a CUDA graph (``l2o.optim.cuda_graph``). Never write to it."""
    with torch.inference_mode(False):  # a cached inference tensor could not be saved for a later backward
        return torch.tensor(values, dtype=dtype, device=device)


# Rows per chunk of a per-element MLP evaluated without autograd (the optimizer step). On the CPU a chunk's
# [rows, hidden] temporaries stay in the core's cache (8192 x 64 floats = 2 MiB, its L2) instead of streaming [P, hidden]
# tensors through memory once per layer; on a GPU chunks only bound the peak memory, so they are much larger: the step
# there is launch-bound, and 2^19 rows took 13-21 % off a ResNet-18 step against 2^18 for at most +14 bytes per
# parameter, with nothing gained past it (results/benchmarks/step_overhead_candidates/chunk_rows_cuda.md, H200).
CPU_CHUNK_ROWS = 8192
CUDA_CHUNK_ROWS = 1 << 19


# From this many elements on, the CPU step of a graph optimizer makes its per-element features twice, chunk by chunk
# (for the encoder's input projection, then for the head), instead of holding them as one [P, F] block: 72 bytes per
# parameter, the largest part of the step's peak on a conv net, against +25-50 % of the step's CPU time
# (recomputed log/sign features; cifar10-conv-1M 0.56 -> 0.71-0.85 s, one thread). On a GPU it streams always:
# there the recomputation is a few memory-bound kernels and memory is what is short.
CPU_STREAM_ROWS = 1 << 24


def stream_features(num_rows: int, device: torch.device) -> bool:
    """Whether the optimizer step streams a graph optimizer's ``[num_rows, F]`` features (see ``CPU_STREAM_ROWS``)."""
    return torch.device(device).type != "cpu" or num_rows >= CPU_STREAM_ROWS


def chunk_size(device: torch.device) -> int:
    """Rows per chunk on ``device``: ``CPU_CHUNK_ROWS`` or ``CUDA_CHUNK_ROWS`` (read at call time)."""
    return CPU_CHUNK_ROWS if torch.device(device).type == "cpu" else CUDA_CHUNK_ROWS


def row_chunks(num_rows: int, device: torch.device) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]`` covering ``range(num_rows)`` in order, in chunks sized for ``device`` (see
    ``CPU_CHUNK_ROWS``); one chunk when gradients are recorded (autograd would keep every chunk's activations)."""
    size = chunk_size(device)
    if torch.is_grad_enabled() or num_rows <= size:
        return [(0, num_rows)]
    return [(r0, min(r0 + size, num_rows)) for r0 in range(0, num_rows, size)]


class RowSource:
    """A ``[P, ...]`` per-element input of :func:`per_row_chunks` that is made one row range at a time and never held
    at full size: ``rows(r0, r1)`` is a fresh ``[r1 - r0, ...]`` tensor. Subclasses say how."""

    def __init__(self, num_rows: int, trailing: tuple[int, ...], device: torch.device):
        self.shape, self.device = torch.Size((num_rows, *trailing)), torch.device(device)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        raise NotImplementedError

    def materialize(self) -> torch.Tensor:
        """All rows as one tensor (in chunks, so the temporaries of making them stay chunk-sized)."""
        return per_row_chunks(lambda x: x, self)


class GatheredRows(RowSource):
    """``table[index]`` (``table [R, D]``, ``index [P]``) made one row range at a time: an edge embedding shared by
    the 9 entries of its 3x3 kernel is stored once, not 9 times."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        super().__init__(index.shape[0], tuple(table.shape[1:]), table.device)
        self.table, self.index = table, index

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self.table.index_select(0, self.index[r0:r1])


class ProjectedRows(RowSource):
    """``cat(tables)[index] @ weight.T`` (``tables``: ``[R_k, d]`` tensors indexed as if concatenated, ``index
    [P]``, ``weight [D, d]``) made one row range at a time, without the concatenation or the projected ``[R, D]``
    table: a range whose indices run consecutively through one table is projected from a view of it (the rows of a
    linear weight are its edges in order); other ranges are gathered first. The projection costs ``P d D``
    multiply-adds instead of ``R d D``: the form for networks with about one element per table row (MLPs), where the
    projected table would be one more ``[R, D]`` block and pass; kernel networks repeat each edge's row once per
    kernel entry and project the table instead.

    ``plans``: a dict kept with the (static) index, e.g. ``NeuralGraph.cached``; each range's layout is worked out
    once on the host, on the first step, and reused (no host copy in later steps, which may be CUDA graphs)."""

    def __init__(self, tables: list[torch.Tensor], index: torch.Tensor, weight: torch.Tensor, plans: dict):
        super().__init__(index.shape[0], (weight.shape[0],), weight.device)
        self.tables, self.index, self.weight, self._plans = list(tables), index, weight, plans

    def _plan(self, r0: int, r1: int) -> tuple:
        """``("view", k, start)`` when rows ``r0:r1`` are rows ``start ..`` of table ``k`` in order, else
        ``("gather", [(k, positions [n_k], local rows [n_k]), ...])``."""
        if (r0, r1) not in self._plans:
            idx = self.index[r0:r1].cpu()
            bounds = torch.tensor([t.shape[0] for t in self.tables]).cumsum(0)
            table = torch.searchsorted(bounds, idx, right=True)
            local = idx - torch.cat([bounds.new_zeros(1), bounds])[table]
            k0 = int(table[0]) if len(idx) else 0
            if len(idx) and bool((table == k0).all()) and bool((local == local[0] + torch.arange(len(idx))).all()):
                self._plans[(r0, r1)] = ("view", k0, int(local[0]))
            else:
                dev = self.index.device
                parts = [(k, (table == k).nonzero().squeeze(1).to(dev), local[table == k].to(dev))
                         for k in range(len(self.tables)) if bool((table == k).any())]
                self._plans[(r0, r1)] = ("gather", parts)
        return self._plans[(r0, r1)]

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        plan = self._plan(r0, r1)
        if plan[0] == "view":
            _, k, start = plan
            x = self.tables[k][start:start + r1 - r0]
        else:
            x = self.tables[0].new_empty(r1 - r0, self.tables[0].shape[1])
            for k, positions, local in plan[1]:
                x.index_copy_(0, positions, self.tables[k].index_select(0, local))
        return torch.nn.functional.linear(x, self.weight)


class ComputedRows(RowSource):
    """Rows computed on demand by ``fn(r0, r1) -> [r1 - r0, *trailing]`` (for example features from the rows of the
    optimizer state: the ``[P, F]`` block of a whole step never exists)."""

    def __init__(self, fn, num_rows: int, trailing: tuple[int, ...], device: torch.device):
        super().__init__(num_rows, trailing, device)
        self._fn = fn

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        return self._fn(r0, r1)


def as_tensor(t: torch.Tensor | RowSource) -> torch.Tensor:
    """A tensor for an input that may be a :class:`RowSource` (for consumers that need every row at once)."""
    return t.materialize() if isinstance(t, RowSource) else t


def _rows(t: torch.Tensor | RowSource | None, r0: int, r1: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.rows(r0, r1) if isinstance(t, RowSource) else t[r0:r1]


def per_row_chunks(fn, first: torch.Tensor | RowSource, *per_row: torch.Tensor | RowSource | None) -> torch.Tensor:
    """``fn(first [n, ...], *per_row) -> [n, ...]``, a row-wise map, applied to all ``P`` rows; ``per_row``: more
    ``[P, ...]`` inputs (tensors, :class:`RowSource` or None), sliced with the rows.

    Without autograd (the optimizer step) the rows go through in cache-sized chunks (``row_chunks``): every
    ``[n, hidden]`` temporary then stays in cache and is reused instead of being allocated at ``[P, hidden]`` once
    per layer, and a :class:`RowSource` input is only ever made a chunk at a time. The same arithmetic on every row
    either way."""
    num_rows = first.shape[0]
    chunks = row_chunks(num_rows, first.device)
    if len(chunks) == 1:
        return fn(*(_rows(t, 0, num_rows) for t in (first, *per_row)))
    out = None
    for r0, r1 in chunks:
        part = fn(*(_rows(t, r0, r1) for t in (first, *per_row)))
        if out is None:
            out = part.new_empty(num_rows, *part.shape[1:])
        out[r0:r1] = part
    return out
