"""The typed records of ``results.json`` (meta_train.eval_records) against the committed evaluation files: they
load, write back the same bytes, and give the same summaries as the code that wrote them."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from meta_train.eval_records import OptimizerRuns, SeedRun, read_results, results_to_json, write_results
from meta_train.evaluate import summarise

RESULTS = Path(__file__).resolve().parents[1] / "results"
FILES = sorted(RESULTS.glob("**/results.json"))
MAIN = RESULTS / "eval" / "cifar10-conv" / "results.json"
needs_results = pytest.mark.skipif(not MAIN.is_file(), reason="the committed results/ are not in this checkout")


def _id(path: Path) -> str:
    return str(path.parent.relative_to(RESULTS))


@needs_results
@pytest.mark.parametrize("path", FILES, ids=_id)
def test_committed_results_round_trip(path):
    raw = json.loads(path.read_text())
    for label, entry in raw["runs"].items():
        back = OptimizerRuns.from_json(entry).to_json()
        if "digest" in entry:
            assert back == entry, label
        else:  # written before digests were recorded: the same record, the missing digest written as null
            assert back == {**entry, "digest": None} and list(back) == ["family", "checkpoint", "digest", "hyper",
                                                                         "runs"], label
    if all("digest" in e for e in raw["runs"].values()):  # the same bytes as the evaluation wrote
        assert json.dumps(results_to_json(read_results(path))) + "\n" == path.read_text()


@needs_results
@pytest.mark.parametrize("path", [p for p in FILES if (p.parent / "summary.json").is_file()], ids=_id)
def test_summaries_of_committed_results_are_unchanged(path):
    """``summarise`` on the typed records gives the committed ``summary.json`` (written by the dict-based code)."""
    rows = json.loads(json.dumps(summarise(read_results(path))))
    committed = json.loads((path.parent / "summary.json").read_text())
    assert [r["optimizer"] for r in rows] == [r["optimizer"] for r in committed]
    for new, old in zip(rows, committed):  # older summaries lack keys added since (test_accs): compare theirs
        assert {k: new[k] for k in old} == old


@needs_results
def test_main_table_numbers_are_unchanged():
    rows = {r["optimizer"]: r for r in summarise(read_results(MAIN))}
    assert f"{rows['adam']['test_acc_mean']:.2f} +- {rows['adam']['test_acc_std']:.2f}" == "51.10 +- 1.42"
    assert f"{rows['lstm']['test_acc_mean']:.2f} +- {rows['lstm']['test_acc_std']:.2f}" == "54.94 +- 0.73"
    assert f"{rows['ng-gnn']['step_ms']:.1f}" == "56.0" and rows["ng-gnn"]["seeds"] == 5


@needs_results
def test_reference_recipe_report_merges_the_committed_parts_into_the_committed_file(tmp_path, monkeypatch):
    import experiments.reference_recipe as rr

    src = RESULTS / "experiments" / "reference-recipe" / rr.TASK
    for part in rr.PARTS:
        if (src / part / "results.json").is_file():
            (tmp_path / rr.TASK / part).mkdir(parents=True)
            shutil.copyfile(src / part / "results.json", tmp_path / rr.TASK / part / "results.json")
    monkeypatch.setattr(rr, "OUT", tmp_path)
    monkeypatch.setattr(rr, "ADAM_RESULTS", MAIN)
    merged = rr.report()
    assert (tmp_path / rr.TASK / "results.json").read_text() == (src / "results.json").read_text()
    assert (tmp_path / rr.TASK / "summary.json").read_text() == (src / "summary.json").read_text()
    assert all(isinstance(e, OptimizerRuns) for e in merged["runs"].values())


def test_records_convert_at_the_json_boundary(tmp_path):
    diverged = SeedRun(seed=1, losses=[2.3, float("nan")], evals=[], acc=float("nan"), step_ms=0.5, diverged=True)
    ok = SeedRun(seed=0, losses=[2.3, 2.1], evals=[(1, 0.3, 2.0), (2, 0.4, 1.9)], acc=0.4, step_ms=0.5,
                 diverged=False)
    entry = OptimizerRuns(family="adam", checkpoint=None, digest=None, hyper={"lr": 3e-3}, runs=[ok, diverged])
    results = {"task": "t", "steps": 2, "seeds": 2, "runs": {"adam": entry}, "tuning": {}}
    write_results(tmp_path / "results.json", results)
    raw = json.loads((tmp_path / "results.json").read_text())
    assert list(raw["runs"]["adam"]) == ["family", "checkpoint", "digest", "hyper", "runs"]
    assert list(raw["runs"]["adam"]["runs"][0]) == ["seed", "losses", "evals", "acc", "step_ms", "diverged"]
    assert raw["runs"]["adam"]["runs"][0]["evals"] == [[1, 0.3, 2.0], [2, 0.4, 1.9]]  # what JSON reads back
    back = read_results(tmp_path / "results.json")["runs"]["adam"]
    assert back.runs[0] == ok and back.runs[0].evals[0] == (1, 0.3, 2.0)
    assert back.runs[1].diverged and math.isnan(back.runs[1].acc)
    legacy = {k: v for k, v in raw["runs"]["adam"].items() if k != "digest"}  # before digests were recorded
    assert OptimizerRuns.from_json(legacy).digest is None
    with pytest.raises(KeyError, match="family"):  # a malformed record is named, not half-read
        OptimizerRuns.from_json({"runs": []})
