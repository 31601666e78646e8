"""The studies in ``experiments/``: each reruns with ``python -m experiments.<study>``; results/ holds no code."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")


def test_results_hold_no_code():
    assert not list((ROOT / "results").rglob("*.py"))


def test_studies_import_the_package_not_paths():
    for path in (ROOT / "experiments").glob("*.py"):
        assert "sys.path" not in path.read_text(), path


@pytest.mark.parametrize("study", STUDIES)
def test_study_command_line(study):
    out = subprocess.run([sys.executable, "-m", f"experiments.{study}", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert f"python -m experiments.{study}" in out.stdout
