import math

import pytest

from l2o.schedules import warmup_cosine


def test_warmup_then_cosine_to_the_floor_and_held_there():
    values = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(30)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))  # never rises after the warm-up
    assert values[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[20:] == [pytest.approx(0.1)] * 10


def test_no_warmup_starts_at_the_full_rate():
    assert warmup_cosine(0, warmup=0, total=10) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup=0, total=10) == pytest.approx(0.0)
