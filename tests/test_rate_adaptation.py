"""``rate_adapt``: each tensor's learned step times a rate adapted online by hypergradient descent."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from l2o.optim import NeuralGraphOptimizer, OptimizerConfig, build_optimizer, load_checkpoint, save_checkpoint
from l2o.optim.rate_adaptation import DEFAULT_MAX_RATIO, adapt_rates, init_rate_state, tensor_cosine
from meta_train.inner_train import context_for, loss_and_grad
from model_zoo import mlp


def _setup(rate_adapt: float, family: str = "ng-gnn"):
    model = mlp(0)
    torch.manual_seed(1)
    cfg = OptimizerConfig(family=family, hidden=8, depth=1, head_hidden=8, inputs="adam", step_rule="mlp",
                          rate_adapt=rate_adapt)
    opt = build_optimizer(cfg)
    ctx = context_for(model, opt)
    named = dict(model.named_parameters())
    params = ctx.flatten([named[n].detach() for n in ctx.names])
    return cfg, opt, ctx, model, params


def _grad(model, ctx, params, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    return loss_and_grad(model, ctx, F.cross_entropy, params, x, y)[1]


def test_tensor_cosine_is_the_cosine_within_each_tensor():
    _, _, ctx, _, params = _setup(0.01)
    a, b = torch.randn_like(params), torch.randn_like(params)
    want = torch.stack([F.cosine_similarity(x.reshape(-1), y.reshape(-1), dim=0)
                        for x, y in zip(ctx.split(a), ctx.split(b))])
    torch.testing.assert_close(tensor_cosine(ctx, a, b), want)
    assert torch.equal(tensor_cosine(ctx, a, torch.zeros_like(b)), torch.zeros(ctx.num_tensors))


def test_a_gradient_against_the_last_step_raises_the_rate_and_one_along_it_lowers_it():
    _, _, ctx, _, params = _setup(0.01)
    state = init_rate_state(params.numel(), params.dtype, params.device)
    state["last_update"] = torch.randn_like(params)
    up = adapt_rates(ctx, -state["last_update"], state, 0.1)  # the loss still falls along the last step: too short
    down = adapt_rates(ctx, 2 * state["last_update"], state, 0.1)  # it rises along it: the step overshot
    torch.testing.assert_close(up, torch.full_like(params, 0.1))
    torch.testing.assert_close(down, torch.full_like(params, -0.1))
    state["log_rate"] = torch.full_like(params, math.log(DEFAULT_MAX_RATIO))
    assert torch.equal(adapt_rates(ctx, -state["last_update"], state, 0.1), state["log_rate"])  # within 10x
    with pytest.raises(ValueError, match="beta > 0"):
        adapt_rates(ctx, params, state, 0.0)
    with pytest.raises(ValueError, match="0 < min_ratio <= 1 < max_ratio"):
        adapt_rates(ctx, params, state, 0.1, max_ratio=1.0)
    state["log_rate"] = torch.zeros_like(params)  # upward only: the rule's own step is the floor
    assert torch.equal(adapt_rates(ctx, 2 * state["last_update"], state, 0.1, min_ratio=1.0), state["log_rate"])
    torch.testing.assert_close(adapt_rates(ctx, -state["last_update"], state, 0.1, min_ratio=1.0),
                               torch.full_like(params, 0.1))


def test_the_first_step_is_the_rules_own_and_later_steps_carry_each_tensors_rate():
    _, fixed, ctx, model, params = _setup(0.0)
    _, adaptive, _, _, _ = _setup(0.05)
    assert adaptive.state_floats_per_param == fixed.state_floats_per_param + 2
    s_fixed, s_adapt = fixed.init_state(ctx, params), adaptive.init_state(ctx, params)
    p_fixed, p_adapt = params, params
    for i in range(3):
        g = _grad(model, ctx, p_adapt, i)
        new_fixed, s_fixed = fixed.update(ctx, p_adapt, g, s_fixed)  # the fixed rule from the same point
        new_adapt, s_adapt = adaptive.update(ctx, p_adapt, g, s_adapt)
        rate = torch.exp(s_adapt["log_rate"])
        if i == 0:  # no last update yet: no signal, rate 1
            assert torch.equal(rate, torch.ones_like(rate))
        for r in ctx.split(rate):  # one rate per tensor
            assert torch.equal(r, r.reshape(-1)[0].expand_as(r))
        torch.testing.assert_close(new_adapt - p_adapt, (new_fixed - p_adapt) * rate)
        torch.testing.assert_close(s_adapt["last_update"], new_adapt - p_adapt)
        p_adapt = new_adapt
    assert not torch.equal(rate, torch.ones_like(rate))  # the rates moved


def test_rate_adaptation_is_refused_below_zero_and_round_trips_through_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="rate_adapt must be >= 0"):
        _setup(-0.1)
    with pytest.raises(ValueError, match=r"rate_adapt_min must be in \(0, 1\]"):
        build_optimizer(OptimizerConfig(family="ff", step_rule="mlp", rate_adapt=0.1, rate_adapt_min=2.0))
    cfg, opt, _, _, _ = _setup(0.02, family="ff")
    save_checkpoint(tmp_path / "a.pt", opt, cfg)
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "a.pt")
    assert loaded_cfg.rate_adapt == 0.02 and loaded.rate_adapt == 0.02


def test_the_torch_optimizer_keeps_and_resumes_the_adapted_rates(tmp_path):
    cfg, opt, _, _, _ = _setup(0.05)
    save_checkpoint(tmp_path / "a.pt", opt, cfg)

    def run(model, optim, steps, start=0):
        for i in range(start, start + steps):
            g = torch.Generator().manual_seed(i)
            x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
            optim.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optim.step()

    model = mlp(0)
    full = NeuralGraphOptimizer(model, checkpoint=str(tmp_path / "a.pt"))
    run(model, full, 4)
    rates = {n: full.state[p]["log_rate"].clone() for n, p in model.named_parameters()}
    assert any(r.abs().max() > 0 for r in rates.values())
    part_model = mlp(0)
    part = NeuralGraphOptimizer(part_model, checkpoint=str(tmp_path / "a.pt"))
    run(part_model, part, 2)
    saved = part.state_dict()
    resumed = NeuralGraphOptimizer(part_model, checkpoint=str(tmp_path / "a.pt"))
    resumed.load_state_dict(saved)
    run(part_model, resumed, 2, start=2)
    for (n, p), q in zip(model.named_parameters(), part_model.parameters()):
        torch.testing.assert_close(q, p)
        torch.testing.assert_close(resumed.state[q]["log_rate"], rates[n])
