"""SIREN INRs and INR zoos: fitting quality, batch independence, exact symmetries, the cache file and the CLI.

Synthetic data only (a tiny fake MNIST in IDX format and a tiny fake CIFAR-10 in its binary format under tmp_path
for the zoo builds).
"""
from __future__ import annotations

import gzip
import math
import os

from pathlib import Path

import pytest
import torch

from l2o.graph import NeuralGraph
from tasks.data import clear_cache, load_dataset
from tasks.weight_space import inr_zoo as zoo_mod
from tasks.weight_space.inr_zoo import (InrZoo, InrZooError, InrZooNotFoundError, build_inr_zoo, fit_inrs, inr_seeds,
                                        load_or_build_inr_zoo, main, psnr, siren_loss_and_grad)
from tasks.weight_space.siren import (Sine, Siren, flip_signs, make_coords, permute_hidden, render,
                                      sample_siren_params)

FIT_STEPS, FIT_LR = 100, 1e-2  # the zoo defaults' regime, on synthetic images


def _synthetic_images(n: int = 6, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Smooth gradients, disks and blobs in [0, 1]: ``[n, size, size]``."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    out = []
    for i in range(n):
        a, b, c = (torch.rand(3, generator=gen) * 2 - 1).tolist()
        kind = i % 3
        if kind == 0:
            img = 0.5 + 0.5 * torch.tanh(a * xx + b * yy + c)
        elif kind == 1:
            img = torch.sigmoid(12 * (0.5 + 0.3 * a - ((xx - 0.3 * b) ** 2 + (yy - 0.3 * c) ** 2).sqrt()))
        else:
            img = torch.exp(-((xx - 0.4 * a) ** 2 + (yy - 0.4 * b) ** 2) / (0.1 + 0.05 * (c + 1)))
        out.append(img.clamp(0, 1))
    return torch.stack(out)


def _synthetic_rgb(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` in [0, 1]: each channel a different smooth synthetic image."""
    return torch.stack([_synthetic_images(n, size, seed=seed + 7 * c) for c in range(3)], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# The network


def test_siren_architecture_init_and_graph():
    model = Siren(2, (32, 32), 1, w0=30.0, generator=torch.Generator().manual_seed(0))
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Linear", "Sine", "Linear", "Sine", "Linear"]
    assert model.net[1].w0 == 30.0 and "w0=30" in repr(model)
    w0, w1, w2 = model.net[0].weight, model.net[2].weight, model.net[4].weight
    assert w0.abs().max() <= 1 / 2 and w1.abs().max() <= math.sqrt(6 / 32) / 30 and w2.abs().max() <= math.sqrt(6 / 32) / 30
    g = NeuralGraph.from_module(model, kmax=1)
    assert g.num_nodes == 2 + 32 + 32 + 1 and g.num_edges == 2 * 32 + 32 * 32 + 32 * 1
    assert [layer.activation for layer in g.layers[0]] == ["identity", "sin", "sin", "identity"]


def test_sine_and_coords():
    x = torch.randn(5)
    assert torch.allclose(Sine(3.0)(x), torch.sin(3.0 * x))
    c = make_coords(3, 4)
    assert c.shape == (12, 2) and c.min() == -1 and c.max() == 1
    assert torch.equal(c[4], torch.tensor([0.0, -1.0]))  # row-major: second row starts at index w
    assert torch.equal(c[:4, 0], torch.full((4,), -1.0)) and torch.equal(c[:4, 1], torch.linspace(-1, 1, 4))


def test_sampled_init_is_per_seed_and_render_matches_module():
    a = sample_siren_params([1, 2, 3])
    b = sample_siren_params([3])
    assert all(torch.equal(a[n][2], b[n][0]) for n in a)
    assert not torch.equal(a["net.0.weight"][0], a["net.0.weight"][1])
    template = Siren()
    coords = make_coords(7, 5)
    out = render(template, a, coords)
    assert out.shape == (3, 35, 1)
    for i in range(3):
        model = Siren()
        model.load_state_dict({n: v[i] for n, v in a.items()})
        assert torch.allclose(out[i], model(coords), atol=1e-6)


def test_render_is_differentiable():
    params = {n: v.requires_grad_() for n, v in sample_siren_params([0, 1]).items()}
    render(Siren(), params, make_coords(4, 4)).square().sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in params.values())


# ----------------------------------------------------------------------------------------------------------------
# Fitting


@pytest.mark.parametrize("outputs", [1, 3])
def test_fast_gradient_matches_vmap_autograd(outputs):
    params = sample_siren_params([5, 6, 7], out_features=outputs)
    names = list(params)
    coords = make_coords(6, 6)
    targets = torch.rand(3, 36, outputs, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, gw, gb = siren_loss_and_grad([params[n] for n in names[0::2]], [params[n] for n in names[1::2]], coords,
                                       targets, 30.0)
    template = Siren(out_features=outputs)
    leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
    ref = (render(template, leaves, coords) - targets).square().mean(dim=(1, 2))
    ref.sum().backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    vmap_loss, vmap_grads = zoo_mod._vmap_loss_and_grad(template, names, coords)(params, targets)  # the "vmap" backend
    assert torch.allclose(vmap_loss, ref, rtol=1e-5)
    for n, g in zip(names, [x for pair in zip(gw, gb) for x in pair]):
        ref_grad = leaves[n].grad
        assert g.shape == ref_grad.shape == params[n].shape, n
        assert (g - ref_grad).abs().max() <= 1e-4 * ref_grad.abs().max(), n  # float32 summation order only
        assert (vmap_grads[n] - ref_grad).abs().max() <= 1e-4 * ref_grad.abs().max(), n


def test_fit_reaches_psnr_on_synthetic_images():
    images = _synthetic_images(6)
    params, scores = fit_inrs(images, FIT_STEPS, FIT_LR, seeds=0)
    assert scores.shape == (6,) and params["net.2.weight"].shape == (6, 32, 32)
    assert scores.min() >= 30.0, scores
    # the reported PSNR is that of the clamped rendering on the [0, 1] scale
    recon = ((render(Siren(), params, make_coords(28, 28)) + 1) / 2).clamp(0, 1).reshape(6, 28, 28)
    assert torch.allclose(psnr(recon, images), scores, atol=0.05)
    # a constant prediction is far worse
    assert (psnr(torch.full_like(images, 0.5), images) < 20).all()


def test_fit_is_independent_of_batch_composition():
    images = _synthetic_images(5, size=16, seed=1)
    seeds = inr_seeds(3, range(5))
    together, s_together = fit_inrs(images, 40, FIT_LR, seeds, micro_batch=5)
    alone, s_alone = fit_inrs(images[3:4], 40, FIT_LR, seeds[3:4])
    split, _ = fit_inrs(images[[3, 0]], 40, FIT_LR, [seeds[3], seeds[0]], micro_batch=2)
    for n in together:
        assert torch.allclose(together[n][3], alone[n][0], atol=1e-4), n  # float32 rounding only
        assert torch.allclose(together[n][3], split[n][0], atol=1e-4), n
    assert torch.allclose(s_together[3], s_alone[0], atol=1e-3)
    # an int seed gives inr_seeds(seed, range(B)): distinct initialisations, not one shared init
    by_int, _ = fit_inrs(images, 0, FIT_LR, seeds=3)
    assert torch.equal(by_int["net.0.weight"], sample_siren_params(seeds)["net.0.weight"])
    assert not torch.equal(by_int["net.0.weight"][0], by_int["net.0.weight"][1])


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_vmap_backend_gives_the_same_fit(rgb):
    images = _synthetic_rgb(3, size=12, seed=2) if rgb else _synthetic_images(3, size=12, seed=2)
    fast, s_fast = fit_inrs(images, 10, FIT_LR, 0, backend="fast")
    assert fast["net.4.weight"].shape == (3, 3 if rgb else 1, 32)
    slow, s_slow = fit_inrs(images, 10, FIT_LR, 0, backend="vmap")
    for n in fast:
        assert torch.allclose(fast[n], slow[n], atol=5e-4), n  # another init would differ by O(1)
    assert torch.allclose(s_fast, s_slow, atol=0.05)


def test_rgb_fit_reduces_the_loss_and_records_psnr_over_all_channels():
    images = _synthetic_rgb(4, size=16, seed=3)
    start, s_start = fit_inrs(images, 0, FIT_LR, 0)
    params, scores = fit_inrs(images, 60, FIT_LR, 0)
    assert params["net.4.weight"].shape == (4, 3, 32) and params["net.4.bias"].shape == (4, 3)
    coords = make_coords(16, 16)
    targets = images.permute(0, 2, 3, 1).reshape(4, 256, 3) * 2 - 1
    loss_before = (render(Siren(out_features=3), start, coords) - targets).square().mean(dim=(1, 2))
    loss_after = (render(Siren(out_features=3), params, coords) - targets).square().mean(dim=(1, 2))
    assert (loss_after < 0.1 * loss_before).all(), (loss_before, loss_after)
    assert (scores > s_start + 10).all() and scores.min() > 25, scores
    # the PSNR is one mse over H x W x 3 values of the clamped rendering, on the [0, 1] scale
    recon = ((render(Siren(out_features=3), params, coords) + 1) / 2).clamp(0, 1)
    recon = recon.reshape(4, 16, 16, 3).permute(0, 3, 1, 2)
    mse = (recon - images).square().mean(dim=(1, 2, 3))
    assert torch.allclose(scores, 10 * torch.log10(1 / mse), atol=0.05)


def test_rgb_fit_on_the_device_matches_the_cpu(device):
    """``device`` (conftest): the CPU always, CUDA when present; the weights come back to the CPU either way."""
    images = _synthetic_rgb(3, size=8, seed=4)
    params, scores = fit_inrs(images, 5, FIT_LR, [1, 2, 3], hidden=(6, 6), micro_batch=2, device=device)
    ref, ref_scores = fit_inrs(images, 5, FIT_LR, [1, 2, 3], hidden=(6, 6))
    assert scores.device.type == "cpu" and params["net.4.weight"].device.type == "cpu"
    assert params["net.4.weight"].shape == (3, 3, 6) and torch.isfinite(scores).all()
    # On the CPU only the micro-batch differs (float rounding); a GPU's kernels round differently, and Adam's first
    # steps (about lr each, whatever the gradient's size) can amplify that, so there only the PSNRs are compared.
    if device.type == "cpu":
        for n in ref:
            assert torch.allclose(params[n], ref[n], atol=1e-3), n
    assert torch.allclose(scores, ref_scores, atol=0.05 if device.type == "cpu" else 0.5)


def test_fit_accepts_channels_and_uint8():
    rgb = torch.rand(2, 3, 8, 8)
    params, scores = fit_inrs(rgb, 3, FIT_LR, 0)
    assert params["net.4.weight"].shape == (2, 3, 32) and scores.shape == (2,)
    _, s8 = fit_inrs((_synthetic_images(2, 8) * 255).round().to(torch.uint8), 3, FIT_LR, 0)
    assert torch.isfinite(s8).all()
    with pytest.raises(ValueError, match="seeds"):
        fit_inrs(torch.rand(2, 8, 8), 1, FIT_LR, [1])


# ----------------------------------------------------------------------------------------------------------------
# Symmetries (augmentation)


@pytest.mark.parametrize("augment", [permute_hidden, flip_signs])
def test_symmetries_keep_the_function(augment):
    params = sample_siren_params(list(range(8)))
    coords = make_coords(9, 9)
    before = render(Siren(), params, coords)
    out = augment(params, torch.Generator().manual_seed(0))
    after = render(Siren(), out, coords)
    assert torch.allclose(before, after, atol=1e-5)
    assert all(out[n].shape == params[n].shape for n in params)
    changed = [not torch.equal(out["net.0.weight"][i], params["net.0.weight"][i]) for i in range(8)]
    assert all(changed)
    assert torch.equal(out["net.4.bias"], params["net.4.bias"])  # the output layer has no symmetry
    # independent per INR: the transformation applied to INR 0 and INR 1 differ
    ratio0 = out["net.0.bias"][0] / params["net.0.bias"][0]
    ratio1 = out["net.0.bias"][1] / params["net.0.bias"][1]
    assert not torch.allclose(ratio0, ratio1)
    # the input is untouched
    assert torch.equal(params["net.0.weight"], sample_siren_params(list(range(8)))["net.0.weight"])


def test_symmetries_compose_on_fitted_inrs():
    images = _synthetic_images(3, size=16)
    params, _ = fit_inrs(images, 30, FIT_LR, 0)
    gen = torch.Generator().manual_seed(1)
    aug = flip_signs(permute_hidden(params, gen), gen)
    coords = make_coords(16, 16)
    assert torch.allclose(render(Siren(), params, coords), render(Siren(), aug, coords), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Zoo file


def _write_idx(path, array: torch.Tensor) -> None:
    dims = list(array.shape)
    magic = 0x803 if len(dims) == 3 else 0x801
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def fake_root(tmp_path):
    """A small MNIST in IDX format: 60 train (50 train + 10 val after the carve-out) and 20 test images."""
    folder = tmp_path / "data" / "MNIST" / "raw"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for stem, n in (("train", 60), ("t10k", 20)):
        imgs = (_synthetic_images(n, 28, seed=n) * 255).round()
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", imgs)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), generator=gen))
    clear_cache()
    yield tmp_path / "data"
    clear_cache()


ZOO_KW = dict(n_train=8, n_val=4, n_test=5, steps=30, lr=FIT_LR, batch=6, strict=False, progress=False)


def _write_cifar_bin(path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """CIFAR-10 binary records ``<label><R 1024><G 1024><B 1024>`` of uint8 ``images [n, 3, 32, 32]``."""
    records = torch.cat([labels.to(torch.uint8)[:, None], images.to(torch.uint8).reshape(len(labels), -1)], dim=1)
    path.write_bytes(records.numpy().tobytes())


@pytest.fixture
def fake_cifar_root(tmp_path):
    """A small CIFAR-10 in the binary format: 5 x 6 = 30 train (27 train + 3 val after the carve-out), 8 test."""
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        n = 8 if name == "test_batch.bin" else 6
        imgs = (_synthetic_rgb(n, 32, seed=10 * k) * 255).round()
        _write_cifar_bin(folder / name, imgs, torch.randint(0, 10, (n,), generator=gen))
    clear_cache()
    yield tmp_path / "data"
    clear_cache()


CIFAR_KW = dict(n_train=4, n_val=2, n_test=3, steps=20, lr=FIT_LR, batch=4, strict=False, progress=False)


def test_gray_scale_zoo_names_are_unchanged(tmp_path):
    """Colour zoos must not move the gray-scale cache files: these names are those of zoos built before them."""
    assert zoo_mod.zoo_path("mnist", cache_dir=tmp_path).name == "inr-mnist-10000-1000-2000-s0-5e0c406e.pt"
    assert zoo_mod.zoo_path("fmnist", cache_dir=tmp_path).name == "inr-fmnist-10000-1000-2000-s0-5e0c406e.pt"
    assert zoo_mod.zoo_path("mnist", cache_dir=tmp_path, n_train=8, n_val=4, n_test=5,
                            steps=30).name == "inr-mnist-8-4-5-s0-c1d73b8a.pt"
    assert "out_features" not in zoo_mod._fit_settings(100, 1e-2, "cosine", (32, 32), 30.0)
    # a colour zoo's key includes its output count (its settings differ only there)
    rgb = zoo_mod.zoo_path("cifar10", cache_dir=tmp_path)
    assert rgb.name.startswith("inr-cifar10-10000-1000-2000-s0-") and not rgb.name.endswith("-5e0c406e.pt")
    assert zoo_mod.zoo_path("cifar-10", cache_dir=tmp_path) == rgb


def _killed_then_resumed(monkeypatch, build) -> tuple[list, Path | None]:
    """``build()`` killed while fitting its second chunk, then run again: ``(fit calls of the rerun, zoo path)``."""
    real_fit = zoo_mod.fit_inrs
    calls = []

    def failing_fit(*args, **kw):
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_fit(*args, **kw)

    def counting_fit(*args, **kw):
        calls.append(1)
        return real_fit(*args, **kw)

    monkeypatch.setattr(zoo_mod, "fit_inrs", failing_fit)
    with pytest.raises(KeyboardInterrupt):
        build()
    calls.clear()
    monkeypatch.setattr(zoo_mod, "fit_inrs", counting_fit)
    return calls, build()


def test_cifar10_zoo_build_round_trip_and_resume(fake_cifar_root, monkeypatch):
    calls, path = _killed_then_resumed(monkeypatch, lambda: build_inr_zoo("cifar10", fake_cifar_root, **CIFAR_KW))
    assert len(calls) == 2  # 9 INRs in chunks of 4: the first of three chunks was reused
    assert path.parent == fake_cifar_root / "weight_space" and path.name.startswith("inr-cifar10-4-2-3-s0-")
    assert not path.with_name(path.stem + ".partial").exists()
    raw = torch.load(path, weights_only=True)
    assert raw["arch"]["out_features"] == 3 and raw["params"]["net.4.weight"].shape == (9, 3, 32)
    assert raw["images"].dtype == torch.uint8 and raw["images"].shape == (9, 3, 32, 32)

    zoo = InrZoo.load(path)
    assert zoo.channels == 3 and zoo.image_shape == (3, 32, 32) and zoo.image_size == (32, 32)
    assert zoo.template().out_features == 3 and zoo.param_names == list(Siren(out_features=3).state_dict())
    for name, n in (("train", 4), ("val", 2), ("test", 3)):
        part, ds = zoo.split(name), load_dataset("cifar10", name, fake_cifar_root, strict=False)
        assert torch.equal(part.images, ds.images[:n]) and torch.equal(part.labels, ds.labels[:n])
    recon = zoo.render()
    assert recon.shape == (9, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1
    assert torch.allclose(psnr(recon, zoo.images.float() / 255), zoo.psnr, atol=0.05)  # over all channels
    assert zoo.psnr.mean() > 20
    # round trip keeps the colour layout
    again = InrZoo.load(zoo.split("test").save(fake_cifar_root / "copy.pt"))
    assert again.image_shape == (3, 32, 32) and again.arch == zoo.arch
    assert torch.equal(again.images, zoo.images[zoo.splits == 2])
    # images that do not match the output count are refused
    with pytest.raises(InrZooError, match="do not fit 3 output"):
        InrZoo({**zoo.to_dict(), "images": zoo.images[:, 0]})


def test_cli_builds_a_cifar10_zoo(fake_cifar_root, capsys, monkeypatch):
    monkeypatch.setattr(zoo_mod, "build_inr_zoo",
                        lambda *a, **kw: build_inr_zoo(*a, **{**kw, "strict": False, "progress": False}))
    args = ["--dataset", "cifar10", "--data-root", str(fake_cifar_root), "--n-train", "2", "--n-val", "1",
            "--n-test", "1", "--steps", "3", "--batch", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "inr-cifar10-2-1-1-s0-" in out and "'out_features': 3" in out and "mean dB" in out


def test_build_load_split_and_render(fake_root):
    path = build_inr_zoo("mnist", fake_root, **ZOO_KW)
    assert path.parent == fake_root / "weight_space" and path.name.startswith("inr-mnist-8-4-5-s0-")
    assert not path.with_name(path.stem + ".partial").exists()
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 1 and raw["params"]["net.0.weight"].shape == (17, 32, 2)
    assert raw["images"].dtype == torch.uint8 and raw["images"].shape == (17, 28, 28)
    assert raw["fit"]["steps"] == 30 and raw["fit"]["batch"] == 6

    zoo = InrZoo.load(path)
    assert len(zoo) == 17 and zoo.arch == {"in_features": 2, "hidden": [32, 32], "out_features": 1, "w0": 30.0}
    assert zoo.param_names == list(Siren().state_dict())
    for name, n in (("train", 8), ("val", 4), ("test", 5)):
        part = zoo.split(name)
        ds = load_dataset("mnist", name, fake_root, strict=False)
        assert len(part) == n and torch.equal(part.image_index, torch.arange(n))
        assert torch.equal(part.images, ds.images[:n, 0]) and torch.equal(part.labels, ds.labels[:n])
    # the stored PSNR is the rendering's PSNR against the stored image
    recon = zoo.render()
    assert recon.shape == (17, 28, 28) and 0 <= recon.min() and recon.max() <= 1
    assert torch.allclose(psnr(recon, zoo.images.float() / 255), zoo.psnr, atol=0.05)
    assert zoo.psnr.mean() > 20
    assert zoo.render(3, size=14).shape == (1, 14, 14)
    assert torch.allclose(zoo.render({n: v[[2]] for n, v in zoo.params.items()}), recon[[2]], atol=1e-5)
    sub = zoo.split("test").subset([4, 0])
    assert torch.equal(sub.image_index, torch.tensor([4, 0])) and isinstance(zoo.template(), Siren)
    assert set(zoo.summary()) == {"train", "val", "test", "all"}

    # round trip through save / load
    copy = sub.save(fake_root / "copy.pt")
    again = InrZoo.load(copy)
    assert all(torch.equal(again.params[n], sub.params[n]) for n in sub.params)
    assert torch.equal(again.splits, sub.splits) and again.fit == sub.fit

    # cached: a second call does not refit; load_or_build returns the same zoo
    assert build_inr_zoo("mnist", fake_root, **ZOO_KW) == path
    assert torch.equal(load_or_build_inr_zoo("mnist", fake_root, **ZOO_KW).psnr, zoo.psnr)


def test_build_resumes_from_chunks(fake_root, monkeypatch):
    path = zoo_mod.zoo_path("mnist", fake_root, 8, 4, 5, steps=30, lr=FIT_LR)
    partial = []

    def build():
        partial.append((path.exists(), len(list(path.with_name(path.stem + ".partial").glob("rows-*.pt")))))
        return build_inr_zoo("mnist", fake_root, **ZOO_KW)

    calls, built = _killed_then_resumed(monkeypatch, build)
    assert partial == [(False, 0), (False, 1)]  # the kill left the first chunk behind and no zoo file
    assert built == path
    assert len(calls) == 2  # 17 INRs in chunks of 6: the first of three chunks was reused
    resumed = InrZoo.load(path)
    calls.clear()
    build_inr_zoo("mnist", fake_root, **{**ZOO_KW, "batch": 17}, force=True)
    fresh = InrZoo.load(path)
    assert len(calls) == 1
    for n in fresh.params:
        assert torch.allclose(fresh.params[n], resumed.params[n], atol=1e-5)


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path, fake_root):
    missing = tmp_path / "weight_space" / "inr-mnist-10-1-2-s0-deadbeef.pt"
    with pytest.raises(InrZooNotFoundError, match="python -m tasks.weight_space.inr_zoo --dataset mnist --n-train 10"):
        InrZoo.load(missing)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a zoo at all")
    with pytest.raises(InrZooError, match="garbage.pt"):
        InrZoo.load(bad)
    good = InrZoo.load(build_inr_zoo("mnist", fake_root, **ZOO_KW)).to_dict()
    for change, message in (({"version": 2}, "version"), ({"labels": good["labels"][:3]}, "params"),
                            ({"images": good["images"].float()}, "images")):
        torch.save({**good, **change}, tmp_path / "bad.pt")
        with pytest.raises(InrZooError, match=message):
            InrZoo.load(tmp_path / "bad.pt")
    torch.save({k: v for k, v in good.items() if k != "psnr"}, tmp_path / "bad.pt")
    with pytest.raises(InrZooError, match="missing keys"):
        InrZoo.load(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="split"):
        InrZoo(good).split("validation")


def test_cli_builds_and_reports(fake_root, capsys, tmp_path, monkeypatch):
    args = ["--dataset", "mnist", "--data-root", str(fake_root), "--n-train", "3", "--n-val", "2", "--n-test", "2",
            "--steps", "5", "--batch", "4"]
    monkeypatch.setattr(zoo_mod, "build_inr_zoo",
                        lambda *a, **kw: build_inr_zoo(*a, **{**kw, "strict": False, "progress": False}))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "inr-mnist-3-2-2-s0-" in out and "train" in out and "test" in out and "mean dB" in out
    monkeypatch.delenv("L2O_DATA", raising=False)
    assert main(["--dataset", "mnist", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--dataset", "fmnist", "--data-root", str(empty)]) == 2
    assert "FashionMNIST" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dataset", "svhn"])


def test_zoo_cache_dir_follows_the_env_and_skips_a_read_only_data_root(tmp_path, monkeypatch):
    """INR and CNN zoos share one cache rule: $L2O_ZOO_DIR, else <root>/weight_space, else (a read-only shared data
    root) ~/.cache/l2o/weight_space, so `make weight-space` works on a data set it cannot write to."""
    from tasks.weight_space import cnn_zoo

    root = tmp_path / "data"
    (root / "weight_space").mkdir(parents=True)
    monkeypatch.delenv("L2O_ZOO_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo_mod.zoo_path("mnist", root).parent == root / "weight_space"
    (root / "weight_space").chmod(0o555)
    try:
        if not os.access(root / "weight_space", os.W_OK):  # (root ignores permissions)
            home = tmp_path / "home" / ".cache" / "l2o" / "weight_space"
            assert zoo_mod.zoo_path("mnist", root).parent == home
            assert cnn_zoo.zoo_path("cifar10", root).parent == home
    finally:
        (root / "weight_space").chmod(0o755)
    monkeypatch.setenv("L2O_ZOO_DIR", str(tmp_path / "zoos"))
    assert zoo_mod.zoo_path("fmnist", root).parent == tmp_path / "zoos"
    assert cnn_zoo.zoo_path("cifar10", root).parent == tmp_path / "zoos"
