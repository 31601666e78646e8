"""Write ``untrained.pt``: the shared budget's optimizer before meta-training (FF family, zero-initialised head), which
is exactly relative Adam at rate 0.05 (``meta_train/configs/fmnist.toml``). Evaluated beside the shipped optimizers
to separate what meta-training learned from what the relative parametrization gives by itself:

    python results/diagnostics/make_untrained.py
    python -m meta_train evaluate --task cifar10-conv --optimizers untrained=results/diagnostics/untrained.pt \\
        --out results/eval/cifar10-conv-untrained --resume
"""
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from l2o.optim import build_optimizer, save_checkpoint  # noqa: E402
from meta_train.config import load_config  # noqa: E402

cfg = replace(load_config(ROOT / "meta_train" / "configs" / "fmnist.toml", []).optimizer, family="ff")
torch.manual_seed(0)
out = save_checkpoint(Path(__file__).with_name("untrained.pt"), build_optimizer(cfg), cfg,
                      {"note": "untrained: relative Adam at the shared budget's initial rate"})
print(out)
