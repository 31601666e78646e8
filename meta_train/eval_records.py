"""The records of an evaluation's ``results.json`` as small typed structures.

A results file (written by :func:`meta_train.evaluate.evaluate`) is::

    {"task": str, "steps": int, "seeds": int | [int], "runs": {label: OptimizerRuns}, "tuning": {family: [trial]}}

The top level stays a plain dict (its keys are few and read in few places). Its ``runs`` values are
:class:`OptimizerRuns` in memory and plain dicts only in the file: :func:`read_results` / :func:`write_results`
convert at that boundary. ``to_json`` gives exactly the dict the evaluation has always written (same keys, same
order), so a file written now is byte for byte what the same results gave before, and older files load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SeedRun:
    """One optimizee trained by one optimizer from one seed (the seed fixes the initialisation and data order)."""

    seed: int
    losses: list[float]  # training loss at every step, before that step's update; stops at a divergence
    evals: list[tuple[int, float, float]]  # (step, accuracy, loss) on the evaluation split, the last one at the end
    acc: float  # final accuracy as a fraction (NaN when diverged)
    step_ms: float  # mean time of one optimizer update
    diverged: bool  # a non-finite training loss was seen

    def to_json(self) -> dict:
        """The dict stored in ``results.json`` (evals as lists: that is what JSON reads back)."""
        return {"seed": self.seed, "losses": list(self.losses), "evals": [list(e) for e in self.evals],
                "acc": self.acc, "step_ms": self.step_ms, "diverged": self.diverged}

    @classmethod
    def from_json(cls, d: dict) -> SeedRun:
        return cls(seed=d["seed"], losses=list(d["losses"]), evals=[tuple(e) for e in d["evals"]], acc=d["acc"],
                   step_ms=d["step_ms"], diverged=d["diverged"])


@dataclass
class OptimizerRuns:
    """One optimizer's runs on a task: where the optimizer came from and one :class:`SeedRun` per seed."""

    family: str
    checkpoint: str | None  # learned optimizers: the checkpoint file evaluated; hand-designed: None
    digest: str | None  # SHA-256 prefix of that file (tells a retrained checkpoint from the one evaluated)
    hyper: dict | None  # hand-designed: the (tuned or fixed) hyperparameters; learned: None
    runs: list[SeedRun] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"family": self.family, "checkpoint": self.checkpoint, "digest": self.digest, "hyper": self.hyper,
                "runs": [r.to_json() for r in self.runs]}

    @classmethod
    def from_json(cls, d: dict) -> OptimizerRuns:
        # Files written before checkpoint digests were recorded have no "digest"; None is what every reader took a
        # missing digest to mean (never the same file as any checkpoint), so such a file is rewritten with null.
        return cls(family=d["family"], checkpoint=d["checkpoint"], digest=d.get("digest"), hyper=d["hyper"],
                   runs=[SeedRun.from_json(r) for r in d["runs"]])


def results_from_json(d: dict) -> dict:
    """A results dict as read from JSON -> the same dict with :class:`OptimizerRuns` values in ``runs``."""
    return {**d, "runs": {label: OptimizerRuns.from_json(entry) for label, entry in d["runs"].items()}}


def results_to_json(results: dict) -> dict:
    """The inverse of :func:`results_from_json`: plain dicts, ready for ``json.dumps``."""
    return {**results, "runs": {label: entry.to_json() for label, entry in results["runs"].items()}}


def read_results(path: str | Path) -> dict:
    """``results.json`` at ``path``, its optimizers' records typed."""
    return results_from_json(json.loads(Path(path).read_text()))


def write_results(path: str | Path, results: dict) -> None:
    """Write ``results`` (typed records) to ``path`` as one line of JSON, the format evaluations always wrote."""
    Path(path).write_text(json.dumps(results_to_json(results)) + "\n")
