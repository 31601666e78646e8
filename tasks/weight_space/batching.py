"""Networks of a weight-space data set -> encoder inputs, in batches.

A data set of networks (an INR zoo: one architecture; a CNN zoo: many) is held as a :class:`ParamTable`: one
template module and one single :class:`~l2o.graph.NeuralGraph` per architecture, an architecture id per member
and every member's parameters as one flat row in the *graph's* parameter order (``graph.param_names``), zero
padded to the longest architecture. Splits of one zoo share the templates and graphs (and so the architecture ids).

:class:`Batcher` turns a list of member indices into a :class:`WeightBatch`:

* the batched graph (``NeuralGraph.batch``), cached by the tuple of the members' architecture ids. Either batches
  hold one architecture each (one cached graph per architecture and batch size), or (``mixed=True``, for
  heterogeneous zoos whose architectures have few members each) they mix architectures with a composition fixed
  once per run, members being reshuffled over the slots of their architecture every epoch, so every epoch reuses
  the same cached graphs (:meth:`Batcher.batches`);
* node features ``[N, 1]`` (biases) and edge features ``[E, kmax**2]`` (weights, conv kernels centred in the
  ``kmax x kmax`` slots) from one ``scatter_flat`` of the concatenated, normalised flat rows (optionally a second
  channel of raw values, ``raw_channel``);
* the same rows densely, zero padded ``[B, Pmax]`` (the flattened-weights MLP baseline) and the StatNN statistics
  (precomputed once per table: they do not change under the augmentations used here).

The tables stay on the CPU; a batcher built with ``device`` indexes them there and moves only the batch's rows (and
statistics) to the device, where the normalisation, the scatter onto the (cached, on-device) batched graph and the
model run.

Normalisation (:class:`Normalizer`): every parameter tensor of an architecture is standardised with the mean and
standard deviation of that tensor over the *train* members of that architecture (per-layer statistics, so the
hidden-neuron symmetry is kept: the statistics are invariant to it). Architectures absent from the train split
fall back to the statistics of the tensor position (``k``-th tensor), pooled over all train members.

Nothing here loops over members, nodes or edges in Python; the loops are over architectures and parameter
tensors (a handful).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from l2o.graph import NeuralGraph

__all__ = ["ParamTable", "Normalizer", "WeightBatch", "Batcher", "statnn_features", "tensor_stats", "STAT_NAMES",
           "rows_to_params", "params_to_rows"]

STAT_NAMES = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def params_to_rows(graph: NeuralGraph, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``{name: [M, *shape]}`` -> ``[M, P]`` in ``graph.param_names`` order (a single, unbatched graph)."""
    missing = [n for n in graph.param_names if n not in params]
    if missing:
        raise KeyError(f"parameters {missing} missing; the graph represents {graph.param_names}")
    M = int(params[graph.param_names[0]].shape[0])
    return torch.cat([params[n].reshape(M, -1).float() for n in graph.param_names], 1)


