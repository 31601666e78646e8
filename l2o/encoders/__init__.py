"""Graph encoders over neural graphs, one interface: ``encoder(graph, node_feats, edge_feats) -> (node_emb, edge_emb)``."""
from .base import GraphEncoder
from .dng import DynamicGraphEncoder
from .embeddings import FeatureProjection, GraphInputEmbedding, PositionalEmbedding, graph_readout, sinusoid_table
from .nfn import NFNEncoder
from .ng_gnn import NGGNN
from .ng_transformer import NGTransformer

ENCODERS: dict[str, type[GraphEncoder]] = {"ng-gnn": NGGNN, "ng-t": NGTransformer, "dng": DynamicGraphEncoder,
                                           "nfn": NFNEncoder}

__all__ = ["GraphEncoder", "GraphInputEmbedding", "FeatureProjection", "PositionalEmbedding", "graph_readout",
           "sinusoid_table", "build_encoder", "ENCODERS", "NGGNN", "NGTransformer", "DynamicGraphEncoder",
           "NFNEncoder"]


def build_encoder(name: str, node_in: int, edge_in: int, **kwargs) -> GraphEncoder:
    """Build an encoder by name (``ng-gnn``, ``ng-t``, ``dng``, ``nfn``) with the common constructor arguments."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder '{name}'; available: {sorted(ENCODERS)}")
    return ENCODERS[name](node_in, edge_in, **kwargs)
