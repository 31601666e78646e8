"""Dynamic neural graph encoder (DNG; Wu et al., REFERENCE.md section 2).

The network is read as a sequence of snapshots, one per layer ``t = 1 .. L-1`` in topological order. Every node
keeps a memory vector; at step ``t`` the nodes of layer ``t`` receive messages from the *current* memories of the
sources of layer ``t``'s edges (all in earlier layers, hence already updated), sum (or average) them and update
their memory with a recurrent cell, ``s_i = GRUCell(m_i, s_i(0))``. Edges are never updated; only the current
snapshot's messages ``[E_t, ...]`` exist at a time, and every node is updated exactly once per traversal.

Message (:class:`KernelMessage`) -- "weight times activation", never looking at the target node::

    m_ij = sum_k A(f_ijk) * (W_k s_j)  +  C(e_ij) * (W_e s_j)  +  B(sum_k f_ijk)  +  D(e_ij)

* ``f_ijk`` ``[F + 2]``: the ``F`` features of kernel slot ``k`` of the edge (``edge_feats`` reshaped to
  ``[E, kmax**2, F]``), plus the slot's fixed kernel value (``graph.edge_constant``: 1 at the centre of identity
  edges, so residual / flatten copies carry "weight 1" exactly like the network does) and the slot's occupancy
  (1 where the slot holds a parameter or a constant). ``A`` and ``B`` have no bias, so an empty slot (all zeros:
  the padding of a small kernel, or the off-centre slots of a linear weight) contributes exactly nothing; the
  occupancy channel plays the role of a bias on occupied slots. A linear layer thus reduces to the single-head
  message at the centre slot. For speed, each layer only evaluates the heads of slots that are occupied by some
  edge of that layer (an MLP layer costs 2 heads, not ``kmax**2 + 1``); the skipped heads are exactly zero.
* ``e_ij`` ``[hidden]``: the :class:`GraphInputEmbedding` edge state (projected edge features + edge-kind
  embedding). It drives one extra FiLM head (``C``, ``W_e``) and a shift (``D``), which is how weight, norm
  (diagonal ``gamma``) and identity edges are told apart.
* ``W_k`` (one linear map per kernel position, plus ``W_e``) are applied once per *node* (``[n, K+1, hidden]``),
  not per edge, and gathered by edge.

Backward traversal (``bidirectional=True``, the reviewers' suggestion; it matters for optimisers, where gradient
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

Cost choices: the FiLM edge terms ``C(e)``, ``D(e) + B(sum_k f)`` are computed for all edges in one batched matmul
(under autograd they are kept for the backward pass whether computed per layer or at once, so this costs no
extra memory); the per-slot scales ``A(f)`` are computed per layer, for the occupied slots only. The Python loop
is over layers (a handful of tensor ops each), never over nodes or edges.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..graph import ROLE_INPUT, NeuralGraph
from .base import GraphEncoder
from .embeddings import GraphInputEmbedding, sinusoid_table

AGGREGATIONS = ("sum", "mean")
RECURRENCES = ("gru", "rnn", "none")


def slot_features(graph: NeuralGraph, edge_feats: torch.Tensor) -> torch.Tensor:
    """``edge_feats [E, K*F]`` -> per-slot features ``[E, K, F + 2]``: ``[features, fixed kernel value, occupancy]``.

    Empty slots are all zero (``scatter`` leaves them zero, and so are their constant and occupancy channels).
    """
    E, K, N = graph.num_edges, graph.kernel_slots, graph.num_nodes
    feats = edge_feats.reshape(E, K, -1)
    const = graph.edge_constant.to(edge_feats.dtype)
    # A slot is occupied if some parameter element sits there (graph.slot indexes cat([nodes, edges * K])).
    occ = edge_feats.new_zeros(N + E * K).index_fill(0, graph.slot, 1.0)[N:].view(E, K)
    occ = torch.maximum(occ, (const != 0).to(edge_feats.dtype))
    return torch.cat([feats, const[..., None], occ[..., None]], -1)


class KernelMessage(nn.Module):
    """Multi-head FiLM message ``m_ij = sum_k A(f_ijk) * W_k s_j + C(e_ij) * W_e s_j + B(sum_k f_ijk) + D(e_ij)``.

    Args:
        hidden: memory size ``d``. slots: ``K = kmax**2`` kernel positions. slot_in: features per slot ``F + 2``.
    Submodules (hand-settable): ``slot_scale`` (A: ``slot_in -> d``, no bias), ``slot_shift`` (B: no bias),
    ``state_scale`` (C: ``d -> d``), ``state_shift`` (D: ``d -> d``), ``source`` (``[W_0 .. W_{K-1}, W_e]``:
    ``d -> (K + 1) * d``, no bias: a bias would only add a term linear in the edge features, which B already is).
    """

    def __init__(self, hidden: int, slots: int, slot_in: int):
        super().__init__()
        self.hidden, self.slots, self.slot_in = hidden, slots, slot_in
        self.slot_scale = nn.Linear(slot_in, hidden, bias=False)
        self.slot_shift = nn.Linear(slot_in, hidden, bias=False)
        self.state_scale = nn.Linear(hidden, hidden)
        self.state_shift = nn.Linear(hidden, hidden)
        self.source = nn.Linear(hidden, (slots + 1) * hidden, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.slot_scale, self.slot_shift, self.state_scale, self.state_shift, self.source):
            lin.reset_parameters()

    def project(self, memory: torch.Tensor) -> torch.Tensor:
        """Source side of every head, once per node: ``[n, d] -> [n, K + 1, d]`` (head ``K`` is ``W_e``)."""
        return self.source(memory).view(memory.shape[0], self.slots + 1, self.hidden)

    def edge_terms(self, slot_feats: torch.Tensor, edge_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parts of the message that depend on the edge only, for all edges at once.

        ``slot_feats [E, K, slot_in]``, ``edge_state [E, d]`` -> ``(C(e) [E, d], B(sum_k f) + D(e) [E, d])``.
        B is linear without bias, so summing the slots first equals summing the per-slot shifts.
        """
        return self.state_scale(edge_state), self.slot_shift(slot_feats.sum(1)) + self.state_shift(edge_state)

    def forward(self, source_proj: torch.Tensor, slot_feats: torch.Tensor, state_scale: torch.Tensor,
                shift: torch.Tensor) -> torch.Tensor:
        """Messages of one snapshot.

        Args:
            source_proj: ``[E_t, k_t + 1, d]`` projected memory of each edge's sender, for the ``k_t`` slots in use
                and the edge-state head (last).
            slot_feats: ``[E_t, k_t, slot_in]`` features of those slots. state_scale, shift: ``[E_t, d]``.
        Returns: ``[E_t, d]``.
        """
        scale = torch.cat([self.slot_scale(slot_feats), state_scale[:, None]], 1)
        return (scale * source_proj).sum(1) + shift


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


