"""Neural graphs of PyTorch models: structure built once, features moved by cached index operations."""
from .activations import ACTIVATIONS, register_activation
from .errors import UnsupportedModuleError
from .neural_graph import (EDGE_IDENTITY, EDGE_KINDS, EDGE_NORM, EDGE_WEIGHT, ROLE_HIDDEN, ROLE_INPUT, ROLE_OUTPUT,
                           ROLES, LayerInfo, NeuralGraph, SlotFeatures, SlotIndex)

__all__ = ["NeuralGraph", "SlotFeatures", "SlotIndex", "LayerInfo", "UnsupportedModuleError", "ACTIVATIONS", "register_activation", "EDGE_WEIGHT",
           "EDGE_NORM", "EDGE_IDENTITY", "EDGE_KINDS", "ROLE_INPUT", "ROLE_HIDDEN", "ROLE_OUTPUT", "ROLES"]
