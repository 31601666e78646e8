"""Studies: one module per study, each rerun with ``python -m experiments.<study>``; outputs in results/experiments/."""
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"  # where the studies write, wherever they are run from
