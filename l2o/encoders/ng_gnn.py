"""NG-GNN: PNA message passing with FiLM edge modulation over a neural graph (Kofinas et al., ICLR 2024).

Each of ``depth`` layers (:class:`NGGNNLayer`) does, for every node ``i`` and hidden state size ``d``:

* messages over two relations, the graph's own edges (``j -> i``, from earlier layers) and the reversed edges
  (``i -> j``, from later layers). An optimizer needs both: gradients flow backward through the network, so a
  neuron's update depends on what happens after it. Each relation has its own message MLP and FiLM map::

      m_ij = (1 + scale_r(e_ij)) * MLP_r([x_i, x_j]) + shift_r(e_ij)

  (``1 +`` so an untrained FiLM starts near the identity modulation; it is still an affine function of ``e_ij``);
* PNA aggregation of each relation's messages: mean, min, max and std (``sqrt(var + eps)``, eps inside the sqrt so
  that second derivatives stay finite at zero variance), each with the identity and the amplification scaler
  (see *Degree scaler* below). Nodes with no incoming edge of a relation get zeros;
* node update ``x_i <- LayerNorm(x_i + MLP([x_i, agg_fwd_i, agg_rev_i]))`` (MLP: Linear, SiLU, Linear);
* edge update with the new node states ``e_ij <- LayerNorm(e_ij + MLP([e_ij, x_i, x_j]))``.

Degree scaler. PNA's amplification multiplies an aggregate by ``log(deg_i + 1) / delta`` where ``delta`` is the
mean of ``log(deg + 1)`` over the nodes of a reference set of graphs. By default (``avg_log_deg=None``) the
reference set is the graph itself: ``delta`` is computed per graph of a batch (nodes of that graph only) and per
relation, at forward time, from structure alone. This equals what PNA does when its degree histogram comes from
the one optimizee architecture being trained on, it never mixes the graphs of a batch (so batched and single
encodings agree) and it is invariant to neuron permutations. It also keeps the scaler near 1 on networks much
wider than those seen in meta-training (only relative fan-in is visible). Pass ``avg_log_deg=<float>`` to fix
``delta`` instead, which exposes absolute fan-in (``log(fan_in + 1)``) to the model at the cost of larger scaler
values on wider networks than seen in training.

The graph's input/positional embeddings come from :class:`GraphInputEmbedding`; everything after is node-order
independent (per-node / per-edge maps and order-free aggregations), hence equivariant to hidden-neuron
permutations. Per-node first halves of the message and edge MLPs are computed once per node and gathered per
edge (``Linear([x_i, x_j]) = x_i A + x_j B``), which saves an ``[E, 2d] x [2d, d]`` product per relation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from ..graph import NeuralGraph, SlotFeatures
from ..runtime import chunk_size, row_chunks
from .base import GraphEncoder, reset_children
from .embeddings import GraphInputEmbedding

AGGREGATORS = ("mean", "min", "max", "std")
SCALERS = ("identity", "amplification")
# The chunked path (the optimizer step on a large graph) takes each dense weight block as [out, in] grids
# (edge_pieces). False: plain row chunks with per-edge gathers and scatters, the same values up to rounding
# (benchmarks/step_grids.py times both).
DENSE_GRIDS = True


def relation_edge_indices(graph: NeuralGraph, bidirectional: bool) -> list[Tensor]:
    """``[2, E]`` edge indices of the relations: the graph's edges, then (if ``bidirectional``) the reversed ones.

    Both keep the graph's edge order, so edge-level tensors ``[E, *]`` line up with every relation.
    """
    rels = [graph.edge_index]
    if bidirectional:
        rels.append(graph.reverse_edge_index())
    return rels


@dataclass(frozen=True)
class EdgePiece:
    """Rows ``[start, stop)`` of a relation's edges, processed together in the optimizer step.

    ``grid = (out_lo, out_hi, in_lo, in_hi)``: the rows are outputs ``out_lo .. out_hi - 1`` of a dense block
    (``NeuralGraph.edge_blocks``) against all its inputs ``in_lo .. in_hi - 1``, row-major, so the per-edge node
    terms are broadcasts over a ``[out_hi - out_lo, in_hi - in_lo]`` grid and each target's aggregate a reduction
    along one axis; None: any edges (gathers and scatters). ``reversed[r]``: whether relation ``r``'s targets in
    these rows are the block's inputs (reversed edges) rather than its outputs.
    """

    start: int
    stop: int
    grid: tuple[int, int, int, int] | None
    reversed: tuple[bool, ...]


def edge_pieces(graph: NeuralGraph, relations: int, shared_reverse: bool, chunk_rows: int) -> list[EdgePiece]:
    """The pieces of about ``chunk_rows`` rows that cover the edge states ``[E, d]`` (``[2E, d]``, forward edges
    then their twins, with ``shared_reverse``); a dense block's pieces are whole output rows. Cached per graph."""
    def build():
        E = graph.num_edges
        halves = [(0, (False,)), (E, (True,))] if shared_reverse else [(0, tuple(r == 1 for r in range(relations)))]
        pieces = []
        for offset, rev in halves:
            for a, b, dense in graph.edge_blocks():
                if dense is None:
                    pieces += [EdgePiece(offset + c0, offset + min(c0 + chunk_rows, b), None, rev)
                               for c0 in range(a, b, chunk_rows)]
                    continue
                out_base, n_out, in_base, n_in = dense
                k = max(1, chunk_rows // n_in)  # whole output rows per piece
                pieces += [EdgePiece(offset + a + o0 * n_in, offset + a + min(o0 + k, n_out) * n_in,
                                     (out_base + o0, out_base + min(o0 + k, n_out), in_base, in_base + n_in), rev)
                           for o0 in range(0, n_out, k)]
        return pieces

    return graph.cached(("ng-gnn pieces", relations, shared_reverse, chunk_rows), build)


def degree_scalers(graph: NeuralGraph, edge_index: Tensor, dtype: torch.dtype,
                   avg_log_deg: float | None = None) -> tuple[Tensor, Tensor]:
    """In-degree and PNA amplification factor of every node for one relation.

    Args:
        edge_index: ``[2, E]`` (source, target) of the relation; messages are aggregated at the target.
        avg_log_deg: fixed ``delta``; ``None`` computes it per graph of the batch (mean over that graph's nodes of
            ``log(deg + 1)``, nodes of in-degree 0 included, as in PNA).
    Returns:
        ``deg [N, 1]`` and ``amp [N, 1] = log(deg + 1) / delta`` (structure only: no gradient flows through them).
    """
    N = graph.num_nodes
    ones = torch.ones(edge_index.shape[1], dtype=dtype, device=edge_index.device)
    deg = scatter(ones, edge_index[1], dim=0, dim_size=N, reduce="sum")
    log_deg = torch.log1p(deg)
    if avg_log_deg is None:
        delta = scatter(log_deg, graph.node_graph, dim=0, dim_size=graph.num_graphs, reduce="mean")
        delta = delta[graph.node_graph]
    else:
        delta = torch.full_like(log_deg, float(avg_log_deg))
    # A graph without edges has log_deg == 0 everywhere: the clamp only avoids 0/0 there.
    amp = log_deg / delta.clamp(min=1e-6)
    return deg[:, None], amp[:, None]


class NGGNNLayer(MessagePassing):
    r"""One NG-GNN layer over ``relations`` edge types (1: forward edges; 2: forward and reversed edges).

    Args:
        hidden: state size ``d`` of nodes and edges.
        relations: number of relations, each with its own message MLP and FiLM map.
        eps: added to the variance inside the square root of the std aggregator.
    Shapes:
        ``forward(x [N, d], e [E, d], edge_indices: list of relations x [2, E], deg, amp: lists of [N, 1],
        edge_rows=None) -> (x [N, d], e [E', d])``. ``edge_indices[0]`` must be the graph's own edges (used by the
        edge update). ``edge_rows``: update and return only the first ``edge_rows`` edges' states (``E' =
        edge_rows``; default all): the last layer of a symmetrised graph needs only the forward edges'.

    Without autograd (the optimizer step) on a graph of more edges than one row chunk (``l2o.runtime.row_chunks``)
    the edges go through in chunks: the FiLM maps, messages and edge update never exist at ``[E, *]`` at once, the
    aggregates are merged chunk by chunk, and ``e`` is updated in place. The same values as the one-pass
    ``propagate`` (up to rounding: the variance is merged from the chunks' own).
    """

    def __init__(self, hidden: int, relations: int = 2, eps: float = 1e-6):
        super().__init__(aggr=None, node_dim=0)
        if hidden < 1 or relations < 1:
            raise ValueError(f"hidden and relations must be positive, got hidden={hidden}, relations={relations}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (it keeps the std aggregator twice differentiable), got {eps}")
        self.hidden, self.relations, self.eps = hidden, relations, eps
        d, R = hidden, relations
        # Per relation: target half and source half of the message MLP's first linear map (node level).
        self.msg_node = nn.Linear(d, 2 * R * d)
        self.msg_out = nn.ModuleList(nn.Linear(d, d) for _ in range(R))
        # Per relation: FiLM scale and shift from the edge state.
        self.film = nn.Linear(d, 2 * R * d)
        n_agg = len(AGGREGATORS) * len(SCALERS)
        self.node_mlp = nn.Sequential(nn.Linear((1 + n_agg * R) * d, d), nn.SiLU(), nn.Linear(d, d))
        self.node_norm = nn.LayerNorm(d)
        self.edge_in = nn.Linear(d, d)
        self.edge_node = nn.Linear(d, 2 * d, bias=False)  # target half, source half
        self.edge_out = nn.Linear(d, d)
        self.edge_norm = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        reset_children(self)

    def forward(self, x: Tensor, e: Tensor, edge_indices: list[Tensor], deg: list[Tensor], amp: list[Tensor],
                edge_rows: int | None = None, pieces: list[EdgePiece] | None = None) -> tuple[Tensor, Tensor]:
        """``pieces``: how the chunked path (no autograd, more edges than one chunk) covers the edges
        (:func:`edge_pieces`; default: plain row chunks)."""
        if len(edge_indices) != self.relations:
            raise ValueError(f"expected {self.relations} relations, got {len(edge_indices)} edge indices")
        h = self.msg_node(x).chunk(2 * self.relations, dim=-1)
        chunks = row_chunks(e.shape[0], e.device)  # one chunk under autograd
        one_pass = len(chunks) == 1
        if one_pass:
            film = self.film(e).chunk(2 * self.relations, dim=-1)
            aggregated = [self.propagate(edge_index, h_dst=h[2 * r], h_src=h[2 * r + 1], scale=film[2 * r],
                                         shift=film[2 * r + 1], rel=r, deg=deg[r], amp=amp[r])
                          for r, edge_index in enumerate(edge_indices)]
        else:
            if pieces is None:
                pieces = [EdgePiece(c0, c1, None, (False,) * self.relations) for c0, c1 in chunks]
            aggregated = self._aggregate_in_pieces(e, h, edge_indices, deg, amp, pieces)
        x = self.node_norm(x + self.node_mlp(torch.cat([x, *aggregated], dim=-1)))
        n = e.shape[0] if edge_rows is None else edge_rows
        src, dst = edge_indices[0][:, :n]
        x_dst, x_src = self.edge_node(x).chunk(2, dim=-1)
        # (index_select rather than tensor[index] for every per-edge gather: several times faster on the CPU)
        if one_pass:
            return x, self.edge_update(e[:n], x_dst.index_select(0, dst), x_src.index_select(0, src))
        for piece in pieces:  # in place: e is the encoder's own state
            c0, c1 = piece.start, min(piece.stop, n)
            if c0 >= c1:
                continue
            if piece.grid is None:
                x_d, x_s = x_dst.index_select(0, dst[c0:c1]), x_src.index_select(0, src[c0:c1])
            else:  # a dense block's rows never straddle n (the forward edges end there)
                x_d, x_s = _grid_terms(piece.grid, piece.reversed[0], x_dst, x_src)
            e[c0:c1] = self.edge_update(e[c0:c1], x_d, x_s)
        return x, e[:n]

    def edge_update(self, e: Tensor, x_dst: Tensor, x_src: Tensor) -> Tensor:
        """``[n, d]``: ``LayerNorm(e_ij + MLP([e_ij, x_i (target), x_j (source)]))`` from the new node states
        (``x_dst``, ``x_src``: their halves of the MLP's first layer, gathered per edge ``[n, d]``, or, without
        autograd, broadcast terms ``[k, 1, d]`` / ``[1, m, d]`` over a ``[k, m]`` grid of the ``n = k m`` edges)."""
        pre = self.edge_in(e)
        if x_dst.dim() == 3:  # the same sums, added in place on the grid
            k, m = max(x_dst.shape[0], x_src.shape[0]), max(x_dst.shape[1], x_src.shape[1])
            pre.view(k, m, -1).add_(x_dst).add_(x_src)
        else:
            pre = pre + x_dst + x_src
        return self.edge_norm(e + self.edge_out(F.silu(pre)))

    def _aggregate_in_pieces(self, e: Tensor, h: tuple[Tensor, ...], edge_indices: list[Tensor], deg: list[Tensor],
                             amp: list[Tensor], pieces: list[EdgePiece]) -> list[Tensor]:
        """``propagate`` of every relation with the edges in ``pieces`` (no autograd); returns each relation's
        ``[N, 8d]``. Min and max accumulate piece by piece; mean and variance too, each piece's own (two-pass, over
        its edges) merged into the running ones (Chan et al.'s pairwise update), so no ``[E, d]`` message tensor is
        kept and no sum of squares cancels. A dense block's piece needs no gather or scatter: its messages are a
        ``[k, m, d]`` grid, reduced along the axis of the targets' sources."""
        N, d, R = h[0].shape[0], self.hidden, self.relations
        count = [e.new_zeros(N, 1) for _ in range(R)]
        mean = [e.new_zeros(N, d) for _ in range(R)]
        m2 = [e.new_zeros(N, d) for _ in range(R)]  # sum of squared deviations from the running mean
        lo = [e.new_full((N, d), math.inf) for _ in range(R)]
        hi = [e.new_full((N, d), -math.inf) for _ in range(R)]
        for piece in pieces:
            c0, c1 = piece.start, piece.stop
            film = self.film(e[c0:c1]).chunk(2 * R, dim=-1)
            for r, (src, dst) in enumerate(edge_indices):
                if piece.grid is not None:
                    ol, oh, il, ih = piece.grid
                    k, w = oh - ol, ih - il
                    h_d, h_s = _grid_terms(piece.grid, piece.reversed[r], h[2 * r], h[2 * r + 1])
                    m = self.message(h_d, h_s, film[2 * r].view(k, w, d), film[2 * r + 1].view(k, w, d), r)
                    # targets along axis 0 (the block's outputs) or 1 (its inputs, for reversed edges)
                    axis, t = (0, slice(il, ih)) if piece.reversed[r] else (1, slice(ol, oh))
                    lo_t, hi_t = lo[r][t], hi[r][t]
                    torch.minimum(lo_t, m.amin(axis), out=lo_t)
                    torch.maximum(hi_t, m.amax(axis), out=hi_t)
                    mean_c = m.mean(axis)
                    m2_c = (m - mean_c.unsqueeze(axis)).square_().sum(axis)
                    _merge_moments(count[r][t], mean[r][t], m2[r][t], m.shape[axis], mean_c, m2_c)
                    continue
                src, dst = src[c0:c1], dst[c0:c1]
                m = self.message(h[2 * r].index_select(0, dst), h[2 * r + 1].index_select(0, src), film[2 * r],
                                 film[2 * r + 1], r)
                at = dst[:, None].expand_as(m)
                lo[r].scatter_reduce_(0, at, m, "amin")
                hi[r].scatter_reduce_(0, at, m, "amax")
                n_c = e.new_zeros(N, 1).index_add_(0, dst, e.new_ones(dst.shape[0], 1))
                mean_c = e.new_zeros(N, d).index_add_(0, dst, m).div_(n_c.clamp(min=1))
                m2_c = e.new_zeros(N, d).index_add_(0, dst, (m - mean_c.index_select(0, dst)).square_())
                _merge_moments(count[r], mean[r], m2[r], n_c, mean_c, m2_c)
        out = []
        for r in range(R):
            has = deg[r] > 0
            std = torch.sqrt(F.relu(m2[r] / deg[r].clamp(min=1)) + self.eps) * has.to(e.dtype)
            empty = ~has  # no incoming edge: zeros, as the one-pass aggregate gives
            out.append(self.update(torch.cat([mean[r], lo[r].masked_fill_(empty, 0), hi[r].masked_fill_(empty, 0),
                                              std], dim=-1), amp[r]))
        return out

    def message(self, h_dst_i: Tensor, h_src_j: Tensor, scale: Tensor, shift: Tensor, rel: int) -> Tensor:
        """``[E, d]``: ``(1 + scale(e_ij)) * MLP([x_i, x_j]) + shift(e_ij)`` for relation ``rel``."""
        return (1 + scale) * self.msg_out[rel](F.silu(h_dst_i + h_src_j)) + shift

    def aggregate(self, inputs: Tensor, index: Tensor, dim_size: int, deg: Tensor) -> Tensor:
        """``[E, d] -> [N, 4d]``: mean, min, max, std of the messages arriving at each node (zeros if none)."""
        count = deg.clamp(min=1)
        mean = scatter(inputs, index, dim=0, dim_size=dim_size, reduce="sum") / count
        # Two-pass variance: no cancellation, non-negative by construction (relu kept as a guard).
        var = scatter((inputs - mean[index]).square(), index, dim=0, dim_size=dim_size, reduce="sum") / count
        std = torch.sqrt(F.relu(var) + self.eps) * (deg > 0).to(inputs.dtype)
        lo = scatter(inputs, index, dim=0, dim_size=dim_size, reduce="min")  # empty rows are 0
        hi = scatter(inputs, index, dim=0, dim_size=dim_size, reduce="max")
        return torch.cat([mean, lo, hi, std], dim=-1)

    def update(self, aggr_out: Tensor, amp: Tensor) -> Tensor:
        """``[N, 4d] -> [N, 8d]``: identity and amplification scalers."""
        return torch.cat([aggr_out, aggr_out * amp], dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, relations={self.relations})"


def _grid_terms(grid: tuple[int, int, int, int], reversed_: bool, at_target: Tensor, at_source: Tensor
                ) -> tuple[Tensor, Tensor]:
    """Per-node terms ``[N, d]`` of an edge's target and source as broadcast views over a dense piece's ``[k, m]``
    grid (outputs ``out_lo .. out_hi - 1`` x inputs ``in_lo .. in_hi - 1``): ``[k, 1, d]`` and ``[1, m, d]``."""
    ol, oh, il, ih = grid
    outputs, inputs = slice(ol, oh), slice(il, ih)
    if reversed_:  # targets are the block's inputs, sources its outputs
        return at_target[inputs].unsqueeze(0), at_source[outputs].unsqueeze(1)
    return at_target[outputs].unsqueeze(1), at_source[inputs].unsqueeze(0)


def _merge_moments(count: Tensor, mean: Tensor, m2: Tensor, n_c: Tensor | int, mean_c: Tensor, m2_c: Tensor) -> None:
    """Merge a piece's message count ``n_c``, mean and sum of squared deviations into the running ones (views
    ``[n, 1]``, ``[n, d]``, ``[n, d]``, updated in place): Chan et al.'s pairwise update. ``mean_c`` is consumed."""
    n_new = count + n_c
    delta = mean_c.sub_(mean)
    w = n_c / n_new.clamp(min=1)
    mean.addcmul_(delta, w)
    m2.add_(m2_c).addcmul_(delta.square_(), w * count)
    count.copy_(n_new)


class NGGNN(GraphEncoder):
    """NG-GNN encoder: input embeddings, then ``depth`` :class:`NGGNNLayer` s.

    Args:
        node_in, edge_in, hidden, depth, kmax, fourier: the common encoder arguments (see :class:`GraphEncoder`).
        bidirectional: also pass messages along reversed edges (default True; an optimizer needs information from
            later layers).
        shared_reverse: with ``bidirectional``, treat the reversed edges as the *same* relation (one message MLP and
            FiLM map for both directions, as the published reference code does) instead of a second relation. The
            graph is then symmetrised: every edge ``j -> i`` gets a twin ``i -> j``, and each edge's input is
            ``[e_ij, e_ji, e_ij + e_ji]`` (``e_ji`` is zero for the twin's original direction: a neural graph has no
            reciprocal edges), so the two directions are told apart by their features alone. Edge states are kept
            and updated for all ``2E`` edges; the forward edges' states are returned.
        avg_log_deg: ``delta`` of the amplification scaler; ``None`` (default) computes it per graph from the graph
            itself (see the module docstring).
        eps: variance epsilon of the std aggregator.
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> (node_emb [N, hidden],
    edge_emb [E, hidden])``.
    """

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, positional: str = "index", *, bidirectional: bool = True, avg_log_deg: float | None = None,
                 eps: float = 1e-6, shared_reverse: bool = False):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if shared_reverse and not bidirectional:
            raise ValueError("shared_reverse=True adds the reversed edges as the same relation: it needs "
                             "bidirectional=True")
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be positive, got hidden={hidden}, depth={depth}")
        if avg_log_deg is not None and not (math.isfinite(avg_log_deg) and avg_log_deg > 0):
            raise ValueError(f"avg_log_deg must be a positive number or None, got {avg_log_deg}")
        self.bidirectional, self.avg_log_deg, self.shared_reverse = bidirectional, avg_log_deg, shared_reverse
        self.embed = GraphInputEmbedding(node_in, 3 * edge_in if shared_reverse else edge_in, hidden, fourier,
                                         positional=positional)
        relations = 2 if bidirectional and not shared_reverse else 1
        self.layers = nn.ModuleList(NGGNNLayer(hidden, relations, eps) for _ in range(depth))

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, graph: NeuralGraph, node_feats: Tensor, edge_feats: Tensor | SlotFeatures
                ) -> tuple[Tensor, Tensor]:
        self.check_inputs(graph, node_feats, edge_feats)
        if self.shared_reverse:
            x, e = self.embed.embed_nodes(graph, node_feats), self._twin_edge_states(graph, edge_feats)
            rels = [torch.cat([graph.edge_index, graph.reverse_edge_index()], 1)]
        else:
            x, e = self.embed(graph, node_feats, edge_feats)
            rels = relation_edge_indices(graph, self.bidirectional)
        scalers = [degree_scalers(graph, ei, x.dtype, self.avg_log_deg) for ei in rels]
        deg, amp = [s[0] for s in scalers], [s[1] for s in scalers]
        pieces = None  # the optimizer step on a large graph: dense blocks as grids (see edge_pieces)
        if DENSE_GRIDS and len(row_chunks(e.shape[0], e.device)) > 1:
            pieces = edge_pieces(graph, len(rels), self.shared_reverse, chunk_size(e.device))
        for i, layer in enumerate(self.layers):
            # The twins' states after the last layer are never read: only the forward edges' are updated there.
            last = i == len(self.layers) - 1
            x, e = layer(x, e, rels, deg, amp, edge_rows=graph.num_edges if last and self.shared_reverse else None,
                         pieces=pieces)
        return x, e[: graph.num_edges]

    def _twin_edge_states(self, graph: NeuralGraph, edge_feats: Tensor | SlotFeatures) -> Tensor:
        """``[2E, d]``: the embeddings of ``[e_ij, 0, e_ij]`` (forward edges), then of ``[0, e_ij, e_ij]`` (twins)."""
        proj = self.embed.edge_proj
        if isinstance(edge_feats, SlotFeatures) and not proj.fourier:
            # Linear in the features: [f, 0, f] W^T = f (W_1 + W_3)^T, so both directions come from one product
            # over the occupied slots, never from [E, 3 K F] inputs.
            w1, w2, w3 = proj.linear.weight.chunk(3, dim=1)
            bias = proj.linear.bias
            if not torch.is_grad_enabled():
                # The optimizer step: each direction accumulated straight into its half of the [2E, d] states (no
                # [E, 2d] product, no concatenation: a third of the peak on a large dense layer), each half started
                # from the kind table shifted by the bias (no [E, d] kind embedding made first).
                E = graph.num_edges
                e = bias.new_empty(2 * E, bias.shape[0])
                shifted = self.embed.edge_kind.weight + bias
                for half, w in ((e[:E], w1 + w3), (e[E:], w2 + w3)):
                    torch.index_select(shifted, 0, graph.edge_kind, out=half)
                    edge_feats.project(w, into=half)
                return e
            kind = self.embed.edge_kind(graph.edge_kind)
            both = edge_feats.project(torch.cat([w1 + w3, w2 + w3], 0), torch.cat([bias, bias]))
            fwd, twin = both.chunk(2, dim=1)
            return torch.cat([fwd + kind, twin + kind], 0)
        if isinstance(edge_feats, SlotFeatures):
            edge_feats = edge_feats.dense()
        kind = self.embed.edge_kind(graph.edge_kind)
        zero = torch.zeros_like(edge_feats)
        e = proj(torch.cat([edge_feats, zero, edge_feats], 1)) + kind
        e_twin = proj(torch.cat([zero, edge_feats, edge_feats], 1)) + kind
        return torch.cat([e, e_twin], 0)  # forward edges, then their twins
