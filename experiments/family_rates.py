"""The effective rate of every shipped optimizer, task by task.

Asks whether each shipped optimizer's single effective relative rate explains its advantage or loss against tuned
Adam at depths 1 and 5 of the sweep. Runs the measurement of :mod:`experiments.dng_discount` (300 steps on seven
tasks, the step divided by relative Adam's at rate 1, per layer category) on the six shipped checkpoints and writes
``results/experiments/family-rates/rates.json``:

    python -m experiments.family_rates                      # about 15 min on a core
    python -m experiments.family_rates CHECKPOINT ... [--out PATH.json] [--device cuda]

``--device`` (default cpu) is where the runs go, as in :mod:`experiments.dng_discount`.
"""
from __future__ import annotations

from experiments import RESULTS
from experiments.dng_discount import main as rates_main

OUT = RESULTS / "experiments" / "family-rates" / "rates.json"
# the shipped optimizers, in the order of the study's rows (paths relative to the repository root)
CHECKPOINTS = [f"results/checkpoints/{name}.pt" for name in ("default", "ng-gnn", "ng-t", "nfn", "ff", "lstm")]


def main(argv: list[str] | None = None) -> None:
    rates_main(argv, prog="python -m experiments.family_rates", out=OUT, checkpoints=CHECKPOINTS,
               description=__doc__.split("\n")[0])


if __name__ == "__main__":
    main()
