"""Where every parameter element sits: the flat layout shared by all optimizers, plus the neural graph.

A learned optimizer updates all parameters of a network at once, as one flat vector ``[P]`` (tensors concatenated
in ``names`` order). :class:`ParamContext` is that layout for one architecture (or a batch of tasks): names,
shapes, per-element tensor ids, per-tensor categories for learned per-layer scales, and the neural graph that
covers the graph-representable tensors (the first ``graph_elements`` elements of each task, in graph order).
Tensors the graph cannot represent (``fallback='per-parameter'``) come after them and receive a zero embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..graph import ROLE_INPUT, ROLE_OUTPUT, NeuralGraph
from ..runtime import device_constant

# Per-tensor categories for learned output scales: (first / hidden / last layer) x (weight / bias-like).
CATEGORIES = ("in_weight", "hidden_weight", "out_weight", "in_bias", "hidden_bias", "out_bias")
NUM_CATEGORIES = len(CATEGORIES)


@dataclass
class ParamContext:
    """Flat layout of the parameters an optimizer updates.

    Attributes (P elements, T tensors):
        names, shapes: per tensor; sizes: numel per tensor; offsets [T+1]
        tensor_id [P]: which tensor each element belongs to
        category [T]: index into CATEGORIES
        graph: NeuralGraph over the graph-represented tensors (None for graph-free optimizers' contexts)
        graph_index [P_g] or None: positions in the flat vector of the graph's elements, in graph order
            (None means the first ``graph.num_param_elements`` elements, the common case)
        tensor_task [T] or None: which task of a batch (:meth:`batch`) each tensor belongs to (None: one task)
    """

    names: list[str]
    shapes: list[torch.Size]
    tensor_id: torch.Tensor
    category: torch.Tensor
    offsets: torch.Tensor
    graph: NeuralGraph | None = None
    graph_index: torch.Tensor | None = None
    tensor_task: torch.Tensor | None = None

    @property
    def num_elements(self) -> int:
        return self.tensor_id.numel()

    @property
    def num_tensors(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> list[int]:
        return [s.numel() for s in self.shapes]

    @property
    def device(self) -> torch.device:
        return self.tensor_id.device

    @staticmethod
    def build(graph: NeuralGraph | None, names: Sequence[str], shapes: Sequence[torch.Size]) -> "ParamContext":
        """Layout for ``names`` (graph tensors first, in graph order, then any others)."""
        names, shapes = list(names), [torch.Size(s) for s in shapes]
        if graph is not None and names[: len(graph.param_names)] != graph.param_names:
            raise ValueError("the graph's parameters must come first, in graph order")
        sizes = [s.numel() for s in shapes]
        dev = graph.device if graph is not None else torch.device("cpu")  # the layout lives with its graph
        tensor_id = torch.repeat_interleave(torch.arange(len(names), device=dev),
                                            torch.tensor(sizes, dtype=torch.long, device=dev))
        offsets = torch.tensor([0] + sizes, device=dev).cumsum(0)
        return ParamContext(names, shapes, tensor_id, _categories(graph, shapes).to(dev), offsets, graph)

    @staticmethod
    def for_graph(graph: NeuralGraph) -> "ParamContext":
        return ParamContext.build(graph, graph.param_names, graph.param_shapes)

    @staticmethod
    def batch(contexts: Sequence["ParamContext"]) -> "ParamContext":
        """One context for several tasks updated together: flat vectors concatenated, graphs batched."""
        if len(contexts) == 1:
            return contexts[0]
        dev = contexts[0].device  # every index tensor of the batch lives where the contexts do
        names = [f"{i}.{n}" for i, c in enumerate(contexts) for n in c.names]
        shapes = [s for c in contexts for s in c.shapes]
        sizes = [s.numel() for s in shapes]
        tensor_id = torch.repeat_interleave(torch.arange(len(names), device=dev),
                                            torch.tensor(sizes, dtype=torch.long, device=dev))
        offsets = torch.tensor([0] + sizes, device=dev).cumsum(0)
        category = torch.cat([c.category for c in contexts])
        tensor_task = torch.cat([torch.full((c.num_tensors,), i, dtype=torch.long, device=dev)
                                 for i, c in enumerate(contexts)])
        graph = graph_index = None
        if all(c.graph is not None for c in contexts):
            graph = NeuralGraph.batch([c.graph for c in contexts])
            starts = [0]
            for c in contexts:
                starts.append(starts[-1] + c.num_elements)
            parts = [starts[i] + (c.graph_index if c.graph_index is not None
                                  else torch.arange(c.graph.num_param_elements, device=dev))
                     for i, c in enumerate(contexts)]
            graph_index = torch.cat(parts)
            if graph_index.numel() == tensor_id.numel() and torch.equal(
                    graph_index, torch.arange(graph_index.numel(), device=dev)):
                graph_index = None
        elif any(c.graph is not None for c in contexts):
            raise ValueError("cannot batch contexts with and without graphs")
        return ParamContext(names, shapes, tensor_id, category, offsets, graph, graph_index, tensor_task)

    def to(self, device) -> "ParamContext":
        def move(t):
            return None if t is None else t.to(device)

        return ParamContext(self.names, self.shapes, self.tensor_id.to(device), self.category.to(device),
                            self.offsets.to(device), self.graph.to(device) if self.graph is not None else None,
                            move(self.graph_index), move(self.tensor_task))

    def tensor_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(task [T], position [T])``: each tensor's task in a batch and its index among that task's tensors."""
        T = self.num_tensors
        if self.tensor_task is None:
            zeros = torch.zeros(T, dtype=torch.long, device=self.device)
            return zeros, torch.arange(T, device=self.device)
        counts = torch.bincount(self.tensor_task)
        starts = counts.cumsum(0) - counts
        return self.tensor_task, torch.arange(T, device=self.device) - starts.index_select(0, self.tensor_task)

    # ---------------------------------------------------------------- flat <-> tensors
    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sequence of tensors in ``names`` order -> ``[P]`` (or ``[P, F]`` for ``[*shape, F]`` inputs)."""
        parts = [t.reshape(s.numel(), *t.shape[len(s):]) for t, s in zip(tensors, self.shapes)]
        return torch.cat(parts, 0)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[P, *rest]`` -> tensors shaped ``[*shape, *rest]`` (views)."""
        rest = flat.shape[1:]
        return [c.view(*s, *rest) for c, s in zip(torch.split(flat, self.sizes, 0), self.shapes)]

    def graph_part(self, flat: torch.Tensor) -> torch.Tensor:
        """The graph-represented elements of ``flat [P, *]`` in graph order: ``[P_g, *]``."""
        if self.graph_index is not None:
            return flat.index_select(0, self.graph_index)
        return flat[: self.graph.num_param_elements]

    def from_graph_part(self, part: torch.Tensor) -> torch.Tensor:
        """``[P_g, D]`` in graph order -> ``[P, D]`` with zeros for elements off the graph."""
        P = self.num_elements
        if self.graph_index is None:
            if part.shape[0] == P:
                return part
            return torch.cat([part, part.new_zeros(P - part.shape[0], *part.shape[1:])], 0)
        return part.new_zeros(P, *part.shape[1:]).index_copy(0, self.graph_index, part)

    def tensor_sums(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, F]``: the sum of ``x [P, F]`` over each tensor's elements (0 for an empty tensor).

        One reduction per tensor over its contiguous rows, not ``index_add`` by ``tensor_id``: on a GPU, millions of
        rows added atomically into a few dozen contend for them (about a fifth of a graph optimizer's step on
        ResNet-18), and ``torch.segment_reduce``'s CUDA kernel walks each segment in one thread (200 ms there). The
        per-tensor launches are recorded once in a CUDA graph; on the CPU it is 5-7x faster than ``index_add`` too.
        Meant for the optimizer step (tens of large tensors), not for K tasks' many small tensors under autograd."""
        if x.shape[0] != self.num_elements:
            raise ValueError(f"tensor_sums: expected {self.num_elements} rows (one per element), got {x.shape[0]}")
        return torch.stack([part.sum(0) for part in torch.split(x, self.sizes, 0)])

    def tensor_rms(self, x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        """Per-tensor RMS of ``x [P, F]`` broadcast back to elements: ``[P, F]`` (eps inside the sqrt)."""
        sq = self.tensor_sums(x * x)
        counts = device_constant(tuple(self.sizes), x.dtype, x.device)[:, None]
        return torch.sqrt(sq / counts + eps).index_select(0, self.tensor_id)


def _categories(graph: NeuralGraph | None, shapes: list[torch.Size]) -> torch.Tensor:
    """Category of each tensor: from the graph's roles where possible, else by position among weights."""
    T = len(shapes)
    cats = torch.full((T,), 1 if T == 0 else 0, dtype=torch.long)
    n_graph = len(graph.param_names) if graph is not None else 0
    for i, shape in enumerate(shapes):
        bias_like = len(shape) == 1
        where = 1  # hidden
        if graph is not None and i < n_graph:
            owner = int(graph.elem_owner[graph.param_offsets[i]])
            if owner >= graph.num_nodes:  # on an edge: look at its endpoints
                src, dst = graph.edge_index[:, owner - graph.num_nodes]
                if int(graph.node_role[dst]) == ROLE_OUTPUT:
                    where = 2
                elif int(graph.node_role[src]) == ROLE_INPUT:
                    where = 0
            else:
                role, layer = int(graph.node_role[owner]), int(graph.node_layer[owner])
                where = 2 if role == ROLE_OUTPUT else (0 if layer == 1 else 1)
        elif graph is None:
            weights = [j for j, s in enumerate(shapes) if len(s) > 1]
            if weights:
                ref = i if not bias_like else max([j for j in weights if j < i], default=weights[0])
                where = 0 if ref == weights[0] else (2 if ref == weights[-1] else 1)
        cats[i] = where + (3 if bias_like else 0)
    return cats
