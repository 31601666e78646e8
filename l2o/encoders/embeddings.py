"""Input embeddings shared by every encoder: feature projections, activation, role/position and edge-kind tables.

``GraphInputEmbedding`` turns raw per-node / per-edge features into the first hidden states ``x [N, d]`` and
``e [E, d]``. What it adds keeps exactly the hidden-neuron permutation symmetry (Kofinas et al., ICLR 2024):

* node positional embedding: one learned vector per *input* node (by its index), one per *output* node (by its
  index), and one shared by all hidden nodes of a layer (by layer position). The tables are sinusoid-initialised
  and indexed modulo their size, so graphs wider or deeper than any seen in training still run;
* activation-type embedding of the activation that follows each node;
* spatial-position embedding for per-position channel copies made at a flatten (``node_position >= 0``);
* edge-kind embedding (weight / normalisation diagonal / identity).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import ACTIVATIONS, EDGE_KINDS, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT, NeuralGraph, SlotFeatures


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """``[n, d]`` transformer-style sinusoids (scaled to unit-ish RMS, like a learned embedding at init)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / max(d, 2)))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table


class FeatureProjection(nn.Module):
    """``[*, F] -> [*, d]``: a linear map, or random Fourier features followed by a linear map.

    Fourier features (``fourier > 0`` frequencies, fixed Gaussian with scale ``sigma``) help small-magnitude
    inputs such as INR weights be told apart (Tancik et al. 2020).
    """

    def __init__(self, in_dim: int, out_dim: int, fourier: int = 0, sigma: float = 1.0):
        super().__init__()
        self.in_dim, self.out_dim, self.fourier = in_dim, out_dim, fourier
        if fourier:
            self.register_buffer("freqs", torch.randn(in_dim, fourier) * sigma)
            self.linear = nn.Linear(in_dim + 2 * fourier, out_dim)
        else:
            self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor | SlotFeatures) -> torch.Tensor:
        """``[*, F] -> [*, d]``; slot-sparse edge features (:class:`SlotFeatures`) -> ``[E, d]``."""
        if isinstance(x, SlotFeatures):
            if not self.fourier:  # linear: computed from the occupied slots alone
                return x.project(self.linear.weight, self.linear.bias)
            x = x.dense()  # Fourier features of an empty slot are not zero: they need the dense form
        if self.fourier:
            z = 2 * math.pi * x @ self.freqs
            x = torch.cat([x, z.sin(), z.cos()], -1)
        return self.linear(x)


class PositionalEmbedding(nn.Module):
    """Per-node positional vectors ``[N, d]`` by role: input index, output index, or hidden layer position.

    ``mode="index"`` (default) gives every input and output neuron its own vector (weight-space tasks, where the
    input pixels / output classes mean something fixed). ``mode="role"`` shares one vector by all input nodes and one
    by all output nodes: a learned optimizer trained on 1-channel Fashion-MNIST then meets CIFAR-10's 3 channels
    without untrained rows.
    """

    def __init__(self, d: int, max_inputs: int = 4096, max_outputs: int = 1024, max_layers: int = 64,
                 mode: str = "index"):
        super().__init__()
        if mode not in ("index", "role"):
            raise ValueError(f"positional mode must be 'index' or 'role', got {mode!r}")
        self.mode = mode
        if mode == "role":
            max_inputs = max_outputs = 1
        self.inputs = nn.Parameter(sinusoid_table(max_inputs, d))
        self.outputs = nn.Parameter(sinusoid_table(max_outputs, d))
        self.layers = nn.Parameter(sinusoid_table(max_layers, d))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for table in (self.inputs, self.outputs, self.layers):
            table.copy_(sinusoid_table(*table.shape))

    def forward(self, graph: NeuralGraph) -> torch.Tensor:
        role, idx, layer = graph.node_role, graph.node_index, graph.node_layer
        out = self.layers[layer % self.layers.shape[0]]
        inp = self.inputs[idx % self.inputs.shape[0]]
        outp = self.outputs[idx % self.outputs.shape[0]]
        out = torch.where((role == ROLE_INPUT)[:, None], inp, out)
        return torch.where((role == ROLE_OUTPUT)[:, None], outp, out)


