"""Tasks as plain data: ``task_from_spec(task.to_spec())`` rebuilds an equal task (meta-training checkpoints)."""
from __future__ import annotations

from .base import TaskProtocol
from .registry import Task
from .regression import RegressionTask

# spec["kind"] -> the class whose from_spec rebuilds it
SPEC_KINDS = {"ConvNet": Task, "MLP": Task, "regression": RegressionTask}


def task_from_spec(spec: dict) -> TaskProtocol:
    """The task that ``spec`` (written by its ``to_spec``) describes."""
    cls = SPEC_KINDS.get(spec.get("kind"))
    if cls is None:
        raise ValueError(f"cannot rebuild task {spec.get('name', spec)!r} from its spec: unknown kind "
                         f"{spec.get('kind')!r} (known: {', '.join(SPEC_KINDS)})")
    return cls.from_spec(spec)
