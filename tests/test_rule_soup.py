"""``experiments.rule_soup``: the element-wise mean of rules of one config, and refusals."""
from __future__ import annotations

import pytest
import torch

from l2o.optim import OptimizerConfig, build_optimizer
from l2o.optim.checkpoint import load_checkpoint, save_checkpoint
from experiments.rule_soup import average_rules

CFG = OptimizerConfig(family="ff", step_rule="mlp", head_hidden=8)


def _saved(tmp_path, seed, cfg=CFG):
    torch.manual_seed(seed)
    return save_checkpoint(tmp_path / f"rule{seed}-{cfg.head_hidden}.pt", build_optimizer(cfg), cfg)


def test_soup_is_the_mean_of_its_parts(tmp_path):
    parts = [_saved(tmp_path, s) for s in (0, 1, 2)]
    soup, cfg, payload = load_checkpoint(average_rules(parts, tmp_path / "soup.pt"))
    assert cfg == CFG and payload["summary"]["soup_of"] == [str(p) for p in parts]
    states = [load_checkpoint(p)[0].state_dict() for p in parts]
    for name, value in soup.state_dict().items():
        torch.testing.assert_close(value, (states[0][name] + states[1][name] + states[2][name]) / 3)


def test_soup_refuses_one_rule_and_mixed_configs(tmp_path):
    with pytest.raises(ValueError, match="at least two rules"):
        average_rules([_saved(tmp_path, 0)], tmp_path / "soup.pt")
    other = OptimizerConfig(family="ff", step_rule="mlp", head_hidden=16)
    with pytest.raises(SystemExit, match="config differs"):
        average_rules([_saved(tmp_path, 0), _saved(tmp_path, 1, other)], tmp_path / "soup.pt")
