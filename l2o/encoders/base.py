"""The interface every graph encoder implements (NG-GNN, NG-T, DNG, NFN).

``encoder(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> (node_emb [N, hidden], edge_emb [E, hidden])``

``graph`` is a :class:`~l2o.graph.NeuralGraph` (one architecture, or a batch of several from
``NeuralGraph.batch``). ``edge_in`` is the flattened edge feature size, ``kmax**2 * F`` for ``F`` features per
kernel slot, so encoders that treat kernel positions separately (DNG) can reshape to ``[E, kmax**2, F]``.
``edge_feats`` may also be a :class:`~l2o.graph.SlotFeatures` (from ``graph.scatter_slots``), the slot-sparse form
of the same ``[E, edge_in]`` tensor; every encoder gives the same result for both forms, and the sparse one never
pays for the empty kernel slots (8 of 9 for a linear layer's weights with ``kmax = 3``).
Every encoder is equivariant to permutations of hidden neurons: permuting the hidden nodes of the input
permutes the output node and edge embeddings the same way.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import NeuralGraph, SlotFeatures
from ..runtime import GatheredRows, ProjectedRows, RowSource


def reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters`` of every submodule that has one (for layers built from standard modules)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class GraphEncoder(nn.Module):
    """Base class: stores the common configuration and checks inputs."""

    # Whether the encoder reads every row of slot-sparse edge features at once (``SlotFeatures.values``) rather
    # than through linear maps of them (``SlotFeatures.project``, which makes lazy rows chunk by chunk).
    reads_all_rows = False

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3):
        super().__init__()
        if edge_in % (kmax * kmax):
            raise ValueError(f"edge_in={edge_in} must be a multiple of kmax**2={kmax * kmax} (features per kernel slot)")
        self.node_in, self.edge_in, self.hidden, self.depth, self.kmax = node_in, edge_in, hidden, depth, kmax

    def check_inputs(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                     ) -> None:
        if graph.kmax != self.kmax:
            raise ValueError(f"{type(self).__name__} was built for kmax={self.kmax}, the graph has kmax={graph.kmax}; "
                             f"build the graph with NeuralGraph.from_module(model, kmax={self.kmax})")
        if node_feats.shape != (graph.num_nodes, self.node_in):
            raise ValueError(f"node_feats must be [N={graph.num_nodes}, {self.node_in}], got {list(node_feats.shape)}")
        if isinstance(edge_feats, SlotFeatures):
            if edge_feats.index is not graph.slot_index():
                raise ValueError("edge_feats are SlotFeatures of another graph: build them with graph.scatter_slots")
            if edge_feats.edge_dim != self.edge_in:
                raise ValueError(f"edge_feats stand for [E={graph.num_edges}, {edge_feats.edge_dim}] features, "
                                 f"expected [E, {self.edge_in}]")
        elif edge_feats.shape != (graph.num_edges, self.edge_in):
            raise ValueError(f"edge_feats must be [E={graph.num_edges}, {self.edge_in}], got {list(edge_feats.shape)}")

    def forward(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_projected(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` followed by the linear map ``weight [D, hidden]`` (no bias) on both outputs:
        ``(node_emb W^T [N, D], edge_emb W^T [E, D])``. An encoder whose edge output ends in a linear layer folds
        ``W`` into it (one ``[E, hidden] x [hidden, D]`` product less); this default applies it afterwards."""
        node_emb, edge_emb = self(graph, node_feats, edge_feats)
        return F.linear(node_emb, weight), F.linear(edge_emb, weight)

    def encode_projected_rows(self, graph: NeuralGraph, node_feats: torch.Tensor,
                              edge_feats: torch.Tensor | SlotFeatures, weight: torch.Tensor) -> RowSource:
        """``gather_flat(*encode_projected(...))`` ``[P, D]``, as a row source for the optimizer step (no autograd):
        each chunk of elements gets its embeddings when the update head reaches it, never all ``P`` at once.

        This default projects after ``forward``. With more elements than two per node or edge (kernel networks)
        it projects the nodes and edges once, straight into one ``[N + E, D]`` table, and gathers from it; with
        fewer (an MLP: one element per edge) it projects each chunk's gathered rows instead, so neither the
        table nor a concatenation of the states is made. An encoder that overrides ``encode_projected``
        overrides this too."""
        node_emb, edge_emb = self(graph, node_feats, edge_feats)
        if graph.num_param_elements <= 2 * (graph.num_nodes + graph.num_edges):
            return ProjectedRows([node_emb, edge_emb], graph.elem_owner, weight,
                                 graph.cached("projected row plans", dict))
        if edge_emb.untyped_storage().nbytes() > edge_emb.numel() * edge_emb.element_size():
            # a view of a larger block (NG-GNN's edge states with their twins): a copy frees the rest before the
            # table is made (a sixth of a ResNet-18 step's peak)
            edge_emb = edge_emb.clone()
        table = node_emb.new_empty(graph.num_nodes + graph.num_edges, weight.shape[0])
        torch.mm(node_emb, weight.t(), out=table[: graph.num_nodes])
        torch.mm(edge_emb, weight.t(), out=table[graph.num_nodes:])
        return GatheredRows(table, graph.elem_owner)
