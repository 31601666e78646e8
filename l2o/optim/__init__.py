"""Learned optimizers: features, update heads, optimizer families, checkpoints and NeuralGraphOptimizer."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint, warm_start
from .config import FAMILIES, GRAPH_FAMILIES, HAND_FAMILIES, LEARNED_FAMILIES, OptimizerConfig, build_optimizer
from .context import ParamContext
from .features import FeatureConfig
from .learned import (Adam, FFOptimizer, GraphOptimizer, LearnedOptimizer, LSTMOptimizer, Optimizer, RelativeAdam,
                      SGDMomentum, TensorLSTMOptimizer)
from .neural_graph_optimizer import DEFAULT_CHECKPOINT, NeuralGraphOptimizer, pretrained_dir, shipped_checkpoint
from .pretrained import from_pretrained, save_pretrained

__all__ = ["NeuralGraphOptimizer", "DEFAULT_CHECKPOINT", "pretrained_dir", "shipped_checkpoint", "ParamContext",
           "FeatureConfig",
           "OptimizerConfig", "build_optimizer", "Optimizer", "LearnedOptimizer", "GraphOptimizer", "FFOptimizer",
           "LSTMOptimizer", "TensorLSTMOptimizer", "Adam", "RelativeAdam", "SGDMomentum", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "warm_start", "CheckpointError", "save_pretrained", "from_pretrained",
           "FAMILIES", "GRAPH_FAMILIES", "LEARNED_FAMILIES", "HAND_FAMILIES"]
