"""NG-T: a relational transformer over a neural graph's neighbourhoods (Kofinas et al., ICLR 2024).

The published NG-T attends over all pairs of neurons (O(N^2)); here attention runs over graph neighbours only, a
sparse softmax over each node's incoming edges (``torch_geometric.utils.softmax``), so cost is O(E). Each block
(:class:`NGTransformerLayer`, pre-LayerNorm with residuals) does, with ``H`` heads of size ``d / H``:

* relational attention for each relation ``r`` (the graph's edges ``j -> i``, and, if ``bidirectional``, the
  reversed edges, so that a neuron also hears from later layers, where an optimizer's gradient signal comes from)::

      q_ij = x_i Wq + e_ij Wq_e        k_ij = x_j Wk + e_ij Wk_e
      v_ij = (x_j Wv) * (e_ij Wm) + e_ij Wv_e           (the product mimics "weight times activation")
      a_ij = softmax_j(<q_ij, k_ij> / sqrt(d / H))      (per head, over the incoming edges of i)
      out_i = sum_j a_ij v_ij                           (zeros for a node with no incoming edge)

  the relations' outputs are concatenated and projected: ``x <- x + W_o [out_fwd, out_rev]``;
* a node MLP: ``x <- x + MLP(LN(x))`` (Linear, SiLU, Linear; hidden ``mlp_ratio * d``);
* an edge update from the new node states: ``e_ij <- e_ij + MLP([LN(e_ij), LN(x)_i, LN(x)_j])`` (hidden ``d``:
  edges outnumber nodes, so the per-edge MLP is kept narrow). The published edge update also reads ``e_ji``; a
  neural graph is directed (no edge runs from a later layer back to an earlier one), so there is no ``e_ji`` and
  it is left out.

Pre-LN blocks need a final LayerNorm: the encoder applies one to nodes and one to edges after the last block, so
its outputs have the same normalised scale as NG-GNN's. Every operation is per node, per edge or a per-node
softmax/sum over neighbours, so the encoder is equivariant to hidden-neuron permutations and batched graphs
encode exactly as they do alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from ..graph import NeuralGraph
from .base import GraphEncoder, reset_children
from .embeddings import GraphInputEmbedding
from .ng_gnn import relation_edge_indices


class NGTransformerLayer(MessagePassing):
    r"""One NG-T block over ``relations`` edge types (1: forward edges; 2: forward and reversed edges).

    Args:
        hidden: state size ``d`` of nodes and edges; heads: attention heads (``d`` must be divisible by it).
        relations: number of relations, each with its own query/key/value maps.
        mlp_ratio: hidden size of the node MLP is ``mlp_ratio * d``.
    Shapes:
        ``forward(x [N, d], e [E, d], edge_indices: list of relations x [2, E]) -> (x [N, d], e [E, d])``;
        ``edge_indices[0]`` must be the graph's own edges (used by the edge update).
    """

    def __init__(self, hidden: int, heads: int = 4, relations: int = 2, mlp_ratio: int = 2):
        super().__init__(aggr="sum", node_dim=0)
        if hidden < 1 or heads < 1 or relations < 1 or mlp_ratio < 1:
            raise ValueError(f"hidden, heads, relations and mlp_ratio must be positive, got {hidden}, {heads}, "
                             f"{relations}, {mlp_ratio}")
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.hidden, self.heads, self.relations, self.mlp_ratio = hidden, heads, relations, mlp_ratio
        d, R = hidden, relations
        self.node_norm1 = nn.LayerNorm(d)
        self.edge_norm1 = nn.LayerNorm(d)
        self.node_qkv = nn.Linear(d, 3 * R * d)  # per relation: x Wq, x Wk, x Wv
        self.edge_qkvm = nn.Linear(d, 4 * R * d)  # per relation: e Wq_e, e Wk_e, e Wv_e, e Wm
        self.attn_out = nn.Linear(R * d, d)
        self.node_norm2 = nn.LayerNorm(d)
        self.node_mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.SiLU(), nn.Linear(mlp_ratio * d, d))
        self.node_norm3 = nn.LayerNorm(d)
        self.edge_norm2 = nn.LayerNorm(d)
        self.edge_in = nn.Linear(d, d)
        self.edge_node = nn.Linear(d, 2 * d, bias=False)  # target half, source half
        self.edge_out = nn.Linear(d, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        reset_children(self)

    def forward(self, x: Tensor, e: Tensor, edge_indices: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(edge_indices) != self.relations:
            raise ValueError(f"expected {self.relations} relations, got {len(edge_indices)} edge indices")
        H, dh = self.heads, self.hidden // self.heads
        # unbind (backward: one stack) rather than indexing (backward: a zero-filled [E, 4R, H, d/H] per slice).
        node = self.node_qkv(self.node_norm1(x)).view(x.shape[0], 3 * self.relations, H, dh).unbind(1)
        edge = self.edge_qkvm(self.edge_norm1(e)).view(e.shape[0], 4 * self.relations, H, dh).unbind(1)
        outs = []
        for r, edge_index in enumerate(edge_indices):
            q, k, v = node[3 * r: 3 * r + 3]
            qe, ke, ve, me = edge[4 * r: 4 * r + 4]
            out = self.propagate(edge_index, q=q, k=k, v=v, q_e=qe, k_e=ke, v_e=ve, m_e=me)
            outs.append(out.reshape(x.shape[0], self.hidden))
        x = x + self.attn_out(torch.cat(outs, dim=-1))
        x = x + self.node_mlp(self.node_norm2(x))
        # Edge update from the new node states; [e_ij, x_i (target), x_j (source)] (no reverse edge e_ji exists).
        src, dst = edge_indices[0]
        x_dst, x_src = self.edge_node(self.node_norm3(x)).chunk(2, dim=-1)
        e = e + self.edge_out(F.silu(self.edge_in(self.edge_norm2(e)) + x_dst[dst] + x_src[src]))
        return x, e

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, q_e: Tensor, k_e: Tensor, v_e: Tensor, m_e: Tensor,
                index: Tensor, ptr: Tensor | None, size_i: int | None) -> Tensor:
        """``[E, H, d/H]``: attention-weighted relational values ``a_ij * v_ij``."""
        query, key = q_i + q_e, k_j + k_e
        score = (query * key).sum(dim=-1) / math.sqrt(query.shape[-1])  # [E, H]
        alpha = softmax(score, index, ptr, size_i)  # over the incoming edges of each target, per head
        value = v_j * m_e + v_e
        return alpha.unsqueeze(-1) * value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, heads={self.heads}, relations={self.relations})"


class NGTransformer(GraphEncoder):
    """NG-T encoder: input embeddings, ``depth`` :class:`NGTransformerLayer` blocks, final LayerNorms.

    Args:
        node_in, edge_in, hidden, depth, kmax, fourier: the common encoder arguments (see :class:`GraphEncoder`).
        heads: attention heads per relation (``hidden`` must be divisible by it; default 4).
        bidirectional: also attend along reversed edges (default True).
        mlp_ratio: node MLP width as a multiple of ``hidden`` (default 2).
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> (node_emb [N, hidden],
    edge_emb [E, hidden])``.
    """

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, positional: str = "index", *, heads: int = 4, bidirectional: bool = True, mlp_ratio: int = 2):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be positive, got hidden={hidden}, depth={depth}")
        if heads < 1 or hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.heads, self.bidirectional = heads, bidirectional
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier, positional=positional)
        relations = 2 if bidirectional else 1
        self.layers = nn.ModuleList(NGTransformerLayer(hidden, heads, relations, mlp_ratio) for _ in range(depth))
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm = nn.LayerNorm(hidden)

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.node_norm.reset_parameters()
        self.edge_norm.reset_parameters()

    def forward(self, graph: NeuralGraph, node_feats: Tensor, edge_feats: Tensor) -> tuple[Tensor, Tensor]:
        self.check_inputs(graph, node_feats, edge_feats)
        x, e = self.embed(graph, node_feats, edge_feats)
        rels = relation_edge_indices(graph, self.bidirectional)
        for layer in self.layers:
            x, e = layer(x, e, rels)
        return self.node_norm(x), self.edge_norm(e)
