"""Graph encoders over neural graphs, one interface: ``encoder(graph, node_feats, edge_feats) -> (node_emb, edge_emb)``."""
from .base import GraphEncoder
from .embeddings import FeatureProjection, GraphInputEmbedding, PositionalEmbedding, graph_readout, sinusoid_table

__all__ = ["GraphEncoder", "GraphInputEmbedding", "FeatureProjection", "PositionalEmbedding", "graph_readout",
           "sinusoid_table", "build_encoder", "ENCODERS"]

ENCODERS: dict[str, type] = {}


def _register() -> None:
    # Imported lazily-by-name so a missing optional encoder module does not break the package import.
    import importlib

    for name, (mod, cls) in {"ng-gnn": ("ng_gnn", "NGGNN"), "ng-t": ("ng_transformer", "NGTransformer"),
                             "dng": ("dng", "DynamicGraphEncoder"), "nfn": ("nfn", "NFNEncoder")}.items():
        try:
            module = importlib.import_module(f".{mod}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise
            continue
        ENCODERS[name] = getattr(module, cls)
        globals()[cls] = ENCODERS[name]
        __all__.append(cls)


def build_encoder(name: str, node_in: int, edge_in: int, **kwargs) -> GraphEncoder:
    """Build an encoder by name (``ng-gnn``, ``ng-t``, ``dng``, ``nfn``) with the common constructor arguments."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder '{name}'; available: {sorted(ENCODERS)}")
    return ENCODERS[name](node_in, edge_in, **kwargs)


_register()
