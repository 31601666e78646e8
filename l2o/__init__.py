"""l2o: graph-based learned optimizers for PyTorch."""
__version__ = "0.1.0"

from .graph import NeuralGraph, UnsupportedModuleError  # noqa: E402
from .optim import NeuralGraphOptimizer, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = ["NeuralGraph", "UnsupportedModuleError", "NeuralGraphOptimizer", "load_checkpoint", "save_checkpoint",
           "__version__"]
