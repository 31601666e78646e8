"""What ``python -m meta_train results`` (``make results``) trains, evaluates and sweeps, and where its files go.

Constants only (no torch), so the command line can offer them as choices without importing the pipeline. The other
pipeline modules read them as ``results_plan.NAME`` at call time, so a test can point the folders elsewhere.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "meta_train" / "configs"
RESULTS = ROOT / "results"
CHECKPOINTS = RESULTS / "checkpoints"
PRETRAINED = ROOT / "l2o" / "pretrained"  # the package data: default.pt and its card ship in the wheel

# name -> (config file, meta-training seed). Every config extends fmnist.toml: one shared budget.
# Trained in this order (one of each family first, then the extra NG-GNN seeds).
SHIPPED = {
    "ng-gnn": ("ng-gnn.toml", 0),
    "dng": ("dng.toml", 0),
    "ff": ("ff.toml", 0),
    "lstm": ("lstm.toml", 0),
    "nfn": ("nfn.toml", 0),
    "ng-t": ("ng-t.toml", 0),
    "ng-gnn-seed1": ("ng-gnn.toml", 1),
    "ng-gnn-seed2": ("ng-gnn.toml", 2),
}
# Shipped checkpoints that the package data carries beside default.pt (NeuralGraphOptimizer(model, checkpoint=NAME)):
# DNG, the default until the reference-recipe NG-GNN was pinned, whose step is much cheaper on large dense layers;
# that NG-GNN (absolute steps), the default until its per-category relative form was pinned; that form
# (relative-category-capped), the default until its rates were made to adapt online.
PACKAGED = ("dng", "ng-gnn-32x2-from-ff-h1000-window-continued-lr3e-4-seed1", "relative-category-capped")
# One shipped optimizer per family (meta-training seed 0): what the sweep compares across families.
FAMILY_REPRESENTATIVES = tuple(name for name, (_, seed) in SHIPPED.items() if seed == 0)
TASKS = ("fmnist-conv", "cifar10-conv")
SWEEP = tuple(f"cifar10-conv-w{w}" for w in (16, 32, 64, 128)) + tuple(f"cifar10-conv-d{d}" for d in range(1, 6))
# The order the sweep stage runs them in: cheapest first (measured per-step cost on one CPU core), so an interrupted
# sweep has the most points.
SWEEP_RUN_ORDER = ("cifar10-conv-w16", "cifar10-conv-d1", "cifar10-conv-d2", "cifar10-conv-d4", "cifar10-conv-d5",
                   "cifar10-conv-w64", "cifar10-conv-w128")
# Sweep points that are the CIFAR-10 task itself (same layout): read from the main evaluation instead of rerun.
SWEEP_ALIASES = {"cifar10-conv-w32": "cifar10-conv", "cifar10-conv-d3": "cifar10-conv"}
STAGES = ("train", "ship", "eval", "sweep", "report")
