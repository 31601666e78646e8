"""Where zoo files live, and atomic writes of them: a killed build never leaves a truncated zoo behind."""
from __future__ import annotations

import os
from pathlib import Path

import torch

ZOO_DIR_ENV = "L2O_ZOO_DIR"


def default_cache_dir(root: Path) -> Path:
    """Where the INR and CNN zoos are cached: ``$L2O_ZOO_DIR`` if set, else ``<root>/weight_space``, or
    ``~/.cache/l2o/weight_space`` when this process cannot write to the data root (a shared, read-only data set)."""
    env = os.environ.get(ZOO_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    folder = root / "weight_space"
    if os.access(folder if folder.is_dir() else root, os.W_OK):
        return folder
    return Path.home() / ".cache" / "l2o" / "weight_space"


def atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
