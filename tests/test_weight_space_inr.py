"""SIREN INRs and INR zoos: fitting quality, batch independence, exact symmetries, the cache file and the CLI.

Synthetic data only (a tiny fake MNIST in IDX format under tmp_path for the zoo build).
"""
from __future__ import annotations

import gzip
import math

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


def test_fast_gradient_matches_vmap_autograd():
    params = sample_siren_params([5, 6, 7])
    names = list(params)
    coords = make_coords(6, 6)
    targets = torch.rand(3, 36, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, gw, gb = siren_loss_and_grad([params[n] for n in names[0::2]], [params[n] for n in names[1::2]], coords,
                                       targets, 30.0)
    leaves = {n: v.clone().requires_grad_() for n, v in params.items()}
    ref = (render(Siren(), leaves, coords) - targets).square().mean(dim=(1, 2))
    ref.sum().backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    for n, g in zip(names, [x for pair in zip(gw, gb) for x in pair]):
        ref_grad = leaves[n].grad
        assert (g - ref_grad).abs().max() <= 1e-4 * ref_grad.abs().max(), n  # float32 summation order only


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


def test_vmap_backend_gives_the_same_fit():
    images = _synthetic_images(3, size=12, seed=2)
    fast, s_fast = fit_inrs(images, 10, FIT_LR, 0, backend="fast")
    slow, s_slow = fit_inrs(images, 10, FIT_LR, 0, backend="vmap")
    for n in fast:
        assert torch.allclose(fast[n], slow[n], atol=5e-4), n  # another init would differ by O(1)
    assert torch.allclose(s_fast, s_slow, atol=0.05)


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
    real_fit = zoo_mod.fit_inrs
    calls = []

    def failing_fit(*args, **kw):
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_fit(*args, **kw)

    monkeypatch.setattr(zoo_mod, "fit_inrs", failing_fit)
    with pytest.raises(KeyboardInterrupt):
        build_inr_zoo("mnist", fake_root, **ZOO_KW)
    path = zoo_mod.zoo_path("mnist", fake_root, 8, 4, 5, steps=30, lr=FIT_LR)
    assert not path.exists() and len(list(path.with_name(path.stem + ".partial").glob("rows-*.pt"))) == 1

    def counting_fit(*args, **kw):
        calls.append(1)
        return real_fit(*args, **kw)

    calls.clear()
    monkeypatch.setattr(zoo_mod, "fit_inrs", counting_fit)
    assert build_inr_zoo("mnist", fake_root, **ZOO_KW) == path
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
