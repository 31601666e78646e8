"""Learning-rate schedules shared by meta-training and the weight-space training loops."""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base rate at ``step`` (0-based): linear warm-up over ``warmup`` steps to 1, then a cosine
    from 1 to ``min_ratio`` at ``total`` (held there after ``total``), as ``LambdaLR`` expects."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
