"""The neural graph of a network: neurons are nodes, weights (or conv kernels) are edges.

A :class:`NeuralGraph` is the static structure of one architecture (or a batch of several). It is built once
(:meth:`NeuralGraph.from_module`) and then used every step through index operations on cached tensors:

* ``scatter``: per-parameter features ``{name: [*param.shape, F]}`` -> ``(node_feats [N, F], edge_feats [E, K, F])``
  with ``K = kmax * kmax``: biases sit on nodes, every weight of a linear layer sits at the centre of its edge's
  kernel, every entry of a conv kernel at its (centred, zero-padded) kernel position.
* ``gather``: node and edge embeddings ``[N, D]``, ``[E, D]`` -> ``{name: [*param.shape, D]}``: every element gets
  the embedding of the edge or node it sits on (all entries of a kernel share their edge's embedding).
* ``unscatter``: the exact inverse of ``scatter`` (for per-weight outputs such as weight edits).

Each has a ``*_flat`` twin working on all parameters concatenated into one ``[P, F]`` tensor (``P`` = number of
represented parameter elements, in ``param_names`` order), which is what the hot path of the optimizer uses.

``scatter_slots`` is the slot-sparse twin of ``scatter_flat``: it returns the node features and a
:class:`SlotFeatures` that keeps the per-element rows ``[P, F]`` with each row's (edge, kernel slot), instead of the
dense ``[E, K, F]`` whose empty slots (8 of 9 for every linear weight with ``kmax = 3``) are zeros. Encoders take
either form; linear maps of the edge features (:meth:`SlotFeatures.project`) never build the dense one.

Layout guarantees (encoders rely on them): nodes are sorted by ``node_layer`` and edges by ``edge_layer`` (the
layer of the edge's *target*), so layer ``t`` is the contiguous range ``layer_node_ptr[t]:layer_node_ptr[t+1]``
(and likewise for edges); every edge goes from a lower to a higher layer, i.e. layer order is a topological
order of the graph (what the dynamic neural graph encoder traverses). Layer 0 holds the input nodes.

Edge kinds: ``EDGE_WEIGHT`` (a linear/conv weight), ``EDGE_NORM`` (the diagonal ``gamma`` of a normalisation
layer) and ``EDGE_IDENTITY`` (no parameter: residual connections, copies of channels per spatial position at a
flatten, copies made so that an activation can be recorded exactly). ``edge_constant [E, K]`` holds the fixed
kernel of identity edges (1 at the kernel centre) and zeros elsewhere, so ``scatter(weights)[1] + edge_constant``
is the full linear map of the graph. Attention layers can later use the kernel axis to stack the Q, K and V
projections of an edge (K >= 3), without changing this layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import torch

from ..runtime import RowSource, as_tensor, chunk_size, device_constant

EDGE_WEIGHT, EDGE_NORM, EDGE_IDENTITY = 0, 1, 2
EDGE_KINDS = ("weight", "norm", "identity")
ROLE_INPUT, ROLE_HIDDEN, ROLE_OUTPUT = 0, 1, 2
ROLES = ("input", "hidden", "output")


def _max0(t: torch.Tensor) -> int:
    return int(t.max()) if t.numel() else 0


_T = TypeVar("_T")


@dataclass(frozen=True)
class LayerInfo:
    """One node set of the graph (one layer of neurons)."""

    index: int  # layer position (0 = inputs)
    kind: str  # "input", "linear", "conv", "norm", "residual", "flatten", "copy"
    name: str  # module path (or traced node name) that created it
    num_nodes: int
    activation: str = "identity"


_TENSOR_FIELDS = (
    "edge_index", "edge_kind", "edge_layer", "edge_constant", "edge_graph", "node_layer", "node_role",
    "node_activation", "node_index", "node_position", "node_graph", "slot", "elem_owner", "param_offsets",
    "layer_node_ptr", "layer_edge_ptr", "graph_param_ptr",
)


@dataclass
class NeuralGraph:
    """Static neural graph of one architecture, or a batch of several (see :meth:`batch`).

    Shapes (N nodes, E edges, K = kmax**2 kernel slots, P represented parameter elements, L layers, G graphs):
        edge_index [2, E] (source, target); edge_kind, edge_layer, edge_graph [E]; edge_constant [E, K]
        node_layer, node_role, node_activation, node_index (index within its layer), node_position
        (spatial position for per-position copies made at a flatten, else -1), node_graph [N]
        slot [P]: where each parameter element sits in the buffer ``cat([nodes [N], edges [E*K]])``
        elem_owner [P]: the node (< N) or N + edge that owns each element (for ``gather``)
        layer_node_ptr, layer_edge_ptr [L+1]; graph_param_ptr [G+1] (flat-vector offsets of each graph)
        param_offsets [len(param_names) + 1]: element offsets of each tensor inside the flat vector
    """

    kmax: int
    edge_index: torch.Tensor
    edge_kind: torch.Tensor
    edge_layer: torch.Tensor
    edge_constant: torch.Tensor
    edge_graph: torch.Tensor
    node_layer: torch.Tensor
    node_role: torch.Tensor
    node_activation: torch.Tensor
    node_index: torch.Tensor
    node_position: torch.Tensor
    node_graph: torch.Tensor
    slot: torch.Tensor
    elem_owner: torch.Tensor
    param_offsets: torch.Tensor
    layer_node_ptr: torch.Tensor
    layer_edge_ptr: torch.Tensor
    graph_param_ptr: torch.Tensor
    param_names: list[str]
    param_shapes: list[torch.Size]
    layers: list[list[LayerInfo]] = field(default_factory=list)  # per graph
    unmapped_params: list[str] = field(default_factory=list)  # parameters not on the graph (unused or skipped)
    skipped_modules: list[str] = field(default_factory=list)  # parts left off with on_unsupported="skip"
    # Index tensors derived from the structure on first use (see `cached`); never compared, copied by `to` or shown.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_module(model: torch.nn.Module, example_input: torch.Tensor | None = None,
                    kmax: int | None = None, on_unsupported: str = "raise") -> "NeuralGraph":
        """Trace ``model`` with torch.fx and build its neural graph.

        Args:
            model: the network. Its ``forward`` must be traceable by ``torch.fx`` (no data-dependent control flow).
            example_input: optional batch; when given, ``model(example_input)`` is run once before the walk so that
                shape errors surface as PyTorch's own messages (the walk itself needs no shapes).
            kmax: kernel side of the edge features (``K = kmax**2`` slots per edge). Default: the largest kernel
                side in the model. Kernels larger than ``kmax`` raise ``UnsupportedModuleError``.
            on_unsupported: ``"raise"`` (default) or ``"skip"``: leave unsupported parts off the graph; their
                parameters are listed in ``unmapped_params``, the parts in ``skipped_modules``, and their outputs
                enter the graph as new input nodes.
        Raises:
            UnsupportedModuleError: a layer or operation the graph cannot represent (named in the message).
        """
        from .builder import build_graph  # local import: builder imports this module

        return build_graph(model, example_input=example_input, kmax=kmax, on_unsupported=on_unsupported)

    @staticmethod
    def assemble(*, kmax: int, node_layer, node_role, node_activation, node_index, node_position,
                 edge_index, edge_kind, edge_constant, slot, param_names, param_shapes,
                 layers=None, unmapped_params=(), node_graph=None, edge_graph=None,
                 graph_param_ptr=None) -> "NeuralGraph":
        """Sort nodes and edges by layer (stable), remap every index, and derive the cached tensors.

        Inputs may be in any order; ``slot`` indexes the buffer ``cat([nodes, edges * K])`` of that order.
        """
        K = kmax * kmax
        N, E = node_layer.numel(), edge_index.shape[1]
        node_graph = torch.zeros(N, dtype=torch.long) if node_graph is None else node_graph
        edge_graph = torch.zeros(E, dtype=torch.long) if edge_graph is None else edge_graph
        # Stable sort keeps creation order inside a layer (and graph order inside a batch layer).
        node_perm = torch.sort(node_layer * (_max0(node_graph) + 1) + node_graph, stable=True).indices
        new_node_id = torch.empty_like(node_perm)
        new_node_id[node_perm] = torch.arange(N)
        edge_layer = node_layer[edge_index[1]] if E else torch.zeros(0, dtype=torch.long)
        edge_index = new_node_id[edge_index]
        node_layer, node_role, node_activation = node_layer[node_perm], node_role[node_perm], node_activation[node_perm]
        node_index, node_position, node_graph = node_index[node_perm], node_position[node_perm], node_graph[node_perm]
        if E and bool((node_layer[edge_index[0]] >= edge_layer).any()):
            raise AssertionError("neural graph has an edge that does not go to a later layer")
        G = _max0(node_graph) + 1
        edge_perm = torch.sort(edge_layer * G + edge_graph[: E], stable=True).indices if E else torch.zeros(0, dtype=torch.long)
        new_edge_id = torch.empty_like(edge_perm)
        new_edge_id[edge_perm] = torch.arange(E)
        edge_index, edge_kind, edge_layer = edge_index[:, edge_perm], edge_kind[edge_perm], edge_layer[edge_perm]
        edge_constant, edge_graph = edge_constant[edge_perm], edge_graph[edge_perm]
        # Remap the parameter slots into the new node/edge numbering.
        is_node = slot < N
        new_slot = torch.empty_like(slot)
        new_slot[is_node] = new_node_id[slot[is_node]]
        e_old, k = (slot[~is_node] - N) // K, (slot[~is_node] - N) % K
        new_slot[~is_node] = N + new_edge_id[e_old] * K + k
        elem_owner = torch.where(new_slot < N, new_slot, N + (new_slot - N) // K)
        L = _max0(node_layer) + 1
        ar = torch.arange(L + 1)
        sizes = [int(torch.Size(s).numel()) for s in param_shapes]
        param_offsets = torch.tensor([0] + sizes).cumsum(0)
        if graph_param_ptr is None:
            graph_param_ptr = torch.tensor([0, int(param_offsets[-1])])
        return NeuralGraph(
            kmax=kmax, edge_index=edge_index, edge_kind=edge_kind, edge_layer=edge_layer,
            edge_constant=edge_constant, edge_graph=edge_graph, node_layer=node_layer, node_role=node_role,
            node_activation=node_activation, node_index=node_index, node_position=node_position,
            node_graph=node_graph, slot=new_slot, elem_owner=elem_owner, param_offsets=param_offsets,
            layer_node_ptr=torch.searchsorted(node_layer, ar), layer_edge_ptr=torch.searchsorted(edge_layer, ar),
            graph_param_ptr=graph_param_ptr, param_names=list(param_names),
            param_shapes=[torch.Size(s) for s in param_shapes], layers=list(layers or []),
            unmapped_params=list(unmapped_params),
        )

    @staticmethod
    def batch(graphs: Sequence["NeuralGraph"]) -> "NeuralGraph":
        """Merge graphs (of different architectures) into one disjoint graph, PyG-style.

        Layer ``t`` of the batch holds layer ``t`` of every graph, so a layer-by-layer encoder processes all
        graphs at once. ``node_graph`` / ``edge_graph`` say which graph each node / edge came from; the flat
        parameter vector of the batch is the concatenation of the graphs' flat vectors (``graph_param_ptr``).
        Parameter names are prefixed ``"{g}."``. All graphs must share ``kmax``.
        """
        if not graphs:
            raise ValueError("NeuralGraph.batch needs at least one graph")
        kmax = graphs[0].kmax
        if any(g.kmax != kmax for g in graphs):
            raise ValueError(f"all graphs in a batch must share kmax, got {[g.kmax for g in graphs]}")
        K = kmax * kmax
        device = graphs[0].device  # built on the CPU (structure only, cheap), returned where the graphs live
        graphs = [g.to("cpu") for g in graphs]
        N_tot = sum(g.num_nodes for g in graphs)
        cols = {k: [] for k in ("nl", "nr", "na", "ni", "np", "ng", "ei", "ek", "ec", "eg", "slot")}
        names, shapes, layers, unmapped, pptr = [], [], [], [], [0]
        n_off = e_off = 0
        for gi, g in enumerate(graphs):
            if g.num_graphs != 1:
                raise ValueError("NeuralGraph.batch takes single graphs, not batches")
            cols["nl"].append(g.node_layer); cols["nr"].append(g.node_role); cols["na"].append(g.node_activation)
            cols["ni"].append(g.node_index); cols["np"].append(g.node_position)
            cols["ng"].append(torch.full((g.num_nodes,), gi, dtype=torch.long))
            cols["ei"].append(g.edge_index + n_off); cols["ek"].append(g.edge_kind); cols["ec"].append(g.edge_constant)
            cols["eg"].append(torch.full((g.num_edges,), gi, dtype=torch.long))
            is_node = g.slot < g.num_nodes
            cols["slot"].append(torch.where(is_node, g.slot + n_off, N_tot + e_off * K + (g.slot - g.num_nodes)))
            names += [f"{gi}.{n}" for n in g.param_names]
            shapes += g.param_shapes
            layers += g.layers
            unmapped += [f"{gi}.{n}" for n in g.unmapped_params]
            pptr.append(pptr[-1] + g.num_param_elements)
            n_off += g.num_nodes
            e_off += g.num_edges
        cat = {k: torch.cat(v, dim=1 if k == "ei" else 0) for k, v in cols.items()}
        return NeuralGraph.assemble(
            kmax=kmax, node_layer=cat["nl"], node_role=cat["nr"], node_activation=cat["na"], node_index=cat["ni"],
            node_position=cat["np"], edge_index=cat["ei"], edge_kind=cat["ek"], edge_constant=cat["ec"],
            slot=cat["slot"], param_names=names, param_shapes=shapes, layers=layers, unmapped_params=unmapped,
            node_graph=cat["ng"], edge_graph=cat["eg"], graph_param_ptr=torch.tensor(pptr),
        ).to(device)

    # ------------------------------------------------------------------ properties
    @property
    def num_nodes(self) -> int:
        return self.node_layer.numel()

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def num_layers(self) -> int:
        return self.layer_node_ptr.numel() - 1

    @property
    def num_graphs(self) -> int:
        return self.graph_param_ptr.numel() - 1

    @property
    def kernel_slots(self) -> int:
        return self.kmax * self.kmax

    @property
    def num_param_elements(self) -> int:
        return self.slot.numel()

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def to(self, device) -> "NeuralGraph":
        """A copy with every index tensor on ``device`` (float tensors keep their dtype)."""
        kw = {f: getattr(self, f).to(device) for f in _TENSOR_FIELDS}
        return NeuralGraph(kmax=self.kmax, param_names=list(self.param_names), param_shapes=list(self.param_shapes),
                           layers=self.layers, unmapped_params=list(self.unmapped_params),
                           skipped_modules=list(self.skipped_modules), **kw)

    def __repr__(self) -> str:
        kinds = {EDGE_KINDS[k]: int((self.edge_kind == k).sum()) for k in range(3)}
        return (f"NeuralGraph(graphs={self.num_graphs}, nodes={self.num_nodes}, edges={self.num_edges} {kinds}, "
                f"layers={self.num_layers}, kmax={self.kmax}, params={len(self.param_names)} tensors / "
                f"{self.num_param_elements} elements)")

    def cached(self, key: object, build: Callable[[], _T]) -> _T:
        """``build()`` once per graph and ``key``: index tensors derived from the (immutable) structure, so the
        per-step hot path does not recompute them."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # ------------------------------------------------------------------ flat <-> per-parameter
    def flatten(self, per_param: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], feature_dim: bool = True
                ) -> torch.Tensor:
        """Concatenate per-parameter tensors into ``[P, F]`` in ``param_names`` order.

        ``per_param`` maps names to ``[*param.shape, F]`` tensors (or ``[*param.shape]`` with ``feature_dim=False``),
        or is a sequence of such tensors in ``param_names`` order.
        """
        tensors = self._ordered(per_param)
        parts = []
        for name, shape, t in zip(self.param_names, self.param_shapes, tensors):
            lead = t.shape[: len(shape)] if feature_dim else t.shape
            if lead != shape or (feature_dim and t.dim() != len(shape) + 1):
                want = f"[{', '.join(map(str, shape))}{', F' if feature_dim else ''}]"
                raise ValueError(f"features for parameter '{name}' have shape {list(t.shape)}, expected {want}")
            parts.append(t.reshape(shape.numel(), -1) if feature_dim else t.reshape(-1, 1))
        return torch.cat(parts, 0)

    def unflatten(self, flat: torch.Tensor, feature_dim: bool = True) -> dict[str, torch.Tensor]:
        """Split ``[P, D]`` back into ``{name: [*param.shape, D]}`` (``[*param.shape]`` with ``feature_dim=False``)."""
        if flat.shape[0] != self.num_param_elements:
            raise ValueError(f"expected {self.num_param_elements} rows, got {flat.shape[0]}")
        sizes = [s.numel() for s in self.param_shapes]
        out = {}
        for name, shape, chunk in zip(self.param_names, self.param_shapes, torch.split(flat, sizes, 0)):
            out[name] = chunk.reshape(*shape, -1) if feature_dim else chunk.reshape(shape)
        return out

    def _ordered(self, per_param) -> list[torch.Tensor]:
        if isinstance(per_param, Mapping):
            missing = [n for n in self.param_names if n not in per_param]
            if missing:
                raise KeyError(f"missing features for parameters {missing}; the graph represents {self.param_names}")
            return [per_param[n] for n in self.param_names]
        tensors = list(per_param)
        if len(tensors) != len(self.param_names):
            raise ValueError(f"expected {len(self.param_names)} tensors ({self.param_names}), got {len(tensors)}")
        return tensors

    # ------------------------------------------------------------------ scatter / gather / unscatter
    def scatter_flat(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[P, F]`` -> ``(node_feats [N, F], edge_feats [E, K, F])``; empty slots are zero. Differentiable."""
        if flat.dim() != 2 or flat.shape[0] != self.num_param_elements:
            raise ValueError(f"scatter_flat expects [P={self.num_param_elements}, F], got {list(flat.shape)}")
        N, E, K = self.num_nodes, self.num_edges, self.kernel_slots
        buf = flat.new_zeros(N + E * K, flat.shape[1]).index_copy(0, self.slot, flat)
        return buf[:N], buf[N:].view(E, K, flat.shape[1])

    def unscatter_flat(self, node_feats: torch.Tensor, edge_feats: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scatter_flat`: ``([N, F], [E, K, F])`` -> ``[P, F]``."""
        E, K = self.num_edges, self.kernel_slots
        if node_feats.shape[0] != self.num_nodes or edge_feats.shape[:2] != (E, K):
            raise ValueError(f"unscatter expects node [{self.num_nodes}, F] and edge [{E}, {K}, F], got "
                             f"{list(node_feats.shape)} and {list(edge_feats.shape)}")
        buf = torch.cat([node_feats, edge_feats.reshape(E * K, -1)], 0)
        return buf.index_select(0, self.slot)

    def scatter_slots(self, flat: torch.Tensor | RowSource) -> tuple[torch.Tensor, "SlotFeatures"]:
        """``[P, F]`` -> ``(node_feats [N, F], SlotFeatures)``: :meth:`scatter_flat` without the dense edge buffer.

        ``SlotFeatures(...).dense()`` equals ``scatter_flat(flat)[1].reshape(E, K * F)``. Differentiable.
        ``flat`` may be a :class:`~l2o.runtime.RowSource` (the optimizer step): the node rows are made run by run
        and the edge rows stay lazy in the ``SlotFeatures`` (see there), so ``[P, F]`` is never held at once.
        """
        if len(flat.shape) != 2 or flat.shape[0] != self.num_param_elements:
            raise ValueError(f"scatter_slots expects [P={self.num_param_elements}, F], got {list(flat.shape)}")
        index = self.slot_index()
        if isinstance(flat, RowSource):
            # node rows (biases) lie in a few contiguous runs, one per bias tensor
            picked = [flat.rows(r0, r1) for r0, r1 in index.node_row_runs()]
            held = torch.cat(picked) if picked else torch.zeros(0, flat.shape[1], device=flat.device)
        else:
            held = flat.index_select(0, index.node_rows)
        node = held.new_zeros(self.num_nodes, flat.shape[1]).index_copy(0, index.node_of, held)
        return node, SlotFeatures(flat, index)

    def slot_index(self) -> "SlotIndex":
        """Where the parameter elements sit (cached): see :class:`SlotIndex`."""
        return self.cached("slot_index", lambda: SlotIndex.for_elements(self))

    def gather_flat(self, node_emb: torch.Tensor, edge_emb: torch.Tensor) -> torch.Tensor:
        """``(node_emb [N, D], edge_emb [E, D])`` -> ``[P, D]``: each element gets its node's / edge's embedding."""
        if node_emb.shape[0] != self.num_nodes or edge_emb.shape[0] != self.num_edges:
            raise ValueError(f"gather expects node [{self.num_nodes}, D] and edge [{self.num_edges}, D], got "
                             f"{list(node_emb.shape)} and {list(edge_emb.shape)}")
        if self.num_edges == 0:
            return node_emb.index_select(0, self.elem_owner)
        if _autograd_records(node_emb, edge_emb):
            # One gather from the stacked table: filling `out` piece by piece in place (below) would record a
            # CopySlices node per parameter tensor, each cloning the whole [P, D] gradient in the backward.
            return torch.cat([node_emb, edge_emb]).index_select(0, self.elem_owner)
        index = self.slot_index()
        # Filled piece by piece (no cat([node_emb, edge_emb]) copy of all E rows first): a weight tensor's rows are
        # its edges' rows in order, each repeated once per occupied slot (a broadcast copy, no index reads); other
        # rows are gathered. In place into a fresh tensor: autograd records each write.
        out = edge_emb.new_empty(self.num_param_elements, edge_emb.shape[1])
        for r0, r1, e0, e1, slots in index.segments:
            out[r0:r1].view(e1 - e0, len(slots), -1).copy_(edge_emb[e0:e1, None])
        for _, rows, edges in index.groups:
            out.index_copy_(0, rows, edge_emb.index_select(0, edges))
        return out.index_copy_(0, index.node_rows, node_emb.index_select(0, index.node_of))

    def scatter(self, per_param) -> tuple[torch.Tensor, torch.Tensor]:
        """``{name: [*param.shape, F]}`` -> ``(node_feats [N, F], edge_feats [E, K, F])``."""
        return self.scatter_flat(self.flatten(per_param))

    def unscatter(self, node_feats: torch.Tensor, edge_feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`scatter`: -> ``{name: [*param.shape, F]}``."""
        return self.unflatten(self.unscatter_flat(node_feats, edge_feats))

    def gather(self, node_emb: torch.Tensor, edge_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(node_emb [N, D], edge_emb [E, D])`` -> ``{name: [*param.shape, D]}``."""
        return self.unflatten(self.gather_flat(node_emb, edge_emb))

    def scatter_params(self, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and biases themselves on the graph: ``(node [N, 1], edge [E, K, 1])``."""
        return self.scatter_flat(self.flatten(self._ordered(params), feature_dim=False))

    def permutation(self, layer_perms: Mapping[object, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Node and edge index maps of a permutation of neurons within layers.

        ``layer_perms`` maps a layer (its index, or its module path in ``layers[0]``) to ``perm [n_layer]``:
        new neuron ``k`` of that layer is old neuron ``perm[k]``. Returns ``(node_map [N], edge_map [E])`` with
        ``new_node_feats = node_feats[node_map]`` and ``new_edge_feats = edge_feats[edge_map]``.
        Raises ``ValueError`` if the permuted graph is not the same graph (e.g. only half of a residual stream
        was permuted): such a permutation is not a symmetry of the network.
        """
        if self.num_graphs != 1:
            raise ValueError("permutation() works on single graphs")
        by_name = {info.name: info.index for info in (self.layers[0] if self.layers else [])}
        node_map = torch.arange(self.num_nodes, device=self.device)
        for key, perm in layer_perms.items():
            t = by_name[key] if isinstance(key, str) else int(key)
            n0, n1 = int(self.layer_node_ptr[t]), int(self.layer_node_ptr[t + 1])
            perm = torch.as_tensor(perm, device=self.device)
            if perm.numel() != n1 - n0 or not torch.equal(perm.sort().values, torch.arange(n1 - n0, device=self.device)):
                raise ValueError(f"layer {key!r} has {n1 - n0} nodes; {perm.tolist()} is not a permutation of them")
            node_map[n0:n1] = n0 + perm
        N = self.num_nodes
        key = (self.edge_index[0] * N + self.edge_index[1]) * len(EDGE_KINDS) + self.edge_kind
        src, dst = node_map[self.edge_index[0]], node_map[self.edge_index[1]]
        want = (src * N + dst) * len(EDGE_KINDS) + self.edge_kind
        sorted_key, order = key.sort()
        pos = torch.searchsorted(sorted_key, want).clamp(max=max(len(order) - 1, 0))
        if len(order) and not torch.equal(sorted_key[pos], want):
            raise ValueError("the permutation maps an edge onto a non-edge: it is not a symmetry of this network")
        return node_map, order[pos]

    def edge_blocks(self) -> list[tuple[int, int, tuple[int, int, int, int] | None]]:
        """``[(start, stop, dense)]``: the edges in order, one run per (target layer, graph). ``dense = (out_base,
        n_out, in_base, n_in)`` when the run is a complete bipartite block in row-major order, edge ``start + o *
        n_in + i`` going from node ``in_base + i`` to node ``out_base + o`` (the weights of a Linear, or of a conv
        with ``groups=1``), else None (identity edges, grouped convs, a layer fed by several blocks).

        Encoders use it to treat a dense block as a ``[n_out, n_in]`` grid: per-edge gathers become broadcasts and
        scatters over its targets become reductions along one axis. Structure only; computed once per graph."""
        def build():
            E = self.num_edges
            if E == 0:
                return []
            layer, graph = self.edge_layer.cpu(), self.edge_graph.cpu()
            key = layer * (int(graph.max()) + 1) + graph
            cuts = [0] + ((key[1:] != key[:-1]).nonzero().squeeze(1) + 1).tolist() + [E]
            src, dst = self.edge_index.cpu()
            runs = []
            for a, b in zip(cuts[:-1], cuts[1:]):
                out_base, in_base = int(dst[a]), int(src[a])
                n_out, dense = int(dst[b - 1]) - out_base + 1, None
                if n_out > 0 and (b - a) % n_out == 0:
                    n_in = (b - a) // n_out
                    if (torch.equal(dst[a:b], out_base + torch.arange(n_out).repeat_interleave(n_in))
                            and torch.equal(src[a:b], in_base + torch.arange(n_in).repeat(n_out))):
                        dense = (out_base, n_out, in_base, n_in)
                runs.append((a, b, dense))
            return runs

        return self.cached("edge_blocks", build)

    def reverse_edge_index(self) -> torch.Tensor:
        """``[2, E]`` with source and target swapped (for messages from later to earlier layers)."""
        return self.edge_index.flip(0)


def _autograd_records(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records operations on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@dataclass(frozen=True, eq=False)
class SlotIndex:
    """Where the rows of a per-element feature tensor ``[P, F]`` sit on the graph (structure only, cached per graph).

    Attributes (``P`` rows, ``E`` edges, ``K`` kernel slots):
        num_rows, num_edges, kernel_slots: ``P``, ``E``, ``K``.
        node_rows [P_n], node_of [P_n]: the rows held by nodes (biases) and their nodes.
        segments: ``(r0, r1, e0, e1, slots)`` for every parameter tensor whose rows ``r0:r1`` fill edges ``e0:e1``
            edge by edge, the same kernel slots ``slots`` (a tuple, in row order) on each: a linear weight (one
            slot) or a conv kernel (its ``k x k`` slots). Rows ``r0:r1`` viewed as ``[e1 - e0, len(slots) * F]`` *are*
            those edges' occupied features, so a linear map of them is one product on a view, no gather.
        groups: every other edge-held row, by kernel slot: ``(k, rows, edges)`` with ``rows [n_k]`` the rows at slot
            ``k`` and ``edges [n_k]`` their edges.
    """

    num_rows: int
    num_edges: int
    kernel_slots: int
    node_rows: torch.Tensor
    node_of: torch.Tensor
    segments: tuple
    groups: tuple

    def node_row_runs(self) -> list[tuple[int, int]]:
        """``node_rows`` as ``[(r0, r1), ...]`` runs of consecutive rows (it is ascending; one run per bias tensor)."""
        if "_runs" not in self.__dict__:
            rows = self.node_rows.tolist()
            runs = []
            for r in rows:
                if runs and runs[-1][1] == r:
                    runs[-1][1] = r + 1
                else:
                    runs.append([r, r + 1])
            object.__setattr__(self, "_runs", [tuple(run) for run in runs])
        return self.__dict__["_runs"]

    def by_slot(self) -> tuple:
        """Every edge-held row by kernel slot, the segments' rows included (``groups`` holds only the rest):
        ``((k, rows [n_k], edges [n_k]), ...)`` in ascending ``k``, cached.

        The form of the linear maps used under autograd: one gather, product and ``index_add`` per occupied slot,
        however many parameter tensors there are. Writing each segment in place into a slice of one output instead
        records a ``CopySlices`` node per segment whose backward clones the whole gradient, so a batched graph of
        T tasks (T times the segments, T times the rows) pays T^2 copies (``benchmarks/profile_meta_step``).
        Built on first use only: the optimizer step (no autograd) does not keep these ``2 x P`` indices."""
        if "_by_slot" not in self.__dict__:
            parts: dict[int, tuple[list, list]] = {}
            dev = self.node_rows.device
            for r0, r1, e0, e1, slots in self.segments:  # row r0 + i * m + j: edge e0 + i, slot slots[j]
                edges = torch.arange(e0, e1, device=dev)
                for j, k in enumerate(slots):
                    rows, eds = parts.setdefault(k, ([], []))
                    rows.append(torch.arange(r0 + j, r1, len(slots), device=dev))
                    eds.append(edges)
            for k, rows, edges in self.groups:
                r, e = parts.setdefault(k, ([], []))
                r.append(rows)
                e.append(edges)
            object.__setattr__(self, "_by_slot", tuple((k, torch.cat(r), torch.cat(e))
                                                       for k, (r, e) in sorted(parts.items())))
        return self.__dict__["_by_slot"]

    @staticmethod
    def for_elements(graph: NeuralGraph) -> "SlotIndex":
        N, E, K = graph.num_nodes, graph.num_edges, graph.kernel_slots
        slot = graph.slot
        on_edge = slot >= N
        node_rows = (~on_edge).nonzero().squeeze(1)
        edge_all, kk_all = (slot - N).clamp(min=0) // K, (slot - N).clamp(min=0) % K
        segments, rest = [], torch.ones_like(on_edge) & on_edge
        offsets = graph.param_offsets.tolist()
        for r0, r1 in zip(offsets[:-1], offsets[1:]):
            seg = _segment(on_edge[r0:r1], edge_all[r0:r1], kk_all[r0:r1])
            if seg is not None:
                e0, e1, slots = seg
                segments.append((r0, r1, e0, e1, slots))
                rest[r0:r1] = False
        rows = rest.nonzero().squeeze(1)
        edge, kk = edge_all.index_select(0, rows), kk_all.index_select(0, rows)
        groups = []
        for k in torch.unique(kk).tolist():
            mask = kk == k
            groups.append((k, rows[mask], edge[mask]))
        return SlotIndex(num_rows=slot.numel(), num_edges=E, kernel_slots=K, node_rows=node_rows,
                         node_of=slot.index_select(0, node_rows), segments=tuple(segments),
                         groups=tuple(groups))


def _segment(on_edge: torch.Tensor, edge: torch.Tensor, kk: torch.Tensor) -> tuple[int, int, tuple] | None:
    """``(e0, e1, slots)`` when one tensor's rows fill edges ``e0:e1`` in order, the same slots on each, else None."""
    n = edge.numel()
    if n == 0 or not bool(on_edge.all()):
        return None
    e0, e1 = int(edge[0]), int(edge[-1]) + 1
    if n % (e1 - e0):
        return None
    m = n // (e1 - e0)
    ar = torch.arange(n, device=edge.device)
    if not (bool((edge == e0 + ar // m).all()) and bool((kk == kk[:m].repeat(e1 - e0)).all())):
        return None
    return e0, e1, tuple(kk[:m].tolist())


class SlotFeatures:
    """Edge features in slot-sparse form: per-element rows ``values [P, F]`` plus where each row sits
    (:class:`SlotIndex`), standing for the dense ``[E, K * F]`` of :meth:`NeuralGraph.scatter_flat` (zeros in every
    empty slot) without materialising it. Made by :meth:`NeuralGraph.scatter_slots`.

    Everything linear in the edge features is computed from the rows directly: :meth:`project` is
    ``dense() @ weight.T + bias`` at the cost of one ``[n_k, F] x [F, d]`` product per occupied kernel slot.
    """

    def __init__(self, values: torch.Tensor | RowSource, index: SlotIndex):
        if len(values.shape) != 2 or values.shape[0] != index.num_rows:
            raise ValueError(f"SlotFeatures expects values [{index.num_rows}, F], got {list(values.shape)}")
        self._values, self.index = values, index

    @property
    def values(self) -> torch.Tensor:
        """The rows ``[P, F]`` as one tensor (a lazy :class:`~l2o.runtime.RowSource` is made once, in chunks, on
        first access: consumers that read every row at once, such as DNG's traversal, get the tensor)."""
        if isinstance(self._values, RowSource):
            self._values = as_tensor(self._values)
        return self._values

    @property
    def lazy(self) -> bool:
        """Whether the rows are still a :class:`~l2o.runtime.RowSource` (made chunk by chunk by :meth:`project`)."""
        return isinstance(self._values, RowSource)

    @property
    def num_edges(self) -> int:
        return self.index.num_edges

    @property
    def kernel_slots(self) -> int:
        return self.index.kernel_slots

    @property
    def feature_dim(self) -> int:
        """Features per kernel slot ``F``."""
        return self._values.shape[1]

    @property
    def edge_dim(self) -> int:
        """Size ``K * F`` of a dense edge feature row."""
        return self.kernel_slots * self.feature_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype if not self.lazy else self._values.rows(0, 0).dtype

    def dense(self) -> torch.Tensor:
        """The dense edge features ``[E, K * F]`` (zeros in empty slots)."""
        E, K, F = self.num_edges, self.kernel_slots, self.feature_dim
        values = self.values
        # Written in place into a fresh tensor (an out-of-place index_copy would copy the whole table per tensor).
        out = values.new_zeros(E * K, F)
        if _autograd_records(values):  # one write per slot, not per parameter tensor: see SlotIndex.by_slot
            for k, rows, edges in self.index.by_slot():
                out.index_copy_(0, edges * K + k, values.index_select(0, rows))
            return out.view(E, K * F)
        dev = values.device
        for r0, r1, e0, e1, slots in self.index.segments:
            pos = torch.arange(e0, e1, device=dev)[:, None] * K + device_constant(slots, torch.long, dev)
            out.index_copy_(0, pos.flatten(), values[r0:r1])
        for k, rows, edges in self.index.groups:
            out.index_copy_(0, edges * K + k, values.index_select(0, rows))
        return out.view(E, K * F)

    def project(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, into: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``dense() @ weight.T + bias`` -> ``[E, d]`` for ``weight [d, K * F]``, ``bias [d]`` or ``[E, d]`` (per
        edge; not modified); differentiable.

        ``into``: instead of ``bias``, a fresh ``[E, d]`` tensor (e.g. per-edge embeddings just gathered) that the
        product is accumulated into in place and returned; its producer's backward must not read it (an
        ``embedding`` or ``index_select`` output is fine). Saves an ``[E, d]`` copy.

        The linear map splits into one ``[d, F]`` block per kernel slot, and an empty slot contributes nothing, so
        only the occupied slots' rows are multiplied.
        """
        E, K, F = self.num_edges, self.kernel_slots, self.feature_dim
        d = weight.shape[0]
        if weight.shape[1] != K * F:
            raise ValueError(f"project expects weight [d, {K * F}], got {list(weight.shape)}")
        if into is not None and (bias is not None or into.shape != (E, d)):
            raise ValueError(f"project takes either bias or into=[{E}, {d}], got into {list(into.shape)}")
        w = weight.view(d, K, F)
        # In-place accumulation into `out`, a fresh tensor whose producers (embedding, clone) do not need it for
        # their backward: autograd-safe, and it saves an [E, d] copy per product.
        out = self._fresh(bias, d) if into is None else into
        if _autograd_records(weight, out, None if self.lazy else self._values):
            # One product per occupied slot: in-place products on slices of `out` would each record a CopySlices
            # node whose backward clones all of out's gradient (see SlotIndex.by_slot).
            values = self.values
            for k, rows, edges in self.index.by_slot():
                out.index_add_(0, edges, values.index_select(0, rows) @ w[:, k].t())
            return out
        lazy = self.lazy and not self.index.groups  # irregular rows (groups) are gathered: make the tensor then
        step = chunk_size(w.device)
        for r0, r1, e0, e1, slots in self.index.segments:  # one product per weight tensor, on a view of its rows
            m = len(slots)
            # (a cached device index: indexing with a list would copy one from the host on every step)
            w_seg = (weight if slots == tuple(range(K)) else
                     w.index_select(1, device_constant(slots, torch.long, w.device)).reshape(d, m * F))
            if not lazy:
                out[e0:e1].addmm_(self.values[r0:r1].reshape(e1 - e0, m * F), w_seg.t())
                continue
            per = max(1, step // m)  # whole edges per chunk: the rows are made a chunk at a time
            for a in range(e0, e1, per):
                b = min(a + per, e1)
                rows = self._values.rows(r0 + (a - e0) * m, r0 + (b - e0) * m)
                out[a:b].addmm_(rows.reshape(b - a, m * F), w_seg.t())
        for k, rows, edges in self.index.groups:
            out.index_add_(0, edges, self.values.index_select(0, rows) @ w[:, k].t())
        return out

    def _fresh(self, bias: torch.Tensor | None, d: int) -> torch.Tensor:
        """A new ``[E, d]`` tensor holding ``bias`` (zeros without one), safe to accumulate into."""
        if bias is None:
            like = self._values if not self.lazy else self._values.rows(0, 0)
            return like.new_zeros(self.num_edges, d)
        return bias.expand(self.num_edges, d).clone(memory_format=torch.contiguous_format)