def rows_to_params(graph: NeuralGraph, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of :func:`params_to_rows`: ``[B, P]`` -> ``{name: [B, *shape]}`` (views)."""
    sizes = [s.numel() for s in graph.param_shapes]
    return {n: chunk.reshape(rows.shape[0], *shape)
            for n, shape, chunk in zip(graph.param_names, graph.param_shapes, rows[:, : sum(sizes)].split(sizes, 1))}


def _state_to_graph_index(template: nn.Module, graph: NeuralGraph) -> torch.Tensor:
    """Index ``[P]`` taking a flat vector in ``state_dict`` order to ``graph.param_names`` order."""
    offsets, pos = {}, 0
    for name, t in template.state_dict().items():
        offsets[name] = (pos, t.numel())
        pos += t.numel()
    parts = []
    for name, shape in zip(graph.param_names, graph.param_shapes):
        start, n = offsets[name]
        if n != shape.numel():
            raise ValueError(f"parameter {name}: {n} elements in the state_dict, {shape.numel()} on the graph")
        parts.append(torch.arange(start, start + n))
    return torch.cat(parts)


@dataclass
class ParamTable:
    """Members of a weight-space data set as flat parameter rows (graph order), plus their architectures.

    Fields:
        templates, graphs: one module and one single NeuralGraph per architecture (shared by all splits).
        arch ``[M]``: architecture id of every member.
        flat ``[M, Pmax]``: raw parameters in ``graphs[arch].param_names`` order, zero padded.
    Derived (per architecture): ``lengths [A]``, ``mask [A, Pmax]`` (real elements), ``segment [A, Pmax]`` (which
    parameter tensor an element belongs to; -1 on padding), ``num_tensors [A]``.
    """

    templates: list
    graphs: list
    arch: torch.Tensor
    flat: torch.Tensor

    def __post_init__(self) -> None:
        self.arch = self.arch.long()
        self.flat = self.flat.float()
        if self.arch.numel() != self.flat.shape[0]:
            raise ValueError(f"{self.arch.numel()} architecture ids for {self.flat.shape[0]} rows")
        self.lengths = torch.tensor([g.num_param_elements for g in self.graphs])
        P = self.flat.shape[1]
        if int(self.lengths.max()) > P:
            raise ValueError(f"rows have {P} columns, the largest architecture has {int(self.lengths.max())} parameters")
        self.mask = torch.arange(P)[None, :] < self.lengths[:, None]
        self.segment = torch.full((len(self.graphs), P), -1, dtype=torch.long)
        for a, g in enumerate(self.graphs):
            sizes = torch.tensor([s.numel() for s in g.param_shapes])
            self.segment[a, : g.num_param_elements] = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        self.num_tensors = torch.tensor([len(g.param_names) for g in self.graphs])

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_stacked(template: nn.Module, params: Mapping[str, torch.Tensor], kmax: int = 1,
                     graph: NeuralGraph | None = None) -> "ParamTable":
        """One architecture, parameters ``{name: [M, *shape]}`` (e.g. an INR zoo split)."""
        graph = graph or NeuralGraph.from_module(template, kmax=kmax)
        _check_graph(graph)
        rows = params_to_rows(graph, params)
        return ParamTable([template], [graph], torch.zeros(rows.shape[0], dtype=torch.long), rows)

    @staticmethod
    def from_state_rows(templates: Sequence[nn.Module], arch: torch.Tensor, rows: Sequence[torch.Tensor] | torch.Tensor,
                        kmax: int, graphs: Sequence[NeuralGraph] | None = None) -> "ParamTable":
        """Several architectures; member ``i`` has ``arch[i]`` and flat parameters ``rows[i]`` in the *state_dict*
        order of ``templates[arch[i]]`` (a padded ``[M, >=P]`` tensor or a list of 1-d tensors)."""
        graphs = list(graphs) if graphs is not None else [NeuralGraph.from_module(t, kmax=kmax) for t in templates]
        for g in graphs:
            _check_graph(g)
        arch = torch.as_tensor(arch).long()
        if isinstance(rows, torch.Tensor):
            padded_in = rows.float()
        else:
            width = max(int(r.numel()) for r in rows)
            padded_in = torch.zeros(len(rows), width)
            for i, r in enumerate(rows):  # once per zoo load, not per step
                padded_in[i, : r.numel()] = r.reshape(-1).float()
        pmax = max(g.num_param_elements for g in graphs)
        flat = torch.zeros(arch.numel(), pmax)
        for a, (t, g) in enumerate(zip(templates, graphs)):
            sel = (arch == a).nonzero().flatten()
            if sel.numel():
                index = _state_to_graph_index(t, g)
                flat[sel, : index.numel()] = padded_in[sel][:, index]
        return ParamTable(list(templates), graphs, arch, flat)

    def subset(self, idx: torch.Tensor) -> "ParamTable":
        idx = torch.as_tensor(idx).long()
        return ParamTable(self.templates, self.graphs, self.arch[idx], self.flat[idx])

    def __len__(self) -> int:
        return self.arch.numel()

    @property
    def kmax(self) -> int:
        return self.graphs[0].kmax

    @property
    def num_archs(self) -> int:
        return len(self.graphs)

    def state_rows(self, flat: torch.Tensor, arch: int) -> torch.Tensor:
        """Graph-order rows ``[B, >=P]`` of architecture ``arch`` -> ``state_dict`` order ``[B, P]``."""
        index = _state_to_graph_index(self.templates[arch], self.graphs[arch])
        out = torch.empty(flat.shape[0], index.numel(), dtype=flat.dtype)
        out[:, index] = flat[:, : index.numel()]
        return out


def _check_graph(graph: NeuralGraph) -> None:
    if graph.unmapped_params:
        raise ValueError(f"parameters {graph.unmapped_params} are not on the neural graph; weight-space tasks need "
                         "every parameter represented")


class Normalizer:
    """Per-(architecture, parameter tensor) mean and std from the train split (module docstring).

    ``mean``, ``std``: ``[A, Pmax]`` per-element (each element gets its tensor's statistics; padding: 0 and 1).
    ``global_std``: one std over every train parameter element (scales the optional raw-value channel).
    """

    def __init__(self, table: ParamTable, min_std: float = 1e-6):
        A, P = table.num_archs, table.flat.shape[1]
        T = int(table.num_tensors.max())
        # Pooled by tensor position over every train member (the fallback for architectures absent from train).
        seg = table.segment[table.arch]  # [M, P]
        real = seg >= 0
        pos = seg.clamp(min=0)
        x = table.flat * real
        cnt_p = torch.zeros(T).index_add_(0, pos[real], torch.ones(int(real.sum())))
        sum_p = torch.zeros(T).index_add_(0, pos[real], x[real])
        sq_p = torch.zeros(T).index_add_(0, pos[real], x[real] ** 2)
        self.global_std = max(float(((x[real] - x[real].mean()) ** 2).mean().sqrt()), min_std) if real.any() else 1.0
        mean_p = sum_p / cnt_p.clamp(min=1)
        std_p = (sq_p / cnt_p.clamp(min=1) - mean_p ** 2).clamp(min=0).sqrt().clamp(min=min_std)
        self.mean = torch.zeros(A, P)
        self.std = torch.ones(A, P)
        for a in range(A):
            n = int(table.lengths[a])
            s = table.segment[a, :n]
            rows = table.flat[table.arch == a][:, :n]
            if rows.shape[0] == 0:
                self.mean[a, :n], self.std[a, :n] = mean_p[s], std_p[s]
                continue
            k = int(table.num_tensors[a])
            cnt = torch.zeros(k).index_add_(0, s, torch.ones(n)) * rows.shape[0]
            m = torch.zeros(k).index_add_(0, s, rows.sum(0)) / cnt
            v = torch.zeros(k).index_add_(0, s, ((rows - m[s]) ** 2).sum(0)) / cnt
            self.mean[a, :n] = m[s]
            self.std[a, :n] = v.sqrt().clamp(min=min_std)[s]

    def __call__(self, flat: torch.Tensor, arch: torch.Tensor) -> torch.Tensor:
        return (flat - self.mean[arch]) / self.std[arch]


def tensor_stats(graph: NeuralGraph, rows: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` graph-order rows of one architecture -> ``[B, T, 7]``: per parameter tensor ``mean, var, q0, q25,
    q50, q75, q100``."""
    q = torch.tensor(_QUANTILES, dtype=rows.dtype, device=rows.device)
    out, start = [], 0
    for shape in graph.param_shapes:
        x = rows[:, start: start + shape.numel()]
        start += shape.numel()
        out.append(torch.cat([x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True),
                              torch.quantile(x, q, dim=1).T], 1))
    return torch.stack(out, 1)


def statnn_features(table: ParamTable, rows: torch.Tensor | None = None, arch: int | None = None) -> torch.Tensor:
    """StatNN inputs (Unterthiner et al. 2020): per parameter tensor (each layer's weights and biases separately)
    ``mean, var, q0, q25, q50, q75, q100`` of the raw values; ``[M, T_max * 7]``, zero padded for architectures with
    fewer tensors. The statistics are invariant to hidden-neuron permutations by construction.

    With ``rows`` ``[B, >=P]`` (members of architecture ``arch``), the features of those rows instead."""
    T = int(table.num_tensors.max())
    if rows is not None:
        g = table.graphs[arch]
        out = torch.zeros(rows.shape[0], T, len(STAT_NAMES))
        out[:, : len(g.param_shapes)] = tensor_stats(g, rows[:, : g.num_param_elements])
        return out.flatten(1)
    out = torch.zeros(len(table), T, len(STAT_NAMES))
    for a, g in enumerate(table.graphs):
        sel = (table.arch == a).nonzero().flatten()
        if sel.numel():
            out[sel, : len(g.param_shapes)] = tensor_stats(g, table.flat[sel, : g.num_param_elements])
    return out.flatten(1)


@dataclass
class WeightBatch:
    """Encoder inputs for ``B`` members.

    graph: batched NeuralGraph; node ``[N, 1]``, edge ``[E, kmax**2]``: normalised biases / weights on the graph;
    flat ``[P_total]``: raw parameters concatenated in graph order (``graph.graph_param_ptr`` delimits members);
    rows ``[B, P_b]``: the same raw parameters per member, zero padded to the longest member of the batch
    (``mask [B, P_b]`` marks real elements; all True when the batch holds one architecture);
    dense ``[B, Pmax]``: normalised, zero padded to the longest architecture of the table;
    stats ``[B, S]`` standardised StatNN features; std ``[P_total]`` the normaliser's std of every element and
    std_rows ``[B, P_b]`` the same per member (1 on padding);
    index ``[B]`` member ids; arch ``[B]`` their architecture ids.
    Everything is on the batcher's device except ``index`` and ``arch``, which index the CPU tables.
    """

    graph: NeuralGraph | None
    node: torch.Tensor | None
    edge: torch.Tensor | None
    flat: torch.Tensor
    rows: torch.Tensor
    mask: torch.Tensor
    dense: torch.Tensor
    stats: torch.Tensor
    std: torch.Tensor
    std_rows: torch.Tensor
    index: torch.Tensor
    arch: torch.Tensor

    @property
    def size(self) -> int:
        return self.index.numel()

    def edited_rows(self, delta: torch.Tensor) -> torch.Tensor:
        """``rows`` with ``delta [P_total]`` (graph order, concatenated) added to the real elements."""
        if bool(self.mask.all()):
            return self.rows + delta.view_as(self.rows)
        return self.rows.masked_scatter(self.mask, self.rows[self.mask] + delta)


class Batcher:
    """Turns member indices of a table into :class:`WeightBatch` es (module docstring).

    Args:
        table: the split to draw from. normalizer: statistics of the train split. stat_mean / stat_std: StatNN
            feature standardisation (from the train split; computed from ``table`` when not given).
        raw_channel: add a second feature channel, the raw values divided by one global std (the per-tensor
            standardisation hides how large a layer's weights are compared with other architectures' layers; the raw
            channel keeps that, e.g. for predicting generalization). Node features are then ``[N, 2]`` and edge
            features ``[E, kmax**2 * 2]`` (``[E, K, 2]`` flattened). ``channels`` says how many there are.
        mixed: batches may mix architectures. Training batches then have a *fixed composition*: a random
            assignment of architectures to batch slots is drawn once; every epoch, the members of each architecture
            are shuffled over that architecture's slots and the batch order is shuffled. So every epoch reuses the
            same few batched graphs (cached by the tuple of architecture ids) while the members move between
            batches. Without ``mixed``, batches hold one architecture each (cached per architecture and size).
        graph_inputs: build the batched graph and its node / edge features (False for the flat baselines, which
            only read ``dense`` / ``stats``: ``graph``, ``node`` and ``edge`` are then None).
        device: where the batches go (module docstring); the table, the normaliser and ``stats`` stay on the CPU.
    """

    def __init__(self, table: ParamTable, normalizer: Normalizer, stat_mean: torch.Tensor | None = None,
                 stat_std: torch.Tensor | None = None, mixed: bool = False, raw_channel: bool = False,
                 graph_inputs: bool = True, device: str | torch.device = "cpu"):
        self.table, self.normalizer, self.mixed, self.raw_channel = table, normalizer, mixed, raw_channel
        self.graph_inputs = graph_inputs
        self.device = torch.device(device)
        self.channels = 2 if raw_channel else 1
        stats = statnn_features(table)
        if stat_mean is None:
            stat_mean, stat_std = stats.mean(0), stats.std(0, unbiased=False)
        self.stat_mean, self.stat_std = stat_mean, stat_std.clamp(min=1e-6)
        self.stats = (stats - self.stat_mean) / self.stat_std
        self._graphs: dict[tuple, NeuralGraph] = {}
        self._plan: tuple[int, torch.Tensor] | None = None

    def batched_graph(self, archs: tuple[int, ...]) -> NeuralGraph:
        """The batched graph of members of these architectures, built once and kept on the batcher's device."""
        if archs not in self._graphs:
            self._graphs[archs] = NeuralGraph.batch([self.table.graphs[a] for a in archs]).to(self.device)
        return self._graphs[archs]

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Member indices in batches. With a generator: a training epoch (shuffled; see ``mixed``); without: a
        fixed order (members sorted by architecture, then chunked; per architecture unless ``mixed``)."""
        arch, M = self.table.arch, self.table.arch.numel()
        if generator is None:
            order = torch.sort(arch, stable=True).indices
            if self.mixed:
                return list(order.split(batch_size))
            counts = torch.bincount(arch[order], minlength=self.table.num_archs).tolist()
            return [b for group in order.split(counts) if group.numel() for b in group.split(batch_size)]
        # Members grouped by architecture, in a random order within each architecture.
        key = torch.randperm(M, generator=generator)
        members = torch.sort(arch * M + key, stable=True).indices
        if self.mixed:
            if self._plan is None or self._plan[0] != batch_size:
                slot_arch = arch[torch.randperm(M, generator=generator)]
                self._plan = (batch_size, slot_arch)
            slot_arch = self._plan[1]
            slots = torch.empty(M, dtype=torch.long)
            # The slots of architecture a (in slot order) receive the shuffled members of architecture a.
            slots[torch.sort(slot_arch, stable=True).indices] = members
            out = list(slots.split(batch_size))
        else:
            counts = torch.bincount(arch[members], minlength=self.table.num_archs).tolist()
            out = [b for group in members.split(counts) if group.numel() for b in group.split(batch_size)]
        return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]

    def make(self, index: torch.Tensor, rows: torch.Tensor | None = None) -> WeightBatch:
        """The batch of members ``index``. ``rows`` ``[B, >=P]`` replaces their raw flat rows (augmentation)."""
        # The lookups in the CPU tables happen on the CPU; then only the batch's rows move to the device.
        index = torch.as_tensor(index).long().cpu()
        archs = self.table.arch[index]
        lengths = self.table.lengths[archs]
        n = int(lengths.max())
        raw_cpu = (self.table.flat[index] if rows is None else rows.cpu())[:, :n]
        mask = self.table.mask[archs][:, :n]
        single = bool(mask.all())
        if rows is None:
            stats = self.stats[index]
        else:  # augmented rows (sign flips change the statistics): recompute (one architecture per call)
            stats = torch.cat([(statnn_features(self.table, raw_cpu[archs == a], a) - self.stat_mean) / self.stat_std
                               for a in archs.unique().tolist()])[torch.argsort(torch.sort(archs, stable=True).indices)]
        dev = self.device
        raw, mask, stats = raw_cpu.to(dev), mask.to(dev), stats.to(dev)
        mean, std = self.normalizer.mean[archs, :n].to(dev), self.normalizer.std[archs, :n].to(dev)
        norm = (raw - mean) / std * mask
        graph = node = edge = None
        if self.graph_inputs:
            graph = self.batched_graph(tuple(archs.tolist()))
            flat_norm = norm.reshape(-1) if single else norm[mask]
            feats = flat_norm.reshape(-1, 1)
            if self.raw_channel:
                flat_raw = raw.reshape(-1) if single else raw[mask]
                feats = torch.cat([feats, flat_raw.reshape(-1, 1) / self.normalizer.global_std], 1)
            node, edge = graph.scatter_flat(feats)
            edge = edge.reshape(graph.num_edges, -1)
        dense = raw.new_zeros(index.numel(), self.table.flat.shape[1])
        dense[:, :n] = norm
        return WeightBatch(graph=graph, node=node, edge=edge,
                           flat=raw.reshape(-1) if single else raw[mask], rows=raw, mask=mask, dense=dense,
                           stats=stats, std=std.reshape(-1) if single else std[mask], std_rows=std,
                           index=index, arch=archs)
