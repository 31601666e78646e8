"""Learned optimizers as Hugging Face-style folders: ``save_pretrained`` / ``from_pretrained``.

A folder holds ``config.json`` (the :class:`OptimizerConfig` and the meta-training summary), ``model.safetensors``
(the meta-parameters; no pickle, so loading cannot run code) and ``README.md`` (the model card). ``from_pretrained``
takes a local folder (no network) or a Hub repo id (downloaded by ``huggingface_hub``, then cached).

    from l2o.optim import from_pretrained, save_pretrained
    save_pretrained("my-opt", learned, config, card="# My optimizer ...")
    learned, config, summary = from_pretrained("my-opt")
    NeuralGraphOptimizer(model, checkpoint="my-opt")        # a folder works wherever a .pt checkpoint does
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from .config import OptimizerConfig, build_optimizer
from .learned import Optimizer

LIBRARY = "l2o-neural-graphs"


class PretrainedOptimizer(nn.Module, PyTorchModelHubMixin, library_name=LIBRARY,
                          tags=["learned-optimizer", "neural-graph"]):
    """The hub mixin's handle on a learned optimizer: ``config`` (a plain dict) rebuilds it, the mixin does the I/O.

    Args:
        optimizer: the learned optimizer config as a dict (``OptimizerConfig.to_dict()``).
        summary: meta-training summary (free-form, JSON).
    """

    def __init__(self, optimizer: dict, summary: dict | None = None):
        super().__init__()
        self.config_dict, self.summary = dict(optimizer), dict(summary or {})
        self.optimizer = build_optimizer(OptimizerConfig.from_dict(self.config_dict))


def save_pretrained(folder: str | Path, optimizer: Optimizer, config: OptimizerConfig, summary: dict | None = None,
                    card: str | None = None) -> Path:
    """Write ``folder/{config.json, model.safetensors, README.md}``; ``card`` (Markdown) replaces the generated
    model card."""
    folder = Path(folder)
    handle = PretrainedOptimizer(config.to_dict(), summary)
    handle.optimizer.load_state_dict(optimizer.state_dict())
    handle.save_pretrained(folder, config={"optimizer": config.to_dict(), "summary": dict(summary or {})})
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def from_pretrained(name_or_path: str | Path, local_files_only: bool = False) -> tuple[Optimizer, OptimizerConfig, dict]:
    """``(optimizer, config, summary)`` from a local folder written by :func:`save_pretrained` or a Hub repo id."""
    path = Path(name_or_path)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"'{path}' is not a saved learned optimizer: it has no config.json "
                                f"(write one with l2o.optim.save_pretrained)")
    handle = PretrainedOptimizer.from_pretrained(name_or_path, local_files_only=local_files_only or path.exists())
    return handle.optimizer, OptimizerConfig.from_dict(handle.config_dict), handle.summary


def is_pretrained_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and "optimizer" in json.loads(
        (path / "config.json").read_text())
