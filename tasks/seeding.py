"""One seed mixer for every derived random stream, so two places never disagree on how streams are numbered."""
from __future__ import annotations

SEED_STRIDE = 1_000_003  # a prime larger than any stream index used here


def mix_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` of a run / task with seed ``seed`` (distinct for distinct pairs in range)."""
    return seed * SEED_STRIDE + index
