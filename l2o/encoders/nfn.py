"""NFN baseline: permutation-equivariant neural functional layers (Zhou et al. 2023, NP variant) on the neural graph.

Zhou et al. build weight-space layers that are linear and equivariant to the hidden-neuron permutations of an MLP
or CNN. In the NP ("neuron permutation") variant the input and output neurons are *not* permutable, only the
hidden ones, which is exactly the symmetry the neural graph keeps. The NP linear layer writes the new ``W_l[i, j]``
as a sum of learned linear maps of: ``W_l[i, j]`` itself; the mean of ``W_l`` over its inputs (the row of ``i``),
over its outputs (the column of ``j``) and over both; the biases ``b_l[i]`` (target) and ``b_{l-1}[j]`` (source);
the means of the neighbouring layers' weights that touch the same neurons (``W_{l+1}[:, i]``, ``W_{l-1}[j, :]``).
The new ``b_l[i]`` is a learned map of ``b_l[i]``, the row mean of ``W_l`` at ``i``, the column mean of
``W_{l+1}`` at ``i``, and the layer mean of ``b_l``. Terms indexed by input/output positions are allowed because
those neurons are fixed; here they come in through the input/output positional embeddings of
:class:`GraphInputEmbedding`.

On the neural graph every one of these terms is a mean over a group of edges or nodes (``scatter`` with
``reduce="mean"``), gathered back onto the edge or node:

* row mean of an edge: mean over the edges sharing its *target* (all in the edge's layer, since ``edge_layer`` is
  the target's layer);
* column mean: mean over the edges sharing its *source* within its layer (a residual source feeds several layers);
* layer mean: mean over all edges of its layer, per graph (group ``(edge_graph, edge_layer)``), and likewise the
  layer mean of node states (group ``(node_graph, node_layer)``);
* neighbouring layers: the mean of the source's incoming edges (``W_{l-1}[j, :]``) and of the target's outgoing
  edges (``W_{l+1}[:, i]``).

Differences from the published NFN (chosen so the encoder runs on any architecture, like the other encoders):

* **parameters are shared across layers.** The original NFN has separate weights per layer (and per pair of
  layers for the cross-layer terms), which ties a trained NFN to one fixed architecture. Here one set of maps serves
  every layer; layers are told apart by the layer positional embedding (and edge kinds — weight, normalisation
  diagonal, identity — by the edge-kind embedding), both added by :class:`GraphInputEmbedding`;
* means instead of sums (the scale then does not grow with width, which lets one set of weights serve all widths);
* the cross-layer terms are the ones that touch the same neurons (above); the "sum over all of another layer"
  terms of the original are left out, the layer mean of the edge's own layer stands in for global context;
* a conv kernel is one edge whose ``kmax**2`` slots are mixed by the input projection, as NFN's channel dimension.

Every layer is linear and equivariant; a pointwise nonlinearity sits between layers (not after the last one), as
in the original (which used ReLU; the default here is SiLU, see :class:`NFNEncoder`). All aggregations are means
over order-independent groups, so the encoder is equivariant to hidden-neuron permutations and encoding a batch
of graphs equals encoding each graph alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.utils import scatter

from ..graph import NeuralGraph
from .base import GraphEncoder
from .embeddings import GraphInputEmbedding

_ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu, "tanh": torch.tanh}


@dataclass
class NFNIndex:
    """Index tensors of the mean groups, computed once per forward and shared by every layer.

    Edge groups: ``dst`` [E] (edges sharing a target: a row of ``W_l``) and ``col`` [E] (edges sharing a source
    within a layer: a column of ``W_l``; ``num_col`` groups). Column groups are the finest grouping that both the
    out-edges of a node and the edges of a layer are unions of, so those means are computed from the column sums
    (``col_src`` [num_col]: the source node of each column; ``col_group`` [num_col]: its (graph, layer) group)
    without another pass over the edges. ``node_group`` [N]: (graph, layer) group of each node; ``num_groups`` =
    L * G. ``inv_*`` [size, 1]: 1 / group size (clamped to >= 1 member; empty groups give mean 0).
    """

    dst: torch.Tensor
    col: torch.Tensor
    num_col: int
    col_src: torch.Tensor
    col_group: torch.Tensor
    node_group: torch.Tensor
    num_groups: int
    inv_in: torch.Tensor  # [N, 1] 1 / in-degree
    inv_out: torch.Tensor  # [N, 1] 1 / out-degree
    inv_col: torch.Tensor  # [num_col, 1]
    inv_edge_group: torch.Tensor  # [num_groups, 1]
    inv_node_group: torch.Tensor  # [num_groups, 1]

    @staticmethod
    def build(graph: NeuralGraph, dtype: torch.dtype) -> "NFNIndex":
        N, G, L = graph.num_nodes, graph.num_graphs, graph.num_layers
        src, dst = graph.edge_index[0], graph.edge_index[1]
        # A compact id per (source, edge layer): sizes stay O(E), never O(N * L).
        col_key, col = torch.unique(src * L + graph.edge_layer, return_inverse=True)
        num_col, num_groups = col_key.numel(), L * G
        col_src = col_key // L
        col_group = (col_key % L) * G + graph.node_graph[col_src]
        node_group = graph.node_layer * G + graph.node_graph

        def inv(count: torch.Tensor) -> torch.Tensor:
            return (1.0 / count.clamp(min=1))[:, None]

        ones = torch.ones(graph.num_edges, dtype=dtype, device=graph.device)
        col_count = scatter(ones, col, 0, num_col, reduce="sum")
        node_count = scatter(torch.ones(N, dtype=dtype, device=graph.device), node_group, 0, num_groups, reduce="sum")
        return NFNIndex(
            dst=dst, col=col, num_col=num_col, col_src=col_src, col_group=col_group, node_group=node_group,
            num_groups=num_groups, inv_in=inv(scatter(ones, dst, 0, N, reduce="sum")),
            inv_out=inv(scatter(col_count, col_src, 0, N, reduce="sum")), inv_col=inv(col_count),
            inv_edge_group=inv(scatter(col_count, col_group, 0, num_groups, reduce="sum")),
            inv_node_group=inv(node_count))


class NFNLayer(nn.Module):
    """One NP-equivariant weight-space linear layer on the neural graph: ``(x [N, d], e [E, d]) -> (x', e')``.

    ``e'_ij = A e_ij + B_t s_i + B_s s_j + C colmean_j + M layermean(e)`` and
    ``x'_i = D s_i + M_x layermean(x)``, where ``s_i = [x_i, mean_in(e)_i, mean_out(e)_i]`` summarises neuron ``i``:
    its own state (bias), the mean of its incoming edges (its row of ``W_l``) and the mean of its outgoing edges
    (its column of ``W_{l+1}``). So ``B_t s_i`` carries the row mean, ``b_l[i]`` and ``W_{l+1}[:, i]``, and
    ``B_s s_j`` carries ``b_{l-1}[j]`` and ``W_{l-1}[j, :]``; ``colmean_j`` is the column mean of ``W_l`` at ``j``.

    Cost: every term but ``A e_ij`` depends on the edge only through its target ``i`` or its column group
    ``(j, layer)``, so those terms are summed in two small tables (``[N, d]`` and ``[num_col, d]``) and each edge
    gathers one row of each. Per layer the edges see two scatters (row and column sums), two gathers, one add
    and one ``addmm``.
    """

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.edge_self = nn.Linear(d, d)  # A (its bias is the edge bias)
        self.edge_target = nn.Linear(3 * d, d, bias=False)  # B_t
        self.edge_source = nn.Linear(3 * d, d, bias=False)  # B_s
        self.edge_col = nn.Linear(d, d, bias=False)  # C
        self.edge_layer = nn.Linear(d, d, bias=False)  # M
        self.node_self = nn.Linear(3 * d, d)  # D
        self.node_layer = nn.Linear(d, d, bias=False)  # M_x
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The output is a sum of terms; scale every map by the total fan-in of its sum (9d for edges: e, s_i, s_j,
        # col, layer; 4d for nodes: s_i, layer) so the output variance matches a single linear layer's.
        d = self.d
        for lin, fan_in in ((self.edge_self, 9 * d), (self.edge_target, 9 * d), (self.edge_source, 9 * d),
                            (self.edge_col, 9 * d), (self.edge_layer, 9 * d), (self.node_self, 4 * d),
                            (self.node_layer, 4 * d)):
            bound = math.sqrt(3.0 / fan_in)  # uniform with variance 1 / fan_in
            nn.init.uniform_(lin.weight, -bound, bound)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor, index: NFNIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, d]``, ``e [E, d]`` -> ``(x' [N, d], e' [E, d])``."""
        s, col, edge_lm, node_lm = self.aggregate(x, e, index)
        return self.update_nodes(s, node_lm, index), self.update_edges(e, s, col, edge_lm, index)

    def aggregate(self, x: torch.Tensor, e: torch.Tensor, index: NFNIndex):
        """The order-independent means: neuron summaries ``s [N, 3d]``, column means ``[num_col, d]``,
        edge and node layer means ``[num_groups, d]``."""
        N = x.shape[0]
        row = scatter(e, index.dst, 0, N, reduce="sum") * index.inv_in  # row of W_l
        col_sum = scatter(e, index.col, 0, index.num_col, reduce="sum")
        out = scatter(col_sum, index.col_src, 0, N, reduce="sum") * index.inv_out  # column of W_{l+1}
        edge_lm = scatter(col_sum, index.col_group, 0, index.num_groups, reduce="sum") * index.inv_edge_group
        node_lm = scatter(x, index.node_group, 0, index.num_groups, reduce="sum") * index.inv_node_group
        return torch.cat([x, row, out], -1), col_sum * index.inv_col, edge_lm, node_lm

    def update_edges(self, e, s, col, edge_lm, index: NFNIndex) -> torch.Tensor:
        """``e' [E, d]``: the own term plus one gathered row of the target table and one of the column table."""
        target = self.edge_target(s) + self.edge_self.bias  # [N, d]
        column = (self.edge_col(col) + self.edge_source(s).index_select(0, index.col_src)
                  + self.edge_layer(edge_lm).index_select(0, index.col_group))  # [num_col, d]
        shared = target.index_select(0, index.dst) + column.index_select(0, index.col)
        # In place: `shared` is a fresh sum that autograd does not keep, so this saves an [E, d] copy.
        return shared.addmm_(e, self.edge_self.weight.t())

    def update_nodes(self, s, node_lm, index: NFNIndex) -> torch.Tensor:
        """``x' [N, d]``: neuron summary term plus the layer mean of node states."""
        return self.node_self(s) + self.node_layer(node_lm).index_select(0, index.node_group)