class _Plan:
    """Host-side per-layer ranges of one graph, read with a single device sync.

    ``node_ptr``, ``edge_ptr`` [L + 1]; ``lo[t]``: lowest layer holding a source of layer ``t``'s edges (messages
    only need the memories of layers ``lo[t] .. t-1``); ``slots[t]``: kernel slots occupied in layer ``t`` (None =
    all of them).
    """

    def __init__(self, graph: NeuralGraph, slot_feats: torch.Tensor):
        L, K = graph.num_layers, graph.kernel_slots
        src_layer = graph.node_layer[graph.edge_index[0]]
        lo = torch.full((L,), L, dtype=torch.long, device=graph.device)
        lo = lo.scatter_reduce(0, graph.edge_layer, src_layer, reduce="amin")
        used = torch.zeros(L, K, device=graph.device).index_add_(0, graph.edge_layer, (slot_feats[..., -1] > 0).float())
        info = torch.cat([graph.layer_node_ptr, graph.layer_edge_ptr, lo, (used > 0).long().flatten()]).tolist()
        self.num_layers = L
        self.node_ptr, self.edge_ptr = info[: L + 1], info[L + 1: 2 * L + 2]
        self.lo = info[2 * L + 2: 3 * L + 2]
        flags = info[3 * L + 2:]
        self.slots: list[torch.Tensor | None] = []
        self.heads: list[torch.Tensor | None] = []
        for t in range(L):
            occupied = [k for k in range(K) if flags[t * K + k]]
            if len(occupied) == K:
                self.slots.append(None)
                self.heads.append(None)
            else:
                self.slots.append(torch.tensor(occupied, dtype=torch.long, device=graph.device))
                self.heads.append(torch.tensor(occupied + [K], dtype=torch.long, device=graph.device))


