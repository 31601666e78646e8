"""l2o: graph-based learned optimizers for PyTorch."""
from .graph import NeuralGraph, UnsupportedModuleError

__version__ = "0.1.0"
__all__ = ["NeuralGraph", "UnsupportedModuleError", "__version__"]
