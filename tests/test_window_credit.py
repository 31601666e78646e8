"""The ``window`` estimator: its meta-gradient is the first-order gradient of the next W losses after every step.

Checked against a direct computation from a recorded trajectory, against ``greedy`` (W = 1 is the one-step
meta-gradient), and for exact resume from the pool's and the estimator's checkpoints mid-window.
"""
from __future__ import annotations

import copy

import pytest
import torch

from l2o.optim import OptimizerConfig, build_optimizer
from meta_train.config import MetaConfig
from meta_train.estimators import build_estimator
from meta_train.unroll import TaskPool
from tasks.regression import RegressionFamily


def _learned():
    torch.manual_seed(0)
    opt = build_optimizer(OptimizerConfig(family="ff", adam_residual=True, adam_lr=3e-2, adam_scale=1.0))
    with torch.no_grad():  # the zero-initialised output layer would hide every path but the last one
        opt.head.out.weight.normal_(0, 0.3)
    return opt


def _pool(learned, n=1, horizon=12, seed=3):
    return TaskPool(RegressionFamily((4,)).sample, learned, list(range(n)), horizon, 0, seed=seed)


def _grads(learned):
    return {k: p.grad.clone() for k, p in learned.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window,discount", [(1, 1.0), (4, 1.0), (100, 1.0), (5, 0.7), (100, 0.9)])
def test_window_gradient_matches_recorded_trajectory(window, discount):
    H = 12
    learned = _learned()
    pool = _pool(learned, horizon=H)
    t = pool.tasks[0]
    p0, s0 = t.params.clone(), {k: v.clone() for k, v in t.state.items()}
    # Direct computation: record the trajectory, then sum_j c_j . d u_j / d theta with c_j from the recorded h_k.
    p, s, steps = p0, s0, []
    for j in range(H):
        _, g = t.loss_and_grad(p, j)
        with torch.no_grad():
            p_next, s_next = learned.update(t.ctx, p, g, s)
        L, h = t.loss_and_grad(p_next, j + 1)
        steps.append((p, g, s, h / float(L)))
        p, s = p_next, s_next
    total = 0.0
    for j, (pj, gj, sj, _) in enumerate(steps):
        credit = sum(discount ** (k - j) * steps[k][3] for k in range(j, min(H, j + window)))
        total = total + (credit * learned.update(t.ctx, pj, gj, sj)[0]).sum()
    learned.zero_grad()
    (total / (H * sum(discount ** i for i in range(window)))).backward()
    expected = _grads(learned)

    learned.zero_grad()
    est = build_estimator(MetaConfig(estimator="window", window=window, truncation=H, horizon=H, log_loss=True,
                                     discount=discount), learned)
    estimate = est.step(pool)
    assert estimate.stats["credited"] == H and estimate.stats["blowups"] == 0
    assert all(p.grad is None for p in learned.parameters())  # returned, not written to .grad
    got = estimate.grads
    assert set(got) == set(expected) and any(v.abs().sum() > 0 for v in got.values())
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-8)
    assert pool.tasks[0] is not t  # the horizon was reached: the task was reset


def test_window_of_one_is_the_greedy_meta_gradient():
    results = []
    for name, extra in (("greedy", {}), ("window", {"window": 1})):
        learned = _learned()
        est = build_estimator(MetaConfig(estimator=name, truncation=5, horizon=20, log_loss=True, **extra), learned)
        results.append(est.step(_pool(learned, n=2, horizon=20)).grads)
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("discount", [1.0, 0.8])
def test_pool_checkpoint_mid_window_resumes_exactly(discount):
    cfg = MetaConfig(estimator="window", window=6, truncation=2, horizon=9, log_loss=True, discount=discount)
    learned = _learned()
    pool = _pool(learned, n=2, horizon=9)
    est = build_estimator(cfg, learned)
    for _ in range(3):
        est.step(pool)
    assert any(buf.entries for buf in est.state.buffers.values())  # a checkpoint in the middle of open windows
    sd, est_sd = copy.deepcopy(pool.state_dict()), copy.deepcopy(est.state_dict())
    twin_learned = copy.deepcopy(learned)
    twin = _pool(twin_learned, n=2, horizon=9)
    twin.load_state_dict(sd)
    twin_est = build_estimator(cfg, twin_learned)
    twin_est.load_state_dict(est_sd)
    sums = []
    for p, q in ((pool, est), (twin, twin_est)):
        total: dict = {}
        for _ in range(4):
            for k, g in q.step(p).grads.items():
                total[k] = total[k] + g if k in total else g
        sums.append(total)
    a, b = sums
    assert a and set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    for ta, tb in zip(pool.tasks, twin.tasks):
        assert torch.equal(ta.params, tb.params) and ta.step == tb.step


def test_window_config_errors():
    with pytest.raises(ValueError, match="window"):
        MetaConfig(estimator="window", window=0)
    with pytest.raises(ValueError, match="window"):
        MetaConfig(estimator="window", meta_loss="same")
    with pytest.raises(ValueError, match="discount"):
        MetaConfig(estimator="window", discount=0.0)
    with pytest.raises(ValueError, match="discount"):
        MetaConfig(estimator="tbptt", discount=0.9)
    with pytest.raises(ValueError, match="discount >= 0.5"):  # 0.3^-1000 overflows float64
        MetaConfig(estimator="window", discount=0.3, horizon=100, horizon_max=1000)
