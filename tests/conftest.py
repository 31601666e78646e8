"""Shared fixtures and marks: ``device`` runs a test on the CPU always and on CUDA when a GPU is present;
``needs_data`` skips a test that reads the real data sets when ``$L2O_DATA`` is unset or missing."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HAS_DATA = bool(os.environ.get("L2O_DATA")) and Path(os.environ.get("L2O_DATA", "/nonexistent")).is_dir()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="L2O_DATA unset or missing")

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
