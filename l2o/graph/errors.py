"""Errors raised while turning a model into a neural graph."""
from __future__ import annotations


class UnsupportedModuleError(ValueError):
    """A part of the model cannot be represented on the neural graph.

    Raised instead of building a silently wrong graph. ``path`` is the module path inside the model (as in
    ``model.named_modules()``) or, for a functional call, the traced node's name; ``kind`` is the module type
    or function; ``hint`` says what the user can do about it.
    """

    def __init__(self, path: str, kind: str, reason: str = "", hint: str = ""):
        self.path, self.kind, self.reason, self.hint = path, kind, reason, hint
        msg = f"cannot represent '{path}' ({kind}) on the neural graph"
        if reason:
            msg += f": {reason}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)
