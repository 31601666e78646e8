"""Dynamic neural graph encoder (DNG; Wu et al., "Dynamic Neural Graph", TMLR 2026).

The network is read as a sequence of snapshots, one per layer ``t = 1 .. L-1`` in topological order. Every node
keeps a memory vector; at step ``t`` the nodes of layer ``t`` receive messages from the *current* memories of the
sources of layer ``t``'s edges (all in earlier layers, hence already updated), sum (or average) them and update
their memory with a recurrent cell, ``s_i = GRUCell(m_i, s_i(0))``. Edges are never updated; only the current
snapshot's messages are formed at a time, and every node is updated exactly once per traversal.

Message (:class:`KernelMessage`) -- "weight times activation", never looking at the target node::

    m_ij = sum_k A(f_ijk) * (W_k s_j)  +  B(sum_k f_ijk)

* ``f_ijk`` ``[F + 4]``: the ``F`` features of kernel slot ``k`` of the edge (``edge_feats`` reshaped to
  ``[E, kmax**2, F]``), the slot's fixed kernel value (``graph.edge_constant``: 1 at the centre of identity edges,
  so residual / flatten copies carry "weight 1" exactly as in the network) and a one-hot of the edge kind
  (weight / norm diagonal / identity) set on occupied slots only (a slot holding a parameter or a fixed value).
  The kind columns of ``A`` and ``B`` are thus a learned per-kind FiLM scale and shift (the message's edge-kind
  embedding): they tell weight, norm and identity edges apart and act as the bias of occupied slots.
* ``A`` and ``B`` have no bias, so an empty slot (all zeros: the padding of a small kernel, the off-centre slots of
  a linear weight) contributes exactly nothing; a linear layer reduces to the single-head message at the centre.
  (``B`` being linear, the per-slot shifts are summed before it is applied.)
* ``W_k``: one linear map per kernel position (multi-head message; heads summed), applied once per *node*
  (``[n, K, d]``) and gathered by edge. Each layer only evaluates the heads of slots occupied in that layer (an MLP
  layer costs one head, not ``kmax**2``); skipped heads are exactly zero. ``heads="shared"`` (the ablation of the
  paper's multi-head message) ties them: one ``W`` for every slot, ``m_ij = (sum_k A(f_ijk)) * (W s_j) +
  B(sum_k f_ijk)``; its ``[n, 1, d]`` projection is expanded to ``[n, K, d]``, so every path below is unchanged.
  With kmax 1 (MLPs, INRs) there is one slot and both are the same message.
* The GraphInputEmbedding edge state ``e_ij`` (projected edge features + edge-kind embedding) is not needed by the
  message (the slots carry the same information, entry by entry); it feeds the edge decoder.

Aggregation: sum (default) or mean. The message is linear in ``f`` for fixed sender memories, so for a dense layer
(most sender/receiver pairs are edges: every conv / linear layer of a single graph) the sum a node receives is one
matrix product of the layer's ``[receivers, senders * k]`` feature block with the senders' projections,
``sum_f A_f * (block_f @ W s)``, never materialising ``[E_t, k, d]``; sparse layers (norm diagonals, flatten copies,
large batches of graphs) use per-edge messages and a scatter-sum. Both give the same sums (tested).

Backward traversal (``bidirectional=True``, as graph hypernetworks traverse networks; it matters for optimisers, where gradient
information flows from the output to the input): a second :class:`LayerTraversal` with its own message maps and
cell, processing ``t = L-1 .. 1``. Each node's backward memory starts from its forward memory. At step ``t`` the
nodes of layer ``t`` first update their memory from the messages accumulated so far (they have received them all:
their outgoing edges go to layers ``> t``, processed earlier, residual edges included), then send messages along
the reversed edges of layer ``t`` to their sources, which accumulate them; layer 0 updates last. So every node is
updated once in each direction, after everything it depends on. The node embedding is a linear map of
``[forward memory, backward memory]`` (just the forward memory, mapped, when unidirectional).

Edge embeddings: an MLP (:class:`EdgeDecoder`) over ``[node_emb(src), node_emb(dst), e_ij]``.

``depth`` is the number of linear layers of that edge decoder. DNG is one traversal per direction by design (the
paper's cost argument), so ``depth`` does not stack traversals; a deeper decoder is the cheap place for capacity.
``rounds > 1`` (an ablation, not the paper's design) repeats the traversals, each round with its own maps and cells
and starting from the previous round's final memories, so every node is updated ``rounds`` times per direction, as
NG-GNN's nodes are updated once per layer.

Cost choices: the ``[E, K, F + 4]`` per-slot features are never built. Each layer's block (or, for a per-edge
layer, its ``[E_t, k, F + 4]`` slot features) is assembled from the feature rows on first use and shared by both
traversals; with slot-sparse input (:class:`~l2o.graph.SlotFeatures`, one row per parameter element) the block of
a fully connected linear or conv layer *is* its weight's rows (a view, no copy). The structure channels (fixed
kernel value, kind one-hot) are constant: a layer whose every block position holds the same ones (a fully connected
weight layer) is handled by one vector instead of a block. Where to find all of this (:class:`_Plan`) is derived
from the structure once per graph and cached on it. Everything with ``d`` channels is per layer and per node where
possible. The Python loop is over layers (about ten tensor ops each), never over nodes or edges.

The edge decoder's first map is applied to ``e_ij`` only, and both it and the input projection are linear (without
Fourier features), so they are composed once per forward (``[d, d] x [d, K F]``) and applied to the features
directly; a linear map applied to the encoder's outputs (:meth:`DynamicGraphEncoder.encode_projected`, the update
head's projection) is likewise folded into the decoder's last layer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import EDGE_KINDS, ROLE_INPUT, NeuralGraph, SlotFeatures
from ..runtime import GatheredRows, per_row_chunks
from .base import GraphEncoder
from .embeddings import GraphInputEmbedding

AGGREGATIONS = ("sum", "mean")
RECURRENCES = ("gru", "rnn", "none")
HEADS = ("slot", "shared")  # one message map W_k per kernel slot, or one W for every slot


STRUCTURE = 1 + len(EDGE_KINDS)  # per-slot structure channels: fixed kernel value, edge-kind one-hot


def occupied_slots(graph: NeuralGraph) -> torch.Tensor:
    """``[E, K]`` bool: a parameter element or a fixed kernel value (identity edges) sits in the slot."""
    E, K, N = graph.num_edges, graph.kernel_slots, graph.num_nodes
    # graph.slot indexes cat([nodes, edges * K]).
    occ = torch.zeros(N + E * K, dtype=torch.bool, device=graph.device).index_fill_(0, graph.slot, True)
    return occ[N:].view(E, K) | (graph.edge_constant != 0)


def slot_structure(graph: NeuralGraph, dtype: torch.dtype) -> torch.Tensor:
    """``[E, K, 4]``: the structure channels of every slot, ``[fixed kernel value, kind one-hot]``; the one-hot is
    set on occupied slots only (:func:`occupied_slots`), so empty slots are all zero."""
    occ = occupied_slots(graph).to(dtype)
    kind = F.one_hot(graph.edge_kind, len(EDGE_KINDS)).to(dtype)
    return torch.cat([graph.edge_constant.to(dtype)[..., None], occ[..., None] * kind[:, None, :]], -1)


def slot_features(graph: NeuralGraph, edge_feats: torch.Tensor) -> torch.Tensor:
    """``edge_feats [E, K*F]`` -> per-slot features ``[E, K, F + 4]``: ``[features, fixed kernel value, kind one-hot]``.

    The kind one-hot (weight / norm / identity) is set on *occupied* slots only (a parameter element or a fixed
    kernel value sits there), so empty slots are all zero: ``scatter`` leaves their features zero too. (The encoder
    itself never builds this tensor: see :class:`_LayerInputs`.)
    """
    E, K = graph.num_edges, graph.kernel_slots
    return torch.cat([edge_feats.reshape(E, K, -1), slot_structure(graph, edge_feats.dtype)], -1)


class KernelMessage(nn.Module):
    """Multi-head FiLM message ``m_ij = sum_k A(f_ijk) * (W_k s_j) + B(sum_k f_ijk)`` (module docstring).

    Args:
        hidden: memory size ``d``. slots: ``K = kmax**2`` kernel positions. slot_in: features per slot ``F + 4``.
        heads: ``"slot"`` (default): one map ``W_k`` per slot; ``"shared"``: one ``W`` for every slot (``W_k = W``).
    Submodules (hand-settable): ``slot_scale`` (A: ``slot_in -> d``), ``slot_shift`` (B), both without bias so
    empty slots add nothing; ``source`` (``[W_0 .. W_{K-1}]``: ``d -> K * d``, or ``W``: ``d -> d`` when shared; no
    bias: it would only add a term linear in the edge features, which B already is).

    The message is linear in the slot features ``f`` for fixed sender memories, so the sum of the messages a node
    receives can be computed either per edge (:meth:`message`, then a scatter-sum) or, for a dense layer, as one
    matrix product of the layer's ``[receivers, senders * K]`` feature block with the senders' projections
    (:meth:`propagate` chooses; :meth:`propagate_block` takes the block itself); both give the same sum.
    """

    def __init__(self, hidden: int, slots: int, slot_in: int, heads: str = "slot"):
        super().__init__()
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        self.hidden, self.slots, self.slot_in, self.heads = hidden, slots, slot_in, heads
        self.slot_scale = nn.Linear(slot_in, hidden, bias=False)
        self.slot_shift = nn.Linear(slot_in, hidden, bias=False)
        self.source = nn.Linear(hidden, (1 if heads == "shared" else slots) * hidden, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.slot_scale, self.slot_shift, self.source):
            lin.reset_parameters()

    def project(self, memory: torch.Tensor) -> torch.Tensor:
        """Sender side of every head, once per node: ``[n, d] -> [n, K, d]`` (shared heads: the one ``[n, 1, d]``
        projection expanded, a view, so the per-edge, block and slot-selection paths need no case of their own)."""
        proj = self.source(memory).view(memory.shape[0], -1, self.hidden)
        return proj.expand(-1, self.slots, -1) if self.heads == "shared" else proj

    def message(self, sender: torch.Tensor, slot_feats: torch.Tensor) -> torch.Tensor:
        """Per-edge messages: ``sender [E_t, k, d]`` (projected sender memory, heads in use), ``slot_feats
        [E_t, k, slot_in]`` -> ``[E_t, d]``."""
        return (self.slot_scale(slot_feats) * sender).sum(1) + self.slot_shift(slot_feats.sum(1))

    def propagate(self, sender_proj: torch.Tensor, slot_feats: torch.Tensor, send: torch.Tensor,
                  receive: torch.Tensor, num_receivers: int, dense: bool) -> torch.Tensor:
        """Sum of the messages each receiver gets in one snapshot.

        Args:
            sender_proj: ``[n_s, k, d]`` projections of the sender range (heads in use).
            slot_feats: ``[E_t, k, slot_in]``. send, receive: ``[E_t]`` local indices of each edge's sender and
                receiver. num_receivers: ``n_r``. dense: use the block matrix product (good when most sender /
                receiver pairs are edges) instead of per-edge messages.
        Returns: ``[n_r, d]``.
        """
        n_s, k, d = sender_proj.shape
        E_t = slot_feats.shape[0]
        if not dense:
            msg = self.message(sender_proj.index_select(0, send), slot_feats)
            return msg.new_zeros(num_receivers, d).index_add(0, receive, msg)
        f = slot_feats.shape[-1]
        # index_add, not a copy: a pair may have several edges (e.g. a weight and a residual identity edge), and
        # the message is linear in the features, so adding their features adds their messages.
        block = slot_feats.new_zeros(num_receivers * n_s, k * f).index_add(
            0, receive * n_s + send, slot_feats.reshape(E_t, k * f))
        return self.propagate_block(sender_proj, block.view(num_receivers, n_s, k, f))

    def propagate_block(self, sender_proj: torch.Tensor, feats: torch.Tensor, structure: torch.Tensor | None = None,
                        reverse: bool = False) -> torch.Tensor:
        """Sum of the messages each receiver gets in one dense snapshot, from the layer's feature block.

        Args:
            feats: ``[n_t, n_s, k, c]``: the summed slot features of the edges from sender ``s`` to receiver ``t``
                (zeros where there is none), over the first ``c`` slot channels.
            structure: the remaining ``slot_in - c`` channels: ``[n_t, n_s, k, slot_in - c]``, or one vector
                ``[slot_in - c]`` when every position of the block holds the same one (a fully connected weight
                layer: the weight-kind one-hot everywhere), or None when ``c == slot_in``.
            sender_proj: ``[n_s, k, d]`` (or ``[n_t, k, d]`` with ``reverse``).
            reverse: messages run from the block's rows ``t`` to its columns ``s`` (the backward traversal).
        Returns: ``[n_s or n_t, d]`` (columns with ``reverse``, rows without).
        """
        n_t, n_s, k, c = feats.shape
        scale, shift = self.slot_scale.weight, self.slot_shift.weight  # [d, slot_in]
        out = _block_messages(feats, sender_proj, scale[:, :c], shift[:, :c], reverse)
        if structure is None:
            return out
        if structure.dim() == 1:
            # sum over the block of (A v) * proj + B v = (A v) * (sum of all projections) + (count) * B v.
            count = (n_t if reverse else n_s) * k
            return out + (scale[:, c:] @ structure) * sender_proj.sum((0, 1)) + count * (shift[:, c:] @ structure)
        return out + _block_messages(structure, sender_proj, scale[:, c:], shift[:, c:], reverse)


def _block_messages(block: torch.Tensor, proj: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    reverse: bool) -> torch.Tensor:
    """``sum_{s,k} A block[t, s, k] * proj[s, k] + B sum_{s,k} block[t, s, k]`` per row ``t`` (per column ``s``, over
    ``t``, with ``reverse``): ``block [n_t, n_s, k, c]``, ``proj [n_s or n_t, k, d]``, ``scale``, ``shift [d, c]``.

    The block is contracted with the projections in one product (``A`` multiplies elementwise after it: the message
    is ``A(f) * (W s)``), read where it lies when ``k == 1``: batched over receivers ``[c, n_s] x [n_s, d]`` forward,
    a single ``[d, n_t] x [n_t, n_s * c]`` in reverse. A column of ones appended to the projections makes the same
    product return each receiver's feature sums (the input of ``B``) without another pass over the block.
    """
    n_t, n_s, k, c = block.shape
    d = proj.shape[-1]
    ext = torch.cat([proj.reshape(-1, d), proj.new_ones(proj.shape[0] * k, 1)], 1)  # [senders * k, d + 1]
    if not reverse:
        out = torch.matmul(block.view(n_t, n_s * k, c).transpose(1, 2), ext)  # [n_t, c, d + 1]
    elif k == 1:
        out = (ext.t() @ block.view(n_t, n_s * c)).view(d + 1, n_s, c).permute(1, 2, 0)  # [n_s, c, d + 1]
    else:
        out = torch.matmul(block.permute(1, 3, 0, 2).reshape(n_s, c, n_t * k), ext)
    return (out[..., :d] * scale.t()).sum(1) + out[..., d] @ shift.t()


class MemorySum(nn.Module):
    """The no-recurrence ablation: ``s' = s + m``."""

    def forward(self, message: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return memory + message


def _make_cell(recurrence: str, hidden: int) -> nn.Module:
    if recurrence == "gru":
        return nn.GRUCell(hidden, hidden)
    if recurrence == "rnn":
        return nn.RNNCell(hidden, hidden, nonlinearity="tanh")
    return MemorySum()


def _contiguous_range(rows: torch.Tensor, pos: torch.Tensor, size: int) -> tuple[int, int] | None:
    """``(a, a + size)`` when row ``a + i`` goes to position ``i`` for every ``i`` (the block is a view), else None."""
    n = rows.numel()
    if n != size or n == 0:
        return None
    ar = torch.arange(n, device=rows.device)
    a = int(rows[0])
    return (a, a + n) if bool((rows == ar + a).all()) and bool((pos == ar).all()) else None


class _LayerPlan:
    """Where layer ``t``'s inputs go (see :class:`_Plan`). Positions index the layer's flattened block
    ``[n_t, n_s, k]`` (dense layers: receiver, sender, slot) or ``[E_t, k]`` (per-edge layers: edge, slot).

    ``view``: ``(a, b)`` when feature rows ``a:b`` *are* the block in order (no copy), else ``rows`` and ``pos``.
    ``uniform``: the structure vector ``[4]`` held by every position, else ``struct_pos`` and ``struct_val``.
    """

    def __init__(self, slots, k, dense, shape, size, send, receive):
        self.slots, self.k, self.dense, self.shape, self.size = slots, k, dense, shape, size
        self.send, self.receive = send, receive
        self.view: tuple[int, int] | None = None
        self.rows = self.pos = None
        self.uniform: torch.Tensor | None = None
        self.struct_pos = self.struct_val = None


class _Plan:
    """Host-side per-layer facts of one graph and one input layout, built once and cached on the graph.

    ``node_ptr``, ``edge_ptr`` [L + 1]; ``lo[t]``: lowest layer holding a source of layer ``t``'s edges (messages
    only involve layers ``lo[t] .. t``); ``slots[t]``: kernel slots occupied in layer ``t`` (None = all of them);
    ``dense[t]``: whether layer ``t``'s edges fill at least ``dense_density`` of its (layer ``t``) x (layers
    ``lo[t] .. t-1``) block; ``layers[t]``: a :class:`_LayerPlan` (None for a layer without edges).

    ``layout``: what the feature rows are. ``"elements"``: the graph's parameter elements ``[P, F]``
    (:class:`~l2o.graph.SlotFeatures`; a row sits on one edge slot, or on a node); ``"dense"``: the ``E * K`` rows of
    ``edge_feats [E, K * F]`` (row ``e * K + k``; rows of unoccupied slots are read too, as given).
    """

    def __init__(self, graph: NeuralGraph, layout: str, dense_density: float):
        if layout not in ("elements", "dense"):
            raise ValueError(f"unknown input layout {layout!r}")
        L, K = graph.num_layers, graph.kernel_slots
        lo = torch.full((L,), L, dtype=torch.long, device=graph.device)
        lo = lo.scatter_reduce(0, graph.edge_layer, graph.node_layer[graph.edge_index[0]], reduce="amin")
        occ = occupied_slots(graph)
        used = torch.zeros(L, K, device=graph.device).index_add_(0, graph.edge_layer, occ.float())
        # Occupied (edge, slot) pairs with their structure channels, ordered by edge (so by layer).
        pair_e, pair_k = occ.nonzero().unbind(1)
        self._pairs = (pair_e, pair_k, slot_structure(graph, graph.edge_constant.dtype)[pair_e, pair_k])
        self._rows = _edge_rows(graph) if layout == "elements" else None
        parts = [graph.layer_node_ptr, graph.layer_edge_ptr, lo, (used > 0).long().flatten(),
                 torch.searchsorted(pair_e, graph.layer_edge_ptr)]
        if self._rows is not None:
            parts.append(torch.searchsorted(self._rows[3], torch.arange(L + 1, device=graph.device)))
        info = torch.cat(parts).tolist()  # the one host sync
        self.num_layers, self.layout = L, layout
        self.node_ptr, self.edge_ptr = info[: L + 1], info[L + 1: 2 * L + 2]
        self.lo = info[2 * L + 2: 3 * L + 2]
        flags = info[3 * L + 2: 3 * L + 2 + L * K]
        self._pair_ptr = info[3 * L + 2 + L * K: 4 * L + 3 + L * K]
        self._row_ptr = info[4 * L + 3 + L * K:]
        self.slots: list[torch.Tensor | None] = []
        self.dense: list[bool] = []
        self.layers: list[_LayerPlan | None] = []
        for t in range(L):
            in_use = [k for k in range(K) if flags[t * K + k]]
            self.slots.append(None if len(in_use) == K else torch.tensor(in_use, dtype=torch.long,
                                                                          device=graph.device))
            n_r, n_s = self.node_ptr[t + 1] - self.node_ptr[t], self.node_ptr[t] - self.node_ptr[min(self.lo[t], t)]
            edges = self.edge_ptr[t + 1] - self.edge_ptr[t]
            self.dense.append(edges > 0 and edges >= dense_density * n_r * n_s)
            self.layers.append(self._layer(graph, t, in_use) if edges else None)
        del self._pairs, self._rows  # only needed while building

    def _layer(self, graph: NeuralGraph, t: int, in_use: list[int]) -> _LayerPlan:
        """Where layer ``t``'s feature rows and structure channels go in its block (or per-edge slot features)."""
        K, dev, dense = graph.kernel_slots, graph.device, self.dense[t]
        n0, n1, e0, e1 = self.node_ptr[t], self.node_ptr[t + 1], self.edge_ptr[t], self.edge_ptr[t + 1]
        n_s, k = n0 - self.node_ptr[self.lo[t]], len(in_use)
        lut = torch.full((K,), -1, dtype=torch.long, device=dev)  # global slot -> position among the slots in use
        lut[torch.tensor(in_use, dtype=torch.long, device=dev)] = torch.arange(k, device=dev)
        send, receive = graph.edge_index[0, e0:e1] - self.node_ptr[self.lo[t]], graph.edge_index[1, e0:e1] - n0

        def position(e: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
            if dense:  # (receiver, sender, slot) in the [n_t, n_s, k] block
                return (receive[e - e0] * n_s + send[e - e0]) * k + lut[kk]
            return (e - e0) * k + lut[kk]  # (edge, slot) in [E_t, k]

        shape = (n1 - n0, n_s, k) if dense else (e1 - e0, k)
        lay = _LayerPlan(self.slots[t], k, dense, shape, int(torch.Size(shape).numel()), send, receive)
        if self._rows is not None:
            r0, r1 = self._row_ptr[t], self._row_ptr[t + 1]
            rows, re, rk = (x[r0:r1] for x in self._rows[:3])
        else:
            re = torch.arange(e0, e1, device=dev).repeat_interleave(k)
            rk = torch.tensor(in_use, dtype=torch.long, device=dev).repeat(e1 - e0)
            rows = re * K + rk
        pos = position(re, rk)
        lay.view = _contiguous_range(rows, pos, lay.size)
        if lay.view is None:
            lay.rows, lay.pos = rows, pos
        p0, p1 = self._pair_ptr[t], self._pair_ptr[t + 1]
        pair_e, pair_k, pair_val = (x[p0:p1] for x in self._pairs)
        spos = position(pair_e, pair_k)
        if (p1 - p0 == lay.size > 0 and torch.unique(spos).numel() == lay.size
                and bool((pair_val == pair_val[0]).all())):
            lay.uniform = pair_val[0]
        else:
            lay.struct_pos, lay.struct_val = spos, pair_val
        return lay


def _edge_rows(graph: NeuralGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, edge, slot, layer)`` of the parameter elements held by edges, ordered by layer, then by row."""
    N, K = graph.num_nodes, graph.kernel_slots
    on_edge = (graph.slot >= N).nonzero().squeeze(1)
    rel = graph.slot.index_select(0, on_edge) - N
    order = torch.sort(graph.edge_layer.index_select(0, rel // K), stable=True).indices
    rows, rel = on_edge.index_select(0, order), rel.index_select(0, order)
    edge = rel // K
    return rows, edge, rel % K, graph.edge_layer.index_select(0, edge)


class _LayerInputs:
    """One forward's inputs of every layer, built from the feature rows on first use and shared by both
    traversals: the feature block (a view of the rows when the plan allows) and the structure channels."""

    def __init__(self, plan: _Plan, values: torch.Tensor):
        self.plan, self.values = plan, values
        self._feats: dict[int, torch.Tensor] = {}
        self._slot_feats: dict[int, torch.Tensor] = {}

    def features(self, t: int) -> torch.Tensor:
        """``[size_t, F]``: summed feature rows per block position of layer ``t``."""
        if t not in self._feats:
            lay, v = self.plan.layers[t], self.values
            if lay.view is not None:
                self._feats[t] = v[lay.view[0]: lay.view[1]]
            else:
                # index_add: in a dense block several edges may share a position (a weight and a residual identity
                # edge between the same neurons); the message is linear in the features, so their sum is right.
                self._feats[t] = v.new_zeros(lay.size, v.shape[1]).index_add_(
                    0, lay.pos, v.index_select(0, lay.rows))
        return self._feats[t]

    def structure(self, t: int) -> torch.Tensor:
        """``[4]`` (the same at every position) or ``[size_t, 4]``: the structure channels of layer ``t``."""
        lay, v = self.plan.layers[t], self.values
        if lay.uniform is not None:
            return lay.uniform.to(v.dtype)
        return v.new_zeros(lay.size, STRUCTURE).index_add_(0, lay.struct_pos, lay.struct_val.to(v.dtype))

    def slot_feats(self, t: int) -> torch.Tensor:
        """``[E_t, k, F + 4]``: per-edge slot features of a layer without a dense block."""
        if t not in self._slot_feats:
            lay = self.plan.layers[t]
            feats, struct = self.features(t), self.structure(t)
            if struct.dim() == 1:
                struct = struct.expand(lay.size, STRUCTURE)
            self._slot_feats[t] = torch.cat([feats, struct], 1).view(*lay.shape, -1)
        return self._slot_feats[t]

    def receive(self, message: KernelMessage, t: int, sender_proj: torch.Tensor, reverse: bool) -> torch.Tensor:
        """Summed messages of layer ``t``'s edges: at its nodes ``[n_t, d]``, or, with ``reverse``, at the nodes of
        layers ``lo[t] .. t-1`` along the reversed edges ``[n_s, d]``."""
        lay = self.plan.layers[t]
        if lay.dense:
            n_t, n_s, k = lay.shape
            block = self.features(t).view(n_t, n_s, k, -1)
            struct = self.structure(t)
            if struct.dim() > 1:
                struct = struct.view(n_t, n_s, k, -1)
            return message.propagate_block(sender_proj, block, struct, reverse)
        nptr = self.plan.node_ptr
        n_t, n_s = nptr[t + 1] - nptr[t], nptr[t] - nptr[self.plan.lo[t]]
        send, receive = (lay.receive, lay.send) if reverse else (lay.send, lay.receive)
        return message.propagate(sender_proj, self.slot_feats(t), send, receive, n_s if reverse else n_t,
                                 dense=False)


def _select(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return x if index is None else x.index_select(1, index)


class LayerTraversal(nn.Module):
    """One pass over the snapshots with its own message maps and memory cell.

    Forward (``reverse=False``): ``t = 1 .. L-1``, layer ``t`` receives along its incoming edges.
    Backward (``reverse=True``): ``t = L-1 .. 0``, layer ``t`` updates from the messages accumulated from later
    layers, then sends along the reversed edges of layer ``t``.
    Submodules: ``message`` (:class:`KernelMessage`, with ``heads`` message maps), ``cell`` (``nn.GRUCell``,
    ``nn.RNNCell`` or :class:`MemorySum`).
    """

    def __init__(self, hidden: int, slots: int, slot_in: int, aggregation: str = "sum", recurrence: str = "gru",
                 reverse: bool = False, heads: str = "slot"):
        super().__init__()
        self.hidden, self.aggregation, self.recurrence, self.reverse = hidden, aggregation, recurrence, reverse
        self.message = KernelMessage(hidden, slots, slot_in, heads)
        self.cell = _make_cell(recurrence, hidden)

    def reset_parameters(self) -> None:
        self.message.reset_parameters()
        if hasattr(self.cell, "reset_parameters"):
            self.cell.reset_parameters()

    def _degree(self, graph: NeuralGraph, memory: torch.Tensor) -> torch.Tensor | None:
        """``[N, 1]`` number of messages each node receives (mean aggregation), else None."""
        if self.aggregation != "mean":
            return None
        receiver = graph.edge_index[0] if self.reverse else graph.edge_index[1]
        deg = torch.bincount(receiver, minlength=graph.num_nodes).clamp(min=1)
        return deg.to(memory.dtype)[:, None]

    def forward(self, graph: NeuralGraph, plan: _Plan, memory: torch.Tensor, inputs: _LayerInputs
                ) -> torch.Tensor:
        """``memory [N, d]`` (initial memories), ``inputs`` (the layers' slot features) -> final memories ``[N, d]``."""
        degree = self._degree(graph, memory)
        run = self._backward if self.reverse else self._forward
        return run(plan, memory, inputs, degree)

    def _forward(self, plan, memory, inputs, degree):
        L, nptr = plan.num_layers, plan.node_ptr
        out = [memory[nptr[0]: nptr[1]]]  # input nodes keep their initial memory
        proj = [self.message.project(out[0])] if L > 1 else []
        for t in range(1, L):
            n0, n1, lo = nptr[t], nptr[t + 1], plan.lo[t]
            if plan.layers[t] is not None:
                # Senders live in layers lo .. t-1, all already updated.
                senders = _select(proj[lo] if lo == t - 1 else torch.cat(proj[lo:t], 0), plan.slots[t])
                agg = inputs.receive(self.message, t, senders, reverse=False)
                if degree is not None:
                    agg = agg / degree[n0:n1]
            else:
                agg = memory.new_zeros(n1 - n0, self.hidden)
            out.append(self.cell(agg, memory[n0:n1]))
            if t < L - 1:  # the last layer sends nothing
                proj.append(self.message.project(out[-1]))
        return torch.cat(out, 0)

    def _backward(self, plan, memory, inputs, degree):
        L, nptr = plan.num_layers, plan.node_ptr
        inbox: list[torch.Tensor | None] = [None] * L  # messages accumulated per layer
        out: list[torch.Tensor] = [memory] * L
        for t in range(L - 1, -1, -1):
            n0, n1 = nptr[t], nptr[t + 1]
            agg = memory.new_zeros(n1 - n0, self.hidden) if inbox[t] is None else inbox[t]
            if degree is not None:
                agg = agg / degree[n0:n1]
            out[t] = self.cell(agg, memory[n0:n1])
            if plan.layers[t] is not None:
                # Receivers (the edges' sources) live in layers lo .. t-1 and have not been updated yet.
                lo = plan.lo[t]
                senders = _select(self.message.project(out[t]), plan.slots[t])
                received = inputs.receive(self.message, t, senders, reverse=True)
                sizes = [nptr[u + 1] - nptr[u] for u in range(lo, t)]
                for u, part in zip(range(lo, t), received.split(sizes, 0)):
                    inbox[u] = part if inbox[u] is None else inbox[u] + part
        return torch.cat(out, 0)


class EdgeDecoder(nn.Module):
    """Edge embeddings ``MLP([node(src), node(dst), e_ij]) -> [E, d]`` with ``depth`` linear layers (SiLU between).

    The first layer is split: node parts are projected once per node and gathered per edge.
    """

    def __init__(self, hidden: int, depth: int):
        super().__init__()
        self.node_in = nn.Linear(hidden, 2 * hidden, bias=False)
        self.edge_in = nn.Linear(hidden, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))

    def reset_parameters(self) -> None:
        for lin in (self.node_in, self.edge_in, *self.layers):
            lin.reset_parameters()

    def forward(self, edge_index: torch.Tensor, node_emb: torch.Tensor, edge_state: torch.Tensor,
                out_weight: torch.Tensor | None = None) -> torch.Tensor:
        """``edge_index [2, E]``, ``node_emb [N, d]``, ``edge_state [E, d]`` -> ``[E, d]`` (``[E, D]`` mapped by
        ``out_weight [D, d]`` when given)."""
        return self.decode(edge_index, node_emb, self.edge_in(edge_state), out_weight)

    def decode(self, edge_index: torch.Tensor, node_emb: torch.Tensor, edge_input: torch.Tensor,
               out_weight: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` from ``edge_input = edge_in(edge_state) [E, d]``, a fresh tensor that is accumulated into.

        ``out_weight [D, d]`` (no bias) maps the result; it is folded into the last linear layer (two maps, one
        ``[E, d] x [d, D]`` product).
        """
        to_src, to_dst = self.node_in(node_emb).chunk(2, -1)
        # (weight, bias, SiLU before it) of each linear map after the first.
        maps = [(lin.weight, lin.bias, True) for lin in self.layers]
        if out_weight is not None:
            if maps:
                maps[-1] = (out_weight @ maps[-1][0], out_weight @ maps[-1][1], True)
            else:
                maps.append((out_weight, None, False))

        def mlp(rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
            # In place into the fresh input (autograd-safe: its producer's backward does not read it).
            h = rows.add_(to_src.index_select(0, src)).add_(to_dst.index_select(0, dst))
            for weight, bias, act in maps:
                h = F.linear(_silu(h) if act else h, weight, bias)
            return h

        # Without autograd, edge by edge in cache-sized chunks: the same arithmetic per edge.
        return per_row_chunks(mlp, edge_input, edge_index[0], edge_index[1])


def _silu(h: torch.Tensor) -> torch.Tensor:
    """SiLU of a fresh temporary, in place when no gradient is recorded (saves an ``[E, d]`` allocation)."""
    return F.silu(h, inplace=not torch.is_grad_enabled())


class DynamicGraphEncoder(GraphEncoder):
    """Dynamic neural graph encoder: a recurrent traversal of the network layer by layer (module docstring).

    Args:
        node_in: node feature size. edge_in: ``kmax**2 * F`` flattened edge features. hidden: memory size ``d``.
        depth: linear layers in the edge decoder (>= 1). kmax: kernel side. fourier: Fourier features of the input
            projections (:class:`GraphInputEmbedding`).
        bidirectional: add the backward (output -> input) traversal.
        aggregation: ``"sum"`` (default) or ``"mean"`` of the messages a node receives.
        recurrence: ``"gru"`` (default), ``"rnn"`` (tanh RNN cell) or ``"none"`` (memory + message sum; the ablation).
        heads: ``"slot"`` (default, the paper's multi-head message: one map ``W_k`` per kernel slot) or ``"shared"``
            (the ablation: one map ``W`` for every slot; the same message as ``"slot"`` with tied heads, and the
            same as it for kmax 1).
        rounds: traversals per direction (default 1, the paper's); round ``r > 1`` starts from round ``r - 1``'s
            final memories (backward if bidirectional, else forward) with its own message maps and cells.
        dense_density: a layer whose edges fill at least this fraction of its (receivers x senders) block sums its
            messages with one block matrix product instead of per-edge messages (same result; faster unless the
            block is mostly empty, e.g. a large batch of graphs). ``0`` always uses the block product, anything
            above 1 never does. ``None`` (default): ``slot_in / 48`` (the block costs ~ ``slot_in`` per pair, the
            per-edge path ~ ``d`` per edge; 48 is the crossover measured on CPU: 0.125 for 2 features per
            parameter, 0.375 for 14).
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> ([N, d], [E, d])``.
    Submodules: ``embed`` (input embedding), ``input_memory`` ``[d]`` (added to input nodes' initial memory),
    ``forward_traversal`` / ``backward_traversal`` (:class:`LayerTraversal`), ``later_rounds`` (a ``ModuleList`` of
    ``[forward, backward]`` pairs for rounds 2 .., empty by default), ``node_out``, ``edge_decoder``.
    """

    reads_all_rows = True  # the traversal reads each layer's block of element rows at once

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, positional: str = "index", bidirectional: bool = True, aggregation: str = "sum",
                 recurrence: str = "gru", dense_density: float | None = None, rounds: int = 1, heads: str = "slot"):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1 (traversals per direction), got {rounds!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence must be one of {RECURRENCES}, got {recurrence!r}")
        if heads not in HEADS:
            raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
        if dense_density is not None and not dense_density >= 0:
            raise ValueError(f"dense_density must be >= 0, got {dense_density}")
        self.fourier, self.bidirectional = fourier, bidirectional
        slots = kmax * kmax
        slot_in = edge_in // slots + 1 + len(EDGE_KINDS)  # features, fixed kernel value, kind one-hot
        self.aggregation, self.recurrence, self.heads = aggregation, recurrence, heads
        self.dense_density = min(1.0, slot_in / 48) if dense_density is None else float(dense_density)
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier, positional=positional)
        self.input_memory = nn.Parameter(torch.empty(hidden))
        traversal = dict(hidden=hidden, slots=slots, slot_in=slot_in, aggregation=aggregation, recurrence=recurrence,
                         heads=heads)
        self.forward_traversal = LayerTraversal(**traversal, reverse=False)
        self.backward_traversal = LayerTraversal(**traversal, reverse=True) if bidirectional else None
        self.rounds = rounds
        self.later_rounds = nn.ModuleList(
            nn.ModuleList(LayerTraversal(**traversal, reverse=reverse)
                          for reverse in ((False, True) if bidirectional else (False,)))
            for _ in range(rounds - 1))
        self.node_out = nn.Linear(hidden * (2 if bidirectional else 1), hidden)
        self.edge_decoder = EdgeDecoder(hidden, depth)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
        nn.init.normal_(self.input_memory, std=0.1)
        self.forward_traversal.reset_parameters()
        if self.backward_traversal is not None:
            self.backward_traversal.reset_parameters()
        for pair in self.later_rounds:
            for traversal in pair:
                traversal.reset_parameters()
        self.node_out.reset_parameters()
        self.edge_decoder.reset_parameters()

    def traverse(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the traversals. Returns ``(edge_state [E, d], forward_memory [N, d], backward_memory [N, d] | None)``."""
        self.check_inputs(graph, node_feats, edge_feats)
        fwd, bwd = self._memories(graph, node_feats, edge_feats)
        return self.embed.embed_edges(graph, edge_feats), fwd, bwd

    def _memories(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward memories ``[N, d]`` (the traversals never read the edge state)."""
        x = self.embed.embed_nodes(graph, node_feats)
        memory = x + (graph.node_role == ROLE_INPUT)[:, None].to(x.dtype) * self.input_memory
        if isinstance(edge_feats, SlotFeatures):
            layout, rows = "elements", edge_feats.values
        else:
            layout, rows = "dense", edge_feats.reshape(graph.num_edges * graph.kernel_slots, -1)
        # The plan is structure only: built on the first forward over this graph, then reused.
        plan = graph.cached(("dng-plan", layout, self.dense_density),
                            lambda: _Plan(graph, layout, self.dense_density))
        inputs = _LayerInputs(plan, rows)
        fwd = self.forward_traversal(graph, plan, memory, inputs)
        bwd = self.backward_traversal(graph, plan, fwd, inputs) if self.backward_traversal is not None else None
        for pair in self.later_rounds:  # rounds > 1: each starts from the last round's final memories
            fwd = pair[0](graph, plan, fwd if bwd is None else bwd, inputs)
            bwd = pair[1](graph, plan, fwd, inputs) if bwd is not None else None
        return fwd, bwd

    def _decoder_input(self, graph: NeuralGraph, edge_feats: torch.Tensor | SlotFeatures) -> torch.Tensor:
        """``edge_decoder.edge_in(e) [E, d]`` of the edge state ``e = edge_proj(f) + kind embedding``.

        Without Fourier features both maps are linear, so they are composed first (a ``[d, d] x [d, K F]`` product)
        and applied to the features at once: the ``[E, d]`` state ``e`` and one ``[E, d] x [d, d]`` product per
        forward are never formed.
        """
        proj, edge_in = self.embed.edge_proj, self.edge_decoder.edge_in
        if proj.fourier:
            return edge_in(self.embed.embed_edges(graph, edge_feats))
        weight = edge_in.weight @ proj.linear.weight  # [d, K F]
        table = F.linear(self.embed.edge_kind.weight + proj.linear.bias, edge_in.weight, edge_in.bias)  # [kinds, d]
        base = F.embedding(graph.edge_kind, table)  # fresh: the product is accumulated into it
        if isinstance(edge_feats, SlotFeatures):
            return edge_feats.project(weight, into=base)
        return base.addmm_(edge_feats, weight.t())

    def forward(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``node_feats [N, node_in]``, ``edge_feats [E, edge_in]`` -> ``(node_emb [N, d], edge_emb [E, d])``."""
        return self._encode(graph, node_feats, edge_feats, None)

    def encode_projected(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures,
                         weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` mapped by ``weight [D, d]``, folded into the edge decoder's last linear layer."""
        return self._encode(graph, node_feats, edge_feats, weight)

    def encode_projected_rows(self, graph: NeuralGraph, node_feats: torch.Tensor,
                              edge_feats: torch.Tensor | SlotFeatures, weight: torch.Tensor) -> GatheredRows:
        """``encode_projected``'s two outputs as one ``[N + E, D]`` table, gathered per element chunk."""
        return GatheredRows(torch.cat(self._encode(graph, node_feats, edge_feats, weight)), graph.elem_owner)

    def _encode(self, graph, node_feats, edge_feats, weight):
        self.check_inputs(graph, node_feats, edge_feats)
        fwd, bwd = self._memories(graph, node_feats, edge_feats)
        node_emb = self.node_out(fwd if bwd is None else torch.cat([fwd, bwd], -1))
        edge_emb = self.edge_decoder.decode(graph.edge_index, node_emb, self._decoder_input(graph, edge_feats), weight)
        return (node_emb if weight is None else F.linear(node_emb, weight)), edge_emb

    def extra_repr(self) -> str:
        return (f"node_in={self.node_in}, edge_in={self.edge_in}, hidden={self.hidden}, depth={self.depth}, "
                f"kmax={self.kmax}, bidirectional={self.bidirectional}, aggregation={self.aggregation!r}, "
                f"recurrence={self.recurrence!r}" + (f", rounds={self.rounds}" if self.rounds > 1 else "")
                + (f", heads={self.heads!r}" if self.heads != "slot" else ""))


