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
  layer costs one head, not ``kmax**2``); skipped heads are exactly zero.
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

Cost choices: the per-slot features of all edges are built at once (``[E, K, F + 4]``, cheap); everything with
``d`` channels is per layer and per node where possible. The Python loop is over layers (about ten tensor ops each,
and one host sync per forward for the layer ranges), never over nodes or edges.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import EDGE_KINDS, ROLE_INPUT, NeuralGraph
from .base import GraphEncoder
from .embeddings import GraphInputEmbedding

AGGREGATIONS = ("sum", "mean")
RECURRENCES = ("gru", "rnn", "none")


def slot_features(graph: NeuralGraph, edge_feats: torch.Tensor) -> torch.Tensor:
    """``edge_feats [E, K*F]`` -> per-slot features ``[E, K, F + 4]``: ``[features, fixed kernel value, kind one-hot]``.

    The kind one-hot (weight / norm / identity) is set on *occupied* slots only (a parameter element or a fixed
    kernel value sits there), so empty slots are all zero: ``scatter`` leaves their features zero too.
    """
    E, K, N = graph.num_edges, graph.kernel_slots, graph.num_nodes
    feats = edge_feats.reshape(E, K, -1)
    const = graph.edge_constant.to(edge_feats.dtype)
    # A slot is occupied if some parameter element sits there (graph.slot indexes cat([nodes, edges * K])).
    occ = edge_feats.new_zeros(N + E * K).index_fill(0, graph.slot, 1.0)[N:].view(E, K)
    occ = torch.maximum(occ, (const != 0).to(edge_feats.dtype))
    kind = F.one_hot(graph.edge_kind, len(EDGE_KINDS)).to(edge_feats.dtype)
    return torch.cat([feats, const[..., None], occ[..., None] * kind[:, None, :]], -1)


