"""Shared fixtures: ``device`` runs a test on the CPU always and on CUDA when a GPU is present."""
from __future__ import annotations

import pytest
import torch

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