class GraphInputEmbedding(nn.Module):
    """Raw features -> initial node and edge states.

    Args:
        node_in: node feature size ``F_n``; edge_in: edge feature size ``F_e`` (e.g. ``kmax**2 * F``).
        d: hidden size. fourier: number of random Fourier frequencies (0 = plain linear projection).
    Shapes: ``forward(graph, node_feats [N, F_n], edge_feats [E, F_e]) -> (x [N, d], e [E, d])``; ``edge_feats`` may
    also be slot-sparse (:class:`~l2o.graph.SlotFeatures` standing for ``[E, F_e]``).
    """

    def __init__(self, node_in: int, edge_in: int, d: int, fourier: int = 0, max_positions: int = 256,
                 positional: str = "index"):
        super().__init__()
        self.node_proj = FeatureProjection(node_in, d, fourier)
        self.edge_proj = FeatureProjection(edge_in, d, fourier)
        self.pos = PositionalEmbedding(d, mode=positional)
        self.act = nn.Embedding(len(ACTIVATIONS) + 8, d)  # spare rows for activations registered later
        self.spatial = nn.Embedding(max_positions, d)
        self.edge_kind = nn.Embedding(len(EDGE_KINDS), d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.node_proj.linear.reset_parameters()
        self.edge_proj.linear.reset_parameters()
        self.pos.reset_parameters()
        for emb in (self.act, self.spatial, self.edge_kind):
            nn.init.normal_(emb.weight, std=0.1)

    def forward(self, graph: NeuralGraph, node_feats: torch.Tensor, edge_feats: torch.Tensor | SlotFeatures
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_nodes(graph, node_feats), self.embed_edges(graph, edge_feats)

    def embed_nodes(self, graph: NeuralGraph, node_feats: torch.Tensor) -> torch.Tensor:
        """``x [N, d]``: projected features + positional, activation and spatial-position embeddings."""
        x = self.node_proj(node_feats) + self.pos(graph) + self.act(graph.node_activation)
        has_pos = graph.node_position >= 0
        # Non-copies use row 0 masked out, keeping the op free of data-dependent shapes.
        spatial = self.spatial(graph.node_position.clamp(min=0) % self.spatial.num_embeddings)
        return x + spatial * has_pos[:, None].to(x.dtype)

    def embed_edges(self, graph: NeuralGraph, edge_feats: torch.Tensor | SlotFeatures) -> torch.Tensor:
        """``e [E, d]``: projected features + edge-kind embedding."""
        proj = self.edge_proj
        if isinstance(edge_feats, SlotFeatures) and not proj.fourier:
            # The kind rows (with the projection's bias folded into the 3-row table) are the product's input.
            base = F.embedding(graph.edge_kind, self.edge_kind.weight + proj.linear.bias)
            return edge_feats.project(proj.linear.weight, into=base)
        return proj(edge_feats) + self.edge_kind(graph.edge_kind)


def graph_readout(graph: NeuralGraph, node_emb: torch.Tensor, edge_emb: torch.Tensor | None = None,
                  reduce: str = "mean") -> torch.Tensor:
    """Per-graph pooled vector ``[G, d]`` (or ``[G, 2d]`` with edges): invariant to hidden-neuron permutations.

    Pools hidden and output nodes (input nodes carry no information about the weights beyond their biases,
    which are zero) and, when given, all edges.
    """
    from torch_geometric.utils import scatter

    G = graph.num_graphs
    keep = graph.node_role != ROLE_INPUT
    pooled = scatter(node_emb[keep], graph.node_graph[keep], dim=0, dim_size=G, reduce=reduce)
    if edge_emb is not None:
        pooled = torch.cat([pooled, scatter(edge_emb, graph.edge_graph, dim=0, dim_size=G, reduce=reduce)], -1)
    return pooled


ROLE_NAMES = {ROLE_INPUT: "input", ROLE_HIDDEN: "hidden", ROLE_OUTPUT: "output"}
