"""Learned optimizers: features, update heads, optimizer families, checkpoints and NeuralGraphOptimizer."""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import FAMILIES, GRAPH_FAMILIES, HAND_FAMILIES, LEARNED_FAMILIES, OptimizerConfig, build_optimizer
from .context import ParamContext
from .features import FeatureConfig
from .learned import Adam, FFOptimizer, GraphOptimizer, LearnedOptimizer, LSTMOptimizer, Optimizer, SGDMomentum
from .neural_graph_optimizer import DEFAULT_CHECKPOINT, NeuralGraphOptimizer

__all__ = ["NeuralGraphOptimizer", "DEFAULT_CHECKPOINT", "ParamContext", "FeatureConfig", "OptimizerConfig",
           "build_optimizer", "Optimizer", "LearnedOptimizer", "GraphOptimizer", "FFOptimizer", "LSTMOptimizer",
           "Adam", "SGDMomentum", "save_checkpoint", "load_checkpoint", "read_checkpoint", "CheckpointError",
           "FAMILIES", "GRAPH_FAMILIES", "LEARNED_FAMILIES", "HAND_FAMILIES"]
