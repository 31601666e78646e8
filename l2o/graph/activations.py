"""Activation types known to the neural graph.

Every node carries the id of the activation that follows it (``identity`` when none does); encoders add a
learned embedding per type (Kofinas et al., ICLR 2024). The table is append-only so that ids stored in
checkpoints keep their meaning.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS: list[str] = [
    "identity", "relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "sin", "elu", "softplus",
]

# Module types that apply an elementwise activation. Users may register more (e.g. a SIREN ``Sine``).
_MODULE_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Softplus: "softplus",
}

# Functional spellings seen by torch.fx: call_function targets and call_method names.
FUNCTION_ACTIVATIONS: dict[object, str] = {
    torch.relu: "relu", F.relu: "relu", F.gelu: "gelu", F.silu: "silu", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.leaky_relu: "leaky_relu",
    torch.sin: "sin", F.elu: "elu", F.softplus: "softplus",
}
FUNCTION_ACTIVATIONS.update({torch.relu_: "relu", F.relu_: "relu", torch.sigmoid_: "sigmoid", torch.tanh_: "tanh",
                             F.elu_: "elu", F.leaky_relu_: "leaky_relu"})  # in-place spellings
METHOD_ACTIVATIONS: dict[str, str] = {
    "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "sin": "sin",
    "relu_": "relu", "tanh_": "tanh", "sigmoid_": "sigmoid", "sin_": "sin",
}


def activation_id(name: str) -> int:
    return ACTIVATIONS.index(name)


def register_activation(module_type: type, name: str) -> None:
    """Declare ``module_type`` an elementwise activation called ``name``.

    Registered modules are leaves of the trace (their ``forward`` is not looked into). A new ``name`` is
    appended to :data:`ACTIVATIONS`; encoders built afterwards get an embedding row for it.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_activation expects an nn.Module subclass, got {module_type!r}")
    if name not in ACTIVATIONS:
        ACTIVATIONS.append(name)
    _MODULE_ACTIVATIONS[module_type] = name


def module_activation(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        if cls in _MODULE_ACTIVATIONS:
            return _MODULE_ACTIVATIONS[cls]
    return None


def is_activation_module_type(module_type: type) -> bool:
    return any(cls in _MODULE_ACTIVATIONS for cls in module_type.__mro__)
