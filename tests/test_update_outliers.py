"""``experiments.update_outliers``: its replay is the evaluation's run, with per-tensor update records."""
from __future__ import annotations

import torch

from conftest import needs_data
from l2o.optim import OptimizerConfig, build_optimizer
from experiments.update_outliers import replay
from meta_train.inner_train import train_optimizee


@needs_data
def test_replay_follows_the_evaluation_and_records_every_tensor():
    from tasks import get_task

    task = get_task("fmnist-conv")
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family="ng-gnn", hidden=8, depth=1, head_hidden=8, kmax=3,
                                          step_rule="mlp", lam=0.1))
    rec = replay(opt, task, steps=6, seed=3, spike=1.0, top=4)
    ref = train_optimizee(opt, task, 6, seed=3, eval_split=None)
    assert rec["losses"] == ref["losses"]  # the same run, bit for bit
    n = len(rec["tensors"])
    for key in ("rel_rms", "rel_max", "param_rms"):
        assert len(rec[key]) == 6 and all(len(row) == n for row in rec[key])
    assert all(m >= r > 0 for rm, rr in zip(rec["rel_max"], rec["rel_rms"]) for m, r in zip(rm, rr))
    assert not rec["spikes"]  # spike=1.0 flags any rise, but only once 50 losses give a median
