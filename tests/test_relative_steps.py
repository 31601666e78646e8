"""``experiments.relative_steps``: the width probe reads the encoder without changing the run it probes."""
from __future__ import annotations

import pytest
import torch

from conftest import needs_data
from l2o.optim import OptimizerConfig, build_optimizer
from experiments.relative_steps import probe_width
from meta_train.inner_train import train_optimizee


@needs_data
def test_width_probe_records_every_layer_and_tensor_and_leaves_the_run_unchanged():
    from tasks import get_task

    task = get_task("fmnist-conv")
    cfg = OptimizerConfig(family="ng-gnn", hidden=8, depth=2, head_hidden=8, kmax=3, step_rule="mlp",
                          relative=True, encoder_options={"shared_reverse": True})
    torch.manual_seed(0)
    opt = build_optimizer(cfg)
    torch.manual_seed(0)
    untouched = build_optimizer(cfg)
    rec = probe_width(opt, task, steps=3, seed=1)
    assert len(rec["aggregates"]) == 3 and all(len(step) == 2 and len(step[0]) == 4 for step in rec["aggregates"])
    assert all(len(step) == len(rec["tensors"]) for step in rec["embedding_rms"])
    assert all(v > 0 for step in rec["aggregates"] for layer in step for v in layer)
    assert not {"encode_projected", "encode_projected_rows"} & set(vars(opt.encoder))  # the hooks are gone
    # the probed optimizer is unchanged: the same run as a twin that was never probed
    assert (train_optimizee(opt, task, 3, seed=1, eval_split=None)["losses"]
            == train_optimizee(untouched, task, 3, seed=1, eval_split=None)["losses"])


def test_width_probe_refuses_an_optimizer_without_ng_gnn_layers():
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family="ff", step_rule="mlp"))
    with pytest.raises(SystemExit, match="no NG-GNN layers"):
        probe_width(opt, task=None, steps=1)


def test_reference_recipe_sweeps_untrained_starts_but_refuses_to_train_or_ship_them_as_runs():
    import experiments.reference_recipe as rr

    assert rr.checkpoint_of("relative-category-start") == rr.UNTRAINED["relative-category-start"]
    assert rr._spec("relative-start").startswith("relative-start=")  # its own label, not a run's
    assert rr.PARTS["relative-start"][0] == [rr._spec("relative-start")]
    for stage in ("train", "ship"):
        with pytest.raises(SystemExit) as exc:
            rr.main([stage, "--only", "relative-start"])
        assert exc.value.code == 2


def _runs(accs, hyper=None, checkpoint=None):
    """One optimizer's evaluation records with these accuracies (seeds 0, 1, ...)."""
    from meta_train.eval_records import OptimizerRuns, SeedRun

    return OptimizerRuns(family="x", checkpoint=checkpoint, digest=None, hyper=hyper, runs=[
        SeedRun(seed=i, losses=[1.0], evals=[], acc=a, step_ms=1.0, diverged=False) for i, a in enumerate(accs)])


@pytest.mark.parametrize("name, acc, writes", [
    ("relative-category-start", "63.50 +- 0.71 %", ["experiments.relative_steps warm-start", "--per-category"]),
    ("capped-up0.03", "64.50 +- 0.71 %", ["experiments.rate_adaptation write", "--beta 0.03 --min-ratio 1",
                                          "relative-category-capped.pt"]),
])
def test_reference_recipe_ships_an_untrained_rule_as_the_default_with_the_command_that_wrote_it(
        tmp_path, monkeypatch, name, acc, writes):
    import experiments.reference_recipe as rr
    from meta_train.eval_records import write_results
    from meta_train.pipelines import model_cards

    (tmp_path / rr.TASK).mkdir()
    mean = float(acc.split()[0]) / 100
    write_results(tmp_path / rr.TASK / "results.json", {"runs": {
        "adam": _runs([0.5, 0.52], hyper={"lr": 3e-3}), "relative-adam": _runs([0.53, 0.55], hyper={"lr": 0.1}),
        name: _runs([mean + 0.005, mean - 0.005], checkpoint="x.pt")}})
    monkeypatch.setattr(rr, "OUT", tmp_path)
    shipped, pinned = [], []
    monkeypatch.setattr(model_cards, "ship", lambda name, source, reproduce: shipped.append((name, source, reproduce)))
    monkeypatch.setattr(model_cards, "pin_default", lambda name, reason: pinned.append((name, reason)))
    rr.main(["ship-default", "--only", name])
    (_, source, reproduce), = shipped
    assert source == rr.UNTRAINED[name] and all(w in reproduce for w in writes)
    assert pinned[0][0] == name and acc in pinned[0][1]
    with pytest.raises(SystemExit, match="no complete CIFAR-10 evaluation"):
        rr.main(["ship-default", "--only", "relative-start"])