class KernelMessage(nn.Module):
    """Multi-head FiLM message ``m_ij = sum_k A(f_ijk) * (W_k s_j) + B(sum_k f_ijk)`` (module docstring).

    Args:
        hidden: memory size ``d``. slots: ``K = kmax**2`` kernel positions. slot_in: features per slot ``F + 4``.
    Submodules (hand-settable): ``slot_scale`` (A: ``slot_in -> d``), ``slot_shift`` (B), both without bias so
    empty slots add nothing; ``source`` (``[W_0 .. W_{K-1}]``: ``d -> K * d``, no bias: it would only add a term
    linear in the edge features, which B already is).

    The message is linear in the slot features ``f`` for fixed sender memories, so the sum of the messages a node
    receives can be computed either per edge (:meth:`message`, then a scatter-sum) or, for a dense layer, as one
    matrix product of the layer's ``[receivers, senders * K]`` feature block with the senders' projections
    (:meth:`propagate` chooses); both give the same sum.
    """

    def __init__(self, hidden: int, slots: int, slot_in: int):
        super().__init__()
        self.hidden, self.slots, self.slot_in = hidden, slots, slot_in
        self.slot_scale = nn.Linear(slot_in, hidden, bias=False)
        self.slot_shift = nn.Linear(slot_in, hidden, bias=False)
        self.source = nn.Linear(hidden, slots * hidden, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.slot_scale, self.slot_shift, self.source):
            lin.reset_parameters()

    def project(self, memory: torch.Tensor) -> torch.Tensor:
        """Sender side of every head, once per node: ``[n, d] -> [n, K, d]``."""
        return self.source(memory).view(memory.shape[0], self.slots, self.hidden)

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
            0, receive * n_s + send, slot_feats.reshape(E_t, k * f)).view(num_receivers, n_s, k, f)
        gathered = block.permute(0, 3, 1, 2).reshape(num_receivers * f, n_s * k) @ sender_proj.reshape(n_s * k, d)
        scaled = (gathered.view(num_receivers, f, d) * self.slot_scale.weight.t()).sum(1)
        return scaled + self.slot_shift(block.sum((1, 2)))


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
    """Host-side per-layer facts of one graph, read with a single device sync.

    ``node_ptr``, ``edge_ptr`` [L + 1]; ``lo[t]``: lowest layer holding a source of layer ``t``'s edges (messages
    only involve layers ``lo[t] .. t``); ``slots[t]``: kernel slots occupied in layer ``t`` (None = all of them);
    ``dense[t]``: whether layer ``t``'s edges fill at least ``dense_density`` of its (layer ``t``) x (layers
    ``lo[t] .. t-1``) block.
    """

    def __init__(self, graph: NeuralGraph, slot_feats: torch.Tensor, dense_density: float):
        L, K = graph.num_layers, graph.kernel_slots
        src_layer = graph.node_layer[graph.edge_index[0]]
        lo = torch.full((L,), L, dtype=torch.long, device=graph.device)
        lo = lo.scatter_reduce(0, graph.edge_layer, src_layer, reduce="amin")
        occupied = (slot_feats[..., -len(EDGE_KINDS):].sum(-1) > 0).float()
        used = torch.zeros(L, K, device=graph.device).index_add_(0, graph.edge_layer, occupied)
        info = torch.cat([graph.layer_node_ptr, graph.layer_edge_ptr, lo, (used > 0).long().flatten()]).tolist()
        self.num_layers = L
        self.node_ptr, self.edge_ptr = info[: L + 1], info[L + 1: 2 * L + 2]
        self.lo = info[2 * L + 2: 3 * L + 2]
        flags = info[3 * L + 2:]
        self.slots: list[torch.Tensor | None] = []
        self.dense: list[bool] = []
        for t in range(L):
            in_use = [k for k in range(K) if flags[t * K + k]]
            self.slots.append(None if len(in_use) == K else torch.tensor(in_use, dtype=torch.long, device=graph.device))
            edges = self.edge_ptr[t + 1] - self.edge_ptr[t]
            pairs = (self.node_ptr[t + 1] - self.node_ptr[t]) * (self.node_ptr[t] - self.node_ptr[min(self.lo[t], t)])
            self.dense.append(edges > 0 and edges >= dense_density * pairs)


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

    def forward(self, graph: NeuralGraph, plan: _Plan, memory: torch.Tensor, slot_feats: torch.Tensor
                ) -> torch.Tensor:
        """``memory [N, d]`` (initial memories), ``slot_feats [E, K, slot_in]`` -> final memories ``[N, d]``."""
        degree = self._degree(graph, memory)
        run = self._backward if self.reverse else self._forward
        return run(graph, plan, memory, slot_feats, degree)

    def _forward(self, graph, plan, memory, slot_feats, degree):
        L, nptr, eptr = plan.num_layers, plan.node_ptr, plan.edge_ptr
        out = [memory[nptr[0]: nptr[1]]]  # input nodes keep their initial memory
        proj = [self.message.project(out[0])] if L > 1 else []
        for t in range(1, L):
            n0, n1, e0, e1, lo = nptr[t], nptr[t + 1], eptr[t], eptr[t + 1], plan.lo[t]
            if e1 > e0:
                src, dst = graph.edge_index[0, e0:e1], graph.edge_index[1, e0:e1]
                # Senders live in layers lo .. t-1, all already updated.
                senders = _select(proj[lo] if lo == t - 1 else torch.cat(proj[lo:t], 0), plan.slots[t])
                agg = self.message.propagate(senders, _select(slot_feats[e0:e1], plan.slots[t]), src - nptr[lo],
                                             dst - n0, n1 - n0, plan.dense[t])
                if degree is not None:
                    agg = agg / degree[n0:n1]
            else:
                agg = memory.new_zeros(n1 - n0, self.hidden)
            out.append(self.cell(agg, memory[n0:n1]))
            if t < L - 1:  # the last layer sends nothing
                proj.append(self.message.project(out[-1]))
        return torch.cat(out, 0)

    def _backward(self, graph, plan, memory, slot_feats, degree):
        L, nptr, eptr = plan.num_layers, plan.node_ptr, plan.edge_ptr
        inbox: list[torch.Tensor | None] = [None] * L  # messages accumulated per layer
        out: list[torch.Tensor] = [memory] * L
        for t in range(L - 1, -1, -1):
            n0, n1, e0, e1 = nptr[t], nptr[t + 1], eptr[t], eptr[t + 1]
            agg = memory.new_zeros(n1 - n0, self.hidden) if inbox[t] is None else inbox[t]
            if degree is not None:
                agg = agg / degree[n0:n1]
            out[t] = self.cell(agg, memory[n0:n1])
            if e1 > e0:
                # Receivers (the edges' sources) live in layers lo .. t-1 and have not been updated yet.
                lo = plan.lo[t]
                src, dst = graph.edge_index[0, e0:e1], graph.edge_index[1, e0:e1]
                senders = _select(self.message.project(out[t]), plan.slots[t])
                received = self.message.propagate(senders, _select(slot_feats[e0:e1], plan.slots[t]), dst - n0,
                                                  src - nptr[lo], n0 - nptr[lo], plan.dense[t])
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
        self.act = nn.SiLU()

    def reset_parameters(self) -> None:
        for lin in (self.node_in, self.edge_in, *self.layers):
            lin.reset_parameters()

    def forward(self, edge_index: torch.Tensor, node_emb: torch.Tensor, edge_state: torch.Tensor) -> torch.Tensor:
        """``edge_index [2, E]``, ``node_emb [N, d]``, ``edge_state [E, d]`` -> ``[E, d]``."""
        to_src, to_dst = self.node_in(node_emb).chunk(2, -1)
        h = to_src.index_select(0, edge_index[0]) + to_dst.index_select(0, edge_index[1]) + self.edge_in(edge_state)
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
        dense_density: a layer whose edges fill at least this fraction of its (receivers x senders) block sums its
            messages with one block matrix product instead of per-edge messages (same result; faster unless the
            block is mostly empty, e.g. a large batch of graphs). ``0`` always uses the block product, anything
            above 1 never does. ``None`` (default): ``slot_in / 48`` (the block costs ~ ``slot_in`` per pair, the
            per-edge path ~ ``d`` per edge; 48 is the crossover measured on CPU: 0.125 for 2 features per
            parameter, 0.375 for 14).
    Shapes: ``forward(graph, node_feats [N, node_in], edge_feats [E, edge_in]) -> ([N, d], [E, d])``.
    Submodules: ``embed`` (input embedding), ``input_memory`` ``[d]`` (added to input nodes' initial memory),
    ``forward_traversal`` / ``backward_traversal`` (:class:`LayerTraversal`), ``node_out``, ``edge_decoder``.
    """

    def __init__(self, node_in: int, edge_in: int, hidden: int = 64, depth: int = 4, kmax: int = 3,
                 fourier: int = 0, positional: str = "index", bidirectional: bool = True, aggregation: str = "sum", recurrence: str = "gru",
                 dense_density: float | None = None):
        super().__init__(node_in, edge_in, hidden, depth, kmax)
        if hidden < 1 or depth < 1:
            raise ValueError(f"hidden and depth must be >= 1, got hidden={hidden}, depth={depth}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if recurrence not in RECURRENCES:
            raise ValueError(f"recurrence must be one of {RECURRENCES}, got {recurrence!r}")
        if dense_density is not None and not dense_density >= 0:
            raise ValueError(f"dense_density must be >= 0, got {dense_density}")
        self.fourier, self.bidirectional = fourier, bidirectional
        slots = kmax * kmax
        slot_in = edge_in // slots + 1 + len(EDGE_KINDS)  # features, fixed kernel value, kind one-hot
        self.aggregation, self.recurrence = aggregation, recurrence
        self.dense_density = min(1.0, slot_in / 48) if dense_density is None else float(dense_density)
        self.embed = GraphInputEmbedding(node_in, edge_in, hidden, fourier, positional=positional)
        self.input_memory = nn.Parameter(torch.empty(hidden))
        self.forward_traversal = LayerTraversal(hidden, slots, slot_in, aggregation, recurrence, reverse=False)
        self.backward_traversal = (LayerTraversal(hidden, slots, slot_in, aggregation, recurrence, reverse=True)
                                   if bidirectional else None)
        self.node_out = nn.Linear(hidden * (2 if bidirectional else 1), hidden)
        self.edge_decoder = EdgeDecoder(hidden, depth)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embed.reset_parameters()
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
        plan = _Plan(graph, slots, self.dense_density)
        fwd = self.forward_traversal(graph, plan, memory, slots)
        bwd = self.backward_traversal(graph, plan, fwd, slots) if self.backward_traversal is not None else None
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


