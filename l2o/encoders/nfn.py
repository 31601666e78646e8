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
in the original (which used ReLU; the default here is SiLU, see :class:`NFNEncoder`). All aggregations are means over order-independent groups, so the encoder is equivariant to
hidden-neuron permutations and encoding a batch of graphs equals encoding each graph alone.
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

    ``src``, ``dst`` [E]: edge endpoints. ``col`` [E]: group of edges sharing (source, layer), ``num_col`` groups.
    ``edge_group`` [E] / ``node_group`` [N]: (graph, layer) group, ``num_groups`` = L * G groups.
    ``inv_*``: 1 / group size (clamped to >= 1 member) to turn scatter sums into means without recounting.
    """

    src: torch.Tensor
    dst: torch.Tensor
    col: torch.Tensor
    num_col: int
    edge_group: torch.Tensor
    node_group: torch.Tensor
    num_groups: int
    inv_in: torch.Tensor  # [N, 1] 1 / in-degree
    inv_out: torch.Tensor  # [N, 1] 1 / out-degree
    inv_col: torch.Tensor  # [num_col, 1]
    inv_edge_group: torch.Tensor  # [num_groups, 1]
    inv_node_group: torch.Tensor  # [num_groups, 1]

    @staticmethod
    def build(graph: NeuralGraph, dtype: torch.dtype) -> "NFNIndex":
        N, E, G, L = graph.num_nodes, graph.num_edges, graph.num_graphs, graph.num_layers
        src, dst = graph.edge_index[0], graph.edge_index[1]
        # A compact id per (source, edge layer): sizes stay O(E), never O(N * L).
        col_key = src * L + graph.edge_layer
        col_ids, col = torch.unique(col_key, return_inverse=True)
        edge_group = graph.edge_layer * G + graph.edge_graph
        node_group = graph.node_layer * G + graph.node_graph
        num_groups = L * G
        ones_e = torch.ones(E, dtype=dtype, device=graph.device)
        ones_n = torch.ones(N, dtype=dtype, device=graph.device)

        def inv(index, size, ones):
            return (1.0 / scatter(ones, index, 0, size, reduce="sum").clamp(min=1))[:, None]

        return NFNIndex(src=src, dst=dst, col=col, num_col=col_ids.numel(), edge_group=edge_group,
                        node_group=node_group, num_groups=num_groups,
                        inv_in=inv(dst, N, ones_e), inv_out=inv(src, N, ones_e), inv_col=inv(col, col_ids.numel(), ones_e),
                        inv_edge_group=inv(edge_group, num_groups, ones_e),
                        inv_node_group=inv(node_group, num_groups, ones_n))


def _mean(values: torch.Tensor, index: torch.Tensor, size: int, inv_count: torch.Tensor) -> torch.Tensor:
    """Group mean ``[size, d]`` of ``values [M, d]`` (empty groups give 0)."""
    return scatter(values, index, 0, size, reduce="sum") * inv_count


class NFNLayer(nn.Module):
    """One NP-equivariant weight-space linear layer on the neural graph: ``(x [N, d], e [E, d]) -> (x', e')``.

    ``e'_ij = A e_ij + B_t s_i + B_s s_j + C colmean_j + M layermean(e)`` and
    ``x'_i = D s_i + M_x layermean(x)``, where ``s_i = [x_i, mean_in(e)_i, mean_out(e)_i]`` summarises neuron ``i``:
    its own state (bias), the mean of its incoming edges (its row of ``W_l``) and the mean of its outgoing edges
    (its column of ``W_{l+1}``). So ``B_t s_i`` carries the row mean, ``b_l[i]`` and ``W_{l+1}[:, i]``, ``B_s s_j``
    carries ``b_{l-1}[j]`` and ``W_{l-1}[j, :]``; ``colmean`` is the column mean of ``W_l`` at ``j``.
    The maps act on the (few) node / group rows before gathering, so the only ``d x d`` product over edges is ``A``.
    """

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.edge_self = nn.Linear(d, d)
        self.edge_endpoints = nn.Linear(3 * d, 2 * d, bias=False)  # s -> (target term, source term)
        self.edge_col = nn.Linear(d, d, bias=False)
        self.edge_layer = nn.Linear(d, d, bias=False)
        self.node_self = nn.Linear(3 * d, d)
        self.node_layer = nn.Linear(d, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The output is a sum of terms; scale every map by the total fan-in of its sum (9d for edges: e, s_i, s_j,
        # col, layer; 4d for nodes: s_i, layer) so the output variance matches a single linear layer's.
        d = self.d
        for lin, fan_in in ((self.edge_self, 9 * d), (self.edge_endpoints, 9 * d), (self.edge_col, 9 * d),
                            (self.edge_layer, 9 * d), (self.node_self, 4 * d), (self.node_layer, 4 * d)):
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
        row = _mean(e, index.dst, N, index.inv_in)  # mean over incoming edges = row of W_l
        out = _mean(e, index.src, N, index.inv_out)  # mean over outgoing edges = column of W_{l+1}
        s = torch.cat([x, row, out], -1)
        col = _mean(e, index.col, index.num_col, index.inv_col)
        edge_lm = _mean(e, index.edge_group, index.num_groups, index.inv_edge_group)
        node_lm = _mean(x, index.node_group, index.num_groups, index.inv_node_group)
        return s, col, edge_lm, node_lm

    def update_edges(self, e, s, col, edge_lm, index: NFNIndex) -> torch.Tensor:
        """``e' [E, d]``: own term plus gathered endpoint, column and layer terms."""
        target_term, source_term = self.edge_endpoints(s).chunk(2, -1)  # [N, d] each, computed per node
        return (self.edge_self(e) + target_term.index_select(0, index.dst) + source_term.index_select(0, index.src)
                + self.edge_col(col).index_select(0, index.col)
                + self.edge_layer(edge_lm).index_select(0, index.edge_group))

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
                 fourier: int = 0, activation: str = "silu", **options):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if options:
            raise TypeError(f"NFNEncoder got unknown options {sorted(options)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.fourier, self.activation = fourier, activation
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier)
        self.layers = nn.ModuleList(NFNLayer(hidden) for _ in range(depth))

    def reset_parameters(self) -> None:
        # GraphInputEmbedding has no reset method of its own and custom inits (sinusoid tables, small embeddings):
        # copy a freshly initialised one in place, so parameter identity (optimizer references) is kept.
        fresh = GraphInputEmbedding(self.node_in, self.edge_in, self.hidden, self.fourier)
        self.embed.load_state_dict(fresh.to(next(self.embed.parameters()).device).state_dict())
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