def _select(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return x if index is None else x.index_select(1, index)


class LayerTraversal(nn.Module):
    """One pass over the snapshots with its own message maps and memory cell.

    Forward (``reverse=False``): ``t = 1 .. L-1``, layer ``t`` receives along its incoming edges.
    Backward (``reverse=True``): ``t = L-1 .. 0``, layer ``t`` updates from the messages accumulated from later
    layers, then sends along the reversed edges of layer ``t``.
    Submodules: ``message`` (:class:`KernelMessage`), ``cell`` (``nn.GRUCell``, ``nn.RNNCell`` or :class:`MemorySum`).
    """

    def __init__(self, hidden: int, slots: int, slot_in: int, aggregation: str = "sum", recurrence: str = "gru",
                 reverse: bool = False):
        super().__init__()
        self.hidden, self.aggregation, self.recurrence, self.reverse = hidden, aggregation, recurrence, reverse
        self.message = KernelMessage(hidden, slots, slot_in)
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

    def forward(self, graph: NeuralGraph, plan: _Plan, memory: torch.Tensor, slot_feats: torch.Tensor,
                edge_state: torch.Tensor) -> torch.Tensor:
        """``memory [N, d]`` (initial memories), ``slot_feats [E, K, slot_in]``, ``edge_state [E, d]`` -> ``[N, d]``."""
        state_scale, shift = self.message.edge_terms(slot_feats, edge_state)
        degree = self._degree(graph, memory)
        run = self._backward if self.reverse else self._forward
        return run(graph, plan, memory, slot_feats, state_scale, shift, degree)

    def _forward(self, graph, plan, memory, slot_feats, state_scale, shift, degree):
        L, nptr, eptr = plan.num_layers, plan.node_ptr, plan.edge_ptr
        out = [memory[nptr[0]: nptr[1]]]  # input nodes keep their initial memory
        proj = [self.message.project(out[0])] if L > 1 else []
        for t in range(1, L):
            n0, n1, e0, e1, lo = nptr[t], nptr[t + 1], eptr[t], eptr[t + 1], plan.lo[t]
            agg = memory.new_zeros(n1 - n0, self.hidden)
            if e1 > e0:
                src, dst = graph.edge_index[0, e0:e1], graph.edge_index[1, e0:e1]
                # Senders live in layers lo .. t-1, all already updated.
                senders = proj[lo] if lo == t - 1 else torch.cat(proj[lo:t], 0)
                senders = _select(senders, plan.heads[t])
                msg = self.message(senders[src - nptr[lo]], _select(slot_feats[e0:e1], plan.slots[t]),
                                   state_scale[e0:e1], shift[e0:e1])
                agg = agg.index_add(0, dst - n0, msg)
                if degree is not None:
                    agg = agg / degree[n0:n1]
            out.append(self.cell(agg, memory[n0:n1]))
            if t < L - 1:  # the last layer sends nothing
                proj.append(self.message.project(out[-1]))
        return torch.cat(out, 0)

    def _backward(self, graph, plan, memory, slot_feats, state_scale, shift, degree):
        L, nptr, eptr = plan.num_layers, plan.node_ptr, plan.edge_ptr
        inbox = [memory.new_zeros(nptr[u + 1] - nptr[u], self.hidden) for u in range(L)]  # accumulated messages
        out: list[torch.Tensor] = [memory] * L
        for t in range(L - 1, -1, -1):
            n0, n1, e0, e1 = nptr[t], nptr[t + 1], eptr[t], eptr[t + 1]
            agg = inbox[t] if degree is None else inbox[t] / degree[n0:n1]
            out[t] = self.cell(agg, memory[n0:n1])
            if e1 > e0:
                lo = plan.lo[t]
                src, dst = graph.edge_index[0, e0:e1], graph.edge_index[1, e0:e1]
                senders = _select(self.message.project(out[t]), plan.heads[t])
                msg = self.message(senders[dst - n0], _select(slot_feats[e0:e1], plan.slots[t]),
                                   state_scale[e0:e1], shift[e0:e1])
                # Receivers (the edges' sources) live in layers lo .. t-1 and have not been updated yet.
                if lo == t - 1:
                    inbox[lo] = inbox[lo].index_add(0, src - nptr[lo], msg)
                else:
                    merged = torch.cat(inbox[lo:t], 0).index_add(0, src - nptr[lo], msg)
                    inbox[lo:t] = list(merged.split([nptr[u + 1] - nptr[u] for u in range(lo, t)], 0))
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
        self.act = nn.SiLU()

    def reset_parameters(self) -> None:
        for lin in (self.node_in, self.edge_in, *self.layers):
            lin.reset_parameters()

    def forward(self, edge_index: torch.Tensor, node_emb: torch.Tensor, edge_state: torch.Tensor) -> torch.Tensor:
        """``edge_index [2, E]``, ``node_emb [N, d]``, ``edge_state [E, d]`` -> ``[E, d]``."""
        to_src, to_dst = self.node_in(node_emb).chunk(2, -1)
        h = to_src[edge_index[0]] + to_dst[edge_index[1]] + self.edge_in(edge_state)
        for lin in self.layers:
            h = lin(self.act(h))
        return h


class DynamicGraphEncoder(GraphEncoder):
    """Dynamic neural graph encoder: a recurrent traversal of the network layer by layer (module docstring).

    Args:
        node_in: node feature size. edge_in: ``kmax**2 * F`` flattened edge features. hidden: memory size ``d``.
        depth: linear layers in the edge decoder (>= 1). kmax: kernel side. fourier: Fourier features of the input
            projections (:class:`GraphInputEmbedding`).
        bidirectional: add the backward (output -> input) traversal.
        aggregation: ``"sum"`` (default) or ``"mean"`` of the messages a node receives.
        recurrence: ``"gru"`` (default), ``"rnn"`` (tanh RNN cell) or ``"none"`` (memory + message sum; the ablation).
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> ([N, d], [E, d])``.
    Submodules: ``embed`` (input embedding), ``input_memory`` ``[d]`` (added to input nodes' initial memory),
    ``forward_traversal`` / ``backward_traversal`` (:class:`LayerTraversal`), ``node_out``, ``edge_decoder``.
    """

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, bidirectional: bool = True, aggregation: str = "sum", recurrence: str = "gru"):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence must be one of {RECURRENCES}, got {recurrence!r}")
        self.fourier, self.bidirectional = fourier, bidirectional
        self.aggregation, self.recurrence = aggregation, recurrence
        slots = kmax * kmax
        slot_in = edge_in // slots + 2  # features + fixed kernel value + occupancy
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier)
        self.input_memory = nn.Parameter(torch.empty(hidden))
        self.forward_traversal = LayerTraversal(hidden, slots, slot_in, aggregation, recurrence, reverse=False)
        self.backward_traversal = (LayerTraversal(hidden, slots, slot_in, aggregation, recurrence, reverse=True)
                                   if bidirectional else None)
        self.node_out = nn.Linear(hidden * (2 if bidirectional else 1), hidden)
        self.edge_decoder = EdgeDecoder(hidden, depth)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_input_embedding(self.embed)
        nn.init.normal_(self.input_memory, std=0.1)
        self.forward_traversal.reset_parameters()
        if self.backward_traversal is not None:
            self.backward_traversal.reset_parameters()
        self.node_out.reset_parameters()
        self.edge_decoder.reset_parameters()

    def traverse(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Run the traversals. Returns ``(edge_state [E, d], forward_memory [N, d], backward_memory [N, d] | None)``."""
        self.check_inputs(graph, node_feats, edge_feats)
        x, e = self.embed(graph, node_feats, edge_feats)
        memory = x + (graph.node_role == ROLE_INPUT)[:, None].to(x.dtype) * self.input_memory
        slots = slot_features(graph, edge_feats)
        plan = _Plan(graph, slots)
        fwd = self.forward_traversal(graph, plan, memory, slots, e)
        bwd = self.backward_traversal(graph, plan, fwd, slots, e) if self.backward_traversal is not None else None
        return e, fwd, bwd

    def forward(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``node_feats [N, node_in]``, ``edge_feats [E, edge_in]`` -> ``(node_emb [N, d], edge_emb [E, d])``."""
        e, fwd, bwd = self.traverse(graph, node_feats, edge_feats)
        node_emb = self.node_out(fwd if bwd is None else torch.cat([fwd, bwd], -1))
        return node_emb, self.edge_decoder(graph.edge_index, node_emb, e)

    def extra_repr(self) -> str:
        return (f"node_in={self.node_in}, edge_in={self.edge_in}, hidden={self.hidden}, depth={self.depth}, "
                f"kmax={self.kmax}, bidirectional={self.bidirectional}, aggregation={self.aggregation!r}, "
                f"recurrence={self.recurrence!r}")


@torch.no_grad()
def _reset_input_embedding(embed: GraphInputEmbedding) -> None:
    """Re-initialise a GraphInputEmbedding in place as its constructor does (it has no reset_parameters)."""
    embed.node_proj.linear.reset_parameters()
    embed.edge_proj.linear.reset_parameters()
    for table in (embed.pos.inputs, embed.pos.outputs, embed.pos.layers):
        table.copy_(sinusoid_table(*table.shape))
    for emb in (embed.act, embed.spatial, embed.edge_kind):
        nn.init.normal_(emb.weight, std=0.1)
