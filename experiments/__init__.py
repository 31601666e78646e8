"""Studies: one module per study, each rerun with ``python -m experiments.<study>``; outputs in results/experiments/."""
