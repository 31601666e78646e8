"""Tiny synthetic zoos in the real zoo formats (``InrZoo`` / ``CnnZoo``), for tests and smoke runs.

* :func:`synthetic_inr_zoo`: random SIRENs; the "image" of each is its own render (so editing has a real target)
  and its label is the brightness decile of that image, so a classifier can learn something.
* :func:`synthetic_cnn_zoo`: random small CNNs of a few architectures; the "test accuracy" is a smooth function of
  the weights (a squashed mean absolute weight), so a predictor can learn something.

Nothing is trained and no data set is read; a zoo of a few dozen networks builds in well under a second.
"""
from __future__ import annotations

import torch

from .siren import Siren, make_coords, render, sample_siren_params


def synthetic_inr_zoo(n_train: int = 24, n_val: int = 8, n_test: int = 8, hidden=(8, 8), side: int = 8,
                      seed: int = 0, num_classes: int = 10):
    """An ``InrZoo`` of random SIRENs (``2 -> hidden -> 1``) with ``side x side`` images."""
    from .inr_zoo import FORMAT_VERSION, InrZoo

    n = n_train + n_val + n_test
    arch = {"in_features": 2, "hidden": list(hidden), "out_features": 1, "w0": 30.0}
    params = sample_siren_params(range(seed * 100003, seed * 100003 + n), 2, hidden, 1)
    with torch.no_grad():
        pix = (render(Siren(**arch), params, make_coords(side, side))[..., 0] + 1) * 0.5
    images = (pix.clamp(0, 1) * 255).round().to(torch.uint8).view(n, side, side)
    brightness = images.float().mean((1, 2))
    ranks = brightness.argsort().argsort()
    labels = (ranks * num_classes // n).long()
    split = torch.cat([torch.full((k,), c, dtype=torch.int8) for c, k in enumerate((n_train, n_val, n_test))])
    data = {"version": FORMAT_VERSION, "dataset": "synthetic", "arch": arch, "param_names": list(params),
            "params": params, "labels": labels, "psnr": torch.full((n,), 30.0), "split": split,
            "image_index": torch.arange(n), "images": images, "fit": {"synthetic": True}}
    return InrZoo(data)


def synthetic_cnn_zoo(n_archs: int = 3, per_arch: int = 12, seed: int = 0, in_channels: int = 1, image_size: int = 8):
    """A ``CnnZoo`` of random CNNs (``cnn_zoo_member.build_cnn`` architectures, 3x3 and 5x5 kernels)."""
    from .cnn_zoo import VERSION, CnnZoo, flatten_state
    from .cnn_zoo_member import CnnSpec, build_cnn

    gen = torch.Generator().manual_seed(seed)
    choices = [((4,), 3, "relu"), ((4, 6), 5, "tanh"), ((3, 4, 4), 3, "gelu"), ((6, 6), 3, "silu")]
    specs, params, acc, split, runs = [], [], [], [], []
    for a in range(n_archs):
        channels, k, act = choices[a % len(choices)]
        for j in range(per_arch):
            spec = CnnSpec(in_channels=in_channels, image_size=image_size, channels=channels, kernel_size=k,
                           activation=act, init_scale=float(0.3 + 2 * torch.rand(1, generator=gen)),
                           seed=int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
            model = build_cnn(spec)
            state = model.state_dict()
            flat = flatten_state(state, list(state))
            specs.append(spec.to_dict())
            params.append(flat)
            acc.append(float(torch.sigmoid(3 * (flat.abs().mean() - 0.3))))
            split.append(0 if j < per_arch // 2 else (1 if j < 3 * per_arch // 4 else 2))
            runs.append(len(runs))
    m = len(specs)
    data = {"version": VERSION, "dataset": "synthetic", "specs": specs, "params": params,
            "test_acc": torch.tensor(acc), "train_loss": torch.zeros(m), "step": torch.zeros(m, dtype=torch.int64),
            "split": torch.tensor(split, dtype=torch.int8), "run": torch.tensor(runs),
            "eval": {"test_images": 0, "kmax": 5}}
    return CnnZoo(data)