class NFNEncoder(GraphEncoder):
    """NFN (NP variant) on the neural graph: ``depth`` equivariant weight-space linear layers, nonlinearity between.

    Args:
        node_in, edge_in, hidden, depth, kmax, fourier: the common encoder arguments (see :class:`GraphEncoder`).
        activation: pointwise nonlinearity between layers: ``"silu"`` (default), ``"relu"`` (the published NFN's),
            ``"gelu"`` or ``"tanh"``. SiLU is the default because the initial states of a network's edges are nearly
            alike (small weights), so a ReLU kills whole channels for every edge at once (about a third of the
            channels at init in our tests), and because meta-training differentiates through the encoder twice
            (ReLU's second derivative is zero).
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in])
    -> (node_emb [N, hidden], edge_emb [E, hidden])``.

    Parameters are shared across layers (the published NFN has per-layer weights tied to one architecture); the
    layer positional embedding of :class:`GraphInputEmbedding` tells layers apart. See the module docstring.
    """

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, positional: str = "index", activation: str = "silu", **options):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if options:
            raise TypeError(f"NFNEncoder got unknown options {sorted(options)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.fourier, self.activation = fourier, activation
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier, positional=positional)
        self.layers = nn.ModuleList(NFNLayer(hidden) for _ in range(depth))

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(graph, node_feats, edge_feats)
        x, e = self.embed(graph, node_feats, edge_feats)
        index = NFNIndex.build(graph, x.dtype)
        act = _ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            if i:
                x, e = act(x), act(e)
            x, e = layer(x, e, index)
        return x, e
