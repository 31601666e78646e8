"""The package as users install it: the wheel carries the default weights; save_pretrained / from_pretrained."""
from __future__ import annotations

import copy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from l2o import NeuralGraphOptimizer
from l2o.optim import (DEFAULT_CHECKPOINT, CheckpointError, OptimizerConfig, build_optimizer, from_pretrained,
                       save_pretrained)
from l2o.optim import neural_graph_optimizer as ngo_module
from model_zoo import mlp

ROOT = Path(__file__).resolve().parent.parent


def test_default_weights_are_package_data():
    assert DEFAULT_CHECKPOINT.is_file()
    assert DEFAULT_CHECKPOINT.parent == Path(__import__("l2o").__file__).parent / "pretrained"


def test_the_wheel_holds_the_default_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "l2o/pretrained/default.pt" in names and "l2o/pretrained/dng.pt" in names and "meta_train/configs/reference.toml" in names


def test_pretrained_dir_can_be_overridden(monkeypatch, tmp_path):
    monkeypatch.setenv(ngo_module.PRETRAINED_ENV, str(tmp_path))
    assert ngo_module.pretrained_dir() == tmp_path


def test_missing_default_says_the_install_is_incomplete(monkeypatch, tmp_path):
    monkeypatch.setattr(ngo_module, "DEFAULT_CHECKPOINT", tmp_path / "default.pt")
    # the install is incomplete, and the message says how to get the shipped weights back
    with pytest.raises(FileNotFoundError, match="install of l2o is incomplete.*Reinstall"):
        NeuralGraphOptimizer(mlp(0))


def test_save_pretrained_round_trip_gives_the_same_updates(tmp_path):
    torch.manual_seed(0)
    cfg = OptimizerConfig(family="ng-gnn", hidden=8, depth=1, head_hidden=8)
    learned = build_optimizer(cfg)
    folder = save_pretrained(tmp_path / "opt", learned, cfg, summary={"best_val_score": 0.5}, card="# card\n")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "README.md").read_text() == "# card\n"
    loaded, cfg2, summary = from_pretrained(folder)
    assert cfg2 == cfg and summary == {"best_val_score": 0.5}
    models = [mlp(0), mlp(0)]
    opts = [NeuralGraphOptimizer(models[0], optimizer=copy.deepcopy(learned)),
            NeuralGraphOptimizer(models[1], checkpoint=folder)]
    for m, o in zip(models, opts):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
        F.cross_entropy(m(x), y).backward()
        o.step()
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        NeuralGraphOptimizer(mlp(0), checkpoint=tmp_path)


def test_a_shipped_checkpoint_is_chosen_by_name_and_an_unknown_name_lists_them():
    from l2o.optim import read_checkpoint, shipped_checkpoint

    opt = NeuralGraphOptimizer(mlp(0), checkpoint="dng")  # the earlier default, carried by the wheel too
    assert opt.learned.family == read_checkpoint(shipped_checkpoint("dng"))["family"] == "dng"
    with pytest.raises(FileNotFoundError, match="shipped: default, dng"):
        NeuralGraphOptimizer(mlp(0), checkpoint="no-such-optimizer")
    with pytest.raises(Exception, match="does not exist"):  # a path is a path, never looked up by name
        NeuralGraphOptimizer(mlp(0), checkpoint="missing/dng.pt")
