"""``max_update``: each element's learned step bounded by a multiple of its tensor's RMS, a no-op on usual steps."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2o.optim import OptimizerConfig, build_optimizer, load_checkpoint, save_checkpoint
from l2o.optim.learned import bound_update
from meta_train.config import ConfigError, load_config
from meta_train.inner_train import context_for, loss_and_grad
from model_zoo import mlp


def _setup(max_update: float, family: str = "ng-gnn", lam: float = 0.01):
    model = mlp(0)
    torch.manual_seed(1)
    cfg = OptimizerConfig(family=family, hidden=8, depth=1, head_hidden=8, inputs="adam", step_rule="mlp",
                          lam=lam, max_update=max_update)
    opt = build_optimizer(cfg)
    ctx = context_for(model, opt)
    named = dict(model.named_parameters())
    params = ctx.flatten([named[n].detach() for n in ctx.names])
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    _, grad = loss_and_grad(model, ctx, F.cross_entropy, params, x, y)
    return cfg, opt, ctx, params, grad


def _steps(max_update, **kw):
    cfg, opt, ctx, params, grad = _setup(max_update, **kw)
    new, _ = opt.update(ctx, params, grad, opt.init_state(ctx, params))
    return ctx, params, new - params


def test_a_loose_bound_leaves_the_update_bit_for_bit():
    _, _, free = _steps(0.0)
    _, _, bounded = _steps(1e6)
    assert torch.equal(free, bounded)


@pytest.mark.parametrize("family", ["ng-gnn", "ff"])
def test_a_tight_bound_clamps_each_element_to_its_tensors_rms(family):
    ctx, params, free = _steps(0.0, family=family, lam=1.0)  # lam 1: steps of order 1, far above the weights' RMS
    ratio = 0.05
    ctx, params, bounded = _steps(ratio, family=family, lam=1.0)
    for p, d_free, d in zip(ctx.split(params), ctx.split(free), ctx.split(bounded)):
        bound = ratio * p.pow(2).mean().sqrt()
        assert d.abs().max() <= bound * (1 + 1e-6)
        inside = d_free.abs() <= bound
        assert torch.equal(d[inside], d_free[inside])  # elements within the bound keep their step
        assert torch.allclose(d[~inside], d_free[~inside].sign() * bound)
    assert (free.abs() > bounded.abs()).any()  # the bound did clamp something here


def test_the_bound_is_differentiable_where_it_does_not_clamp():
    cfg, opt, ctx, params, grad = _setup(1e6)
    new, _ = opt.update(ctx, params, grad, opt.init_state(ctx, params))
    new.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in opt.parameters())


def test_bound_update_shapes_and_values():
    from l2o.optim import ParamContext
    ctx = ParamContext.build(None, ["a", "b"], [torch.Size([2]), torch.Size([2])])
    params = torch.tensor([3.0, 4.0, 0.0, 1.0])  # RMS 3.536 and 0.707
    step = torch.tensor([10.0, -0.1, -10.0, 0.2])
    out = bound_update(ctx, params, step, 1.0)
    torch.testing.assert_close(out, torch.tensor([12.5 ** 0.5, -0.1, -0.5 ** 0.5, 0.2]))


def test_max_update_round_trips_through_a_checkpoint(tmp_path):
    cfg, opt, *_ = _setup(2.5)
    path = save_checkpoint(tmp_path / "o.pt", opt, cfg, {})
    loaded, cfg2, _ = load_checkpoint(path)
    assert cfg2.max_update == 2.5 and loaded.max_update == 2.5


def test_negative_max_update_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_update must be >= 0"):
        build_optimizer(OptimizerConfig(family="ff", max_update=-1.0))
    toml = tmp_path / "c.toml"
    toml.write_text('[optimizer]\nfamily = "ff"\nmax_update = -1.0\n')
    with pytest.raises(ConfigError, match="max_update"):
        load_config(toml)


def test_the_bound_gives_the_same_steps_in_the_vectorised_task_pool():
    """The pool applies one update to K tasks' parameters laid end to end: the bound stays per task and tensor."""
    from meta_train.unroll import TaskPool
    from tasks.regression import RegressionFamily

    torch.manual_seed(0)
    learned = build_optimizer(OptimizerConfig(family="ff", step_rule="mlp", lam=1.0, max_update=0.05))
    fast, slow = (TaskPool(RegressionFamily((4,)).sample, learned, [0, 1, 2], 4, 0, seed=0, vectorize=v)
                  for v in (True, False))
    clamped = False
    for _ in range(3):
        a, b = fast.advance(learned.update, meta_loss="train"), slow.advance(learned.update, meta_loss="train")
        for ctx, p, new, q in zip(a.contexts, a.params, a.new_params, b.new_params):
            torch.testing.assert_close(new, q, rtol=1e-4, atol=1e-5)
            for pt, dt in zip(ctx.split(p), ctx.split(new - p)):
                bound = 0.05 * pt.pow(2).mean().sqrt()
                assert dt.abs().max() <= bound * (1 + 1e-5)
                clamped |= bool(torch.isclose(dt.abs().max(), bound))
        fast.detach(), slow.detach()
    assert clamped
