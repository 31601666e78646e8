"""Learned-optimizer checkpoints: one file with the family, its config, its weights, the package version and the
meta-training summary. Loading never unpickles arbitrary objects (``torch.load(weights_only=True)``), so a
checkpoint cannot run code; a wrong, truncated or mismatched file raises :class:`CheckpointError`."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import OptimizerConfig, build_optimizer
from .learned import Optimizer

FORMAT = "l2o-learned-optimizer"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, of another format, or does not match its config."""


def save_checkpoint(path: str | Path, optimizer: Optimizer, config: OptimizerConfig, summary: dict | None = None
                    ) -> Path:
    """Write atomically (temp file + rename), so a crash mid-write never leaves a truncated checkpoint."""
    from .. import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "family": config.family, "config": config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in optimizer.state_dict().items()},
               "summary": dict(summary or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw payload, validated (no optimizer built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors all mean the same thing here
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated and cannot be read ({type(exc).__name__}: "
                              f"{exc}). Re-export it from the meta-training run's state with "
                              f"`python -m meta_train export`, or meta-train again.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not an l2o learned-optimizer checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' was written by a newer l2o (format {payload['format_version']}); upgrade l2o")
    for key in ("config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"checkpoint '{path}' has no '{key}' entry")
    return payload


def load_checkpoint(path: str | Path) -> tuple[Optimizer, OptimizerConfig, dict]:
    """Rebuild the optimizer of a checkpoint: ``(optimizer, config, payload)``. ``path`` is a ``.pt`` file or a
    folder written by :func:`l2o.optim.save_pretrained` (then ``payload`` holds its config and summary)."""
    if Path(path).is_dir():
        from .pretrained import from_pretrained

        try:
            optimizer, config, summary = from_pretrained(path)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"'{path}' is not a readable saved learned optimizer ({type(exc).__name__}: "
                                  f"{exc})") from exc
        return optimizer, config, {"family": config.family, "config": config.to_dict(), "summary": summary}
    payload = read_checkpoint(path)
    try:
        config = OptimizerConfig.from_dict(payload["config"])
        optimizer = build_optimizer(config)
        optimizer.load_state_dict(payload["state_dict"], strict=True)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint '{path}' does not match its own config ({exc})") from exc
    return optimizer, config, payload


# The settings that define what the per-element head reads and how it turns its output into a step: a warm start
# copies the head's weights, which only mean the same rule when these agree.
HEAD_SETTINGS = ("inputs", "preprocess", "step_rule", "lam", "head_hidden", "head_layers", "layer_scale",
                 "adam_residual", "adam_lr", "adam_scale", "additive", "relative", "category_rates", "rate_cap")


def warm_start(optimizer: Optimizer, config: OptimizerConfig, path: str | Path) -> list[str]:
    """Start ``optimizer`` (built from ``config``, freshly initialised) from the rule of the checkpoint at ``path``.

    Every weight whose name and shape the two share is copied (for a graph optimizer started from an FF checkpoint:
    the per-element head). When the checkpoint has no embedding input and ``optimizer`` has one (a graph encoder, an
    LSTM), the head's embedding projection is zeroed, so the new optimizer's first step is exactly the checkpoint's
    rule and the encoder's contribution grows from zero in meta-training (its weights keep their fresh
    initialisation; the projection's gradient is not zero, so they train from the first outer step on).

    Returns the names copied. Raises :class:`CheckpointError` when the head settings differ (:data:`HEAD_SETTINGS`),
    a shared name differs in shape, or nothing is shared.
    """
    payload = read_checkpoint(path)
    try:
        source = OptimizerConfig.from_dict(payload["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint '{path}' has an unreadable config ({exc})") from exc
    differ = [f"{k}: {getattr(source, k)!r} there, {getattr(config, k)!r} here" for k in HEAD_SETTINGS
              if getattr(source, k) != getattr(config, k)]
    if differ:
        raise CheckpointError(f"cannot warm-start from '{path}': its update head is set up differently ("
                              + "; ".join(differ) + "). Use the checkpoint's head settings for the new optimizer.")
    state, own = payload["state_dict"], optimizer.state_dict()
    wrong = [f"{k} {list(v.shape)} there, {list(own[k].shape)} here" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"cannot warm-start from '{path}': shared weights differ in shape ({'; '.join(wrong)})")
    shared = [k for k in state if k in own]
    if not shared:
        raise CheckpointError(f"cannot warm-start from '{path}': it shares no weight with a {config.family!r} "
                              f"optimizer")
    optimizer.load_state_dict({k: state[k] for k in shared}, strict=False)
    with torch.no_grad():
        proj = getattr(getattr(optimizer, "head", None), "embed_proj", None)
        if proj is not None and not any(k.startswith("head.embed_proj.") for k in state):
            proj.weight.zero_()
    return shared
