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
    assert "encode_projected" not in vars(opt.encoder)  # the hook is gone: the class's method again
    # the probed optimizer is unchanged: the same run as a twin that was never probed
    assert (train_optimizee(opt, task, 3, seed=1, eval_split=None)["losses"]
            == train_optimizee(untouched, task, 3, seed=1, eval_split=None)["losses"])


def test_width_probe_refuses_an_optimizer_without_ng_gnn_layers():
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family="ff", step_rule="mlp"))
    with pytest.raises(SystemExit, match="no NG-GNN layers"):
        probe_width(opt, task=None, steps=1)


def test_reference_recipe_sweeps_untrained_starts_but_refuses_to_train_or_ship_them():
    import experiments.reference_recipe as rr

    assert rr.checkpoint_of("relative-category-start") == rr.UNTRAINED["relative-category-start"]
    assert rr._spec("relative-start").startswith("relative-start=")  # its own label, not a run's
    assert rr.PARTS["relative-start"][0] == [rr._spec("relative-start")]
    for stage in ("train", "ship", "ship-default"):
        with pytest.raises(SystemExit) as exc:
            rr.main([stage, "--only", "relative-start"])
        assert exc.value.code == 2
