"""``experiments.step_scale``: a rule's steps times a constant, and nothing else changed."""
from __future__ import annotations

import pytest
import torch

from l2o.optim import OptimizerConfig, ParamContext, build_optimizer
from l2o.optim.checkpoint import load_checkpoint, save_checkpoint
from experiments.step_scale import scaled_checkpoint


def _update(opt, params, grads):
    ctx = ParamContext.build(None, ["a", "b"], [torch.Size([30]), torch.Size([20])])
    with torch.no_grad():
        return opt.update(ctx, params, grads, opt.init_state(ctx, params))[0] - params


@pytest.mark.parametrize("relative", [False, True])
def test_scaled_rule_takes_factor_times_the_step(tmp_path, relative):
    cfg = OptimizerConfig(family="ff", step_rule="mlp", head_hidden=8, relative=relative, category_rates=relative)
    torch.manual_seed(0)
    opt = build_optimizer(cfg)
    src = save_checkpoint(tmp_path / "rule.pt", opt, cfg)
    scaled, scaled_cfg, payload = load_checkpoint(scaled_checkpoint(src, tmp_path / "x1.7.pt", 1.7))
    assert scaled_cfg == cfg and "x 1.7" in payload["summary"]["step_scale_note"]
    params, grads = torch.randn(50), torch.randn(50)
    torch.testing.assert_close(_update(scaled, params, grads), 1.7 * _update(opt, params, grads),
                               rtol=1e-4, atol=1e-6)  # d near 0: rounding of its sum


def test_scaling_refuses_other_rules_and_bad_factors(tmp_path):
    cfg = OptimizerConfig(family="ff", step_rule="modulated")
    src = save_checkpoint(tmp_path / "mod.pt", build_optimizer(cfg), cfg)
    with pytest.raises(SystemExit, match="implemented for the 'mlp' rule"):
        scaled_checkpoint(src, tmp_path / "out.pt", 2.0)
    with pytest.raises(ValueError, match="factor must be > 0"):
        scaled_checkpoint(src, tmp_path / "out.pt", 0.0)
