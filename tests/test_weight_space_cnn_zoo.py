"""CNN zoo (tasks.weight_space.cnn_zoo): batched training, storage, re-evaluation, splits, load errors.

Synthetic data only: in-memory tensors, or a tiny Fashion-MNIST-format data root written to a temp folder.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from l2o.graph import NeuralGraph
from tasks.data import ImageDataset, clear_cache
from tasks.weight_space.cnn_zoo import (CnnZoo, CorruptZooError, ZooNotFoundError, _build_group, build_cnn_zoo,
                                        evaluate_network, main, param_names, train_group, unflatten_state)
from tasks.weight_space.cnn_zoo_member import ACTIVATIONS, KMAX, CnnSpec, build_cnn, sample_architecture

N_TRAIN, N_TEST = 48, 24


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _learnable(n: int, rng: np.random.Generator, shape=(28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Images whose brightness encodes the label, plus noise, so that training actually changes accuracy."""
    labels = rng.integers(0, 10, size=n)
    images = np.clip(labels.reshape(-1, *([1] * len(shape))) * 25 + rng.integers(0, 40, size=(n, *shape)), 0, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture
def fake_root(tmp_path):
    """A tiny Fashion-MNIST in the official IDX format (not the official sizes: load with strict=False)."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images, labels = _learnable(n, rng)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 0x803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 0x801)
    clear_cache()
    yield tmp_path / "data"
    clear_cache()


def _cifar_like(n: int = 40) -> ImageDataset:
    rng = np.random.default_rng(1)
    images, labels = _learnable(n, rng, shape=(3, 16, 16))
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
                        (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def test_spec_dict_round_trip_and_validation():
    spec = CnnSpec(in_channels=3, image_size=32, channels=(4, 8, 16), kernel_size=5, activation="gelu",
                   init_scale=0.5, lr=3e-3, steps=100, batch_size=32, seed=7)
    d = spec.to_dict()
    assert d["channels"] == [4, 8, 16]
    assert CnnSpec.from_dict(d) == spec
    assert spec.architecture().arch_key() == spec.arch_key() and spec.architecture().seed == 0
    with pytest.raises(ValueError, match="unknown"):
        CnnSpec.from_dict({**d, "colour": 1})
    assert sum(p.numel() for p in build_cnn(spec).parameters()) == spec.num_params()
    for bad in (dict(channels=()), dict(channels=(4, 4, 4, 4)), dict(kernel_size=7), dict(kernel_size=4),
                dict(activation="swish"), dict(lr=0.0)):
        with pytest.raises(ValueError):
            CnnSpec(**bad)


def test_build_cnn_is_seeded_scaled_and_leaves_global_rng_alone():
    spec = CnnSpec(channels=(4, 8), seed=3)
    state = torch.random.get_rng_state()
    a, b = build_cnn(spec), build_cnn(spec)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    scaled = build_cnn(replace(spec, init_scale=2.0))
    for pa, ps in zip(a.parameters(), scaled.parameters()):
        assert torch.allclose(ps, 2.0 * pa)
    assert build_cnn(spec)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_heterogeneous_specs_all_build_neural_graphs():
    rng = np.random.default_rng(0)
    specs = [sample_architecture(rng, 1, 28) for _ in range(12)] + [sample_architecture(rng, 3, 32) for _ in range(12)]
    specs += [CnnSpec(in_channels=3, image_size=32, channels=ch, kernel_size=k, activation=act)
              for ch, k, act in zip(((4,), (6, 12), (4, 8, 16), (16, 16, 16), (8,)), (3, 5, 3, 5, 5), ACTIVATIONS)]
    for spec in specs:
        model = build_cnn(spec)
        graph = NeuralGraph.from_module(model, kmax=KMAX)
        assert graph.param_names == param_names(spec) == list(model.state_dict())
        assert graph.num_param_elements == spec.num_params()
        assert not graph.unmapped_params
        assert model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size)).shape == (2, 10)


@pytest.mark.parametrize("shared_data", [True, False])
def test_group_training_matches_training_each_network_alone(shared_data):
    data = _cifar_like()
    arch = CnnSpec(in_channels=3, image_size=16, channels=(4, 6), kernel_size=3, activation="tanh", batch_size=8,
                   data_seed=11)
    specs = [replace(arch, seed=s, lr=lr, init_scale=sc, data_seed=11 if shared_data else 20 + s)
             for s, lr, sc in ((1, 1e-2, 1.0), (2, 3e-3, 0.5), (3, 3e-2, 2.0))]
    group = train_group(specs, data, snapshots=[0, 3, 7])
    assert group["params"].shape == (3, 3, specs[0].num_params())
    assert group["steps"].tolist() == [0, 3, 7]
    # step 0 is the run's initial weights
    for g, spec in enumerate(specs):
        init = torch.cat([p.reshape(-1) for p in build_cnn(spec).state_dict().values()])
        assert torch.equal(group["params"][0, g], init)
    for g, spec in enumerate(specs):
        alone = train_group([spec], data, snapshots=[0, 3, 7])
        torch.testing.assert_close(alone["params"][:, 0], group["params"][:, g], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone["train_loss"][:, 0], group["train_loss"][:, g], rtol=1e-5, atol=1e-6)
    # the runs really differ and really train
    assert not torch.allclose(group["params"][-1, 0], group["params"][-1, 1])
    assert not torch.allclose(group["params"][-1, 0], group["params"][0, 0])


def test_group_training_rejects_mixed_architectures():
    with pytest.raises(ValueError, match="architecture"):
        train_group([CnnSpec(channels=(4,)), CnnSpec(channels=(8,))], _cifar_like(), [1])


def test_diverged_snapshots_are_dropped():
    data = _cifar_like()
    arch = CnnSpec(in_channels=3, image_size=16, channels=(4,), kernel_size=3, activation="relu", batch_size=8)
    specs = [replace(arch, seed=1, lr=1e-2), replace(arch, seed=2, lr=1e38, init_scale=1e30)]
    x = _normalised_head(data)
    members = _build_group(specs, data, [0, 2, 4], x[0], x[1], run0=10, desc="")
    assert members["dropped"] >= 1
    assert all(torch.isfinite(p).all() for p in members["params"])
    assert {r for r in members["run"]} <= {10, 11} and 10 in members["run"]
    assert len(members["correct"]) == len(members["params"]) == len(members["specs"])


def _normalised_head(data: ImageDataset):
    from tasks.data import BatchStream
    return BatchStream(data, 4).normalise(data.images[:12]), data.labels[:12]


def test_tiny_zoo_build_reload_and_reevaluate(fake_root, tmp_path):
    cache = tmp_path / "zoo"
    kw = dict(root=fake_root, n_archs=3, nets_per_arch=4, snapshots=(0, 2, 6), batch_size=8, n_test=20, seed=5,
              cache_dir=cache, strict=False, progress=False)
    path = build_cnn_zoo("fmnist", **kw)
    assert path.parent == cache and path.name.startswith("cnnzoo-fmnist-") and path.suffix == ".pt"
    assert not list(cache.glob("*.parts")) and not list(cache.glob(".*tmp*"))
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == 1 and raw["dataset"] == "fashion-mnist" and raw["eval"]["test_images"] == 20
    zoo = CnnZoo.load(path)
    n_runs = 3 * 4
    assert len(zoo) == n_runs * 3  # nothing diverges at these learning rates
    assert sorted(set(zoo.step.tolist())) == [0, 2, 6]
    assert zoo.test_acc.dtype == torch.float32 and zoo.test_acc.shape == (len(zoo),)
    assert len(zoo.architectures()) == 3
    for run in zoo.run.unique():  # one init seed per run, one data order per architecture
        assert len({zoo.spec(i).seed for i in torch.nonzero(zoo.run == run).flatten().tolist()}) == 1
    for a in range(3):
        assert len({zoo.spec(i).data_seed for i in torch.nonzero(zoo.arch_index() == a).flatten().tolist()}) == 1
    assert zoo.arch_index().max() == 2
    # every member: weights in state_dict order of build_cnn(spec), accuracy reproduced exactly
    for i in range(len(zoo)):
        spec = zoo.spec(i)
        assert spec.steps == int(zoo.step[i])
        model = zoo.module(i)
        assert list(model.state_dict()) == list(build_cnn(spec).state_dict())
        flat = torch.cat([t.reshape(-1) for t in model.state_dict().values()])
        assert torch.equal(flat, zoo.params(i))
        acc = evaluate_network(model, "fmnist", fake_root, n_test=20, strict=False)
        assert acc == raw["test_correct"][i].item() / 20
        assert torch.tensor(acc, dtype=torch.float32) == zoo.test_acc[i]
        assert zoo.evaluate(i, fake_root) == acc
    # step-0 members are the runs' initial weights
    i0 = int(torch.nonzero(zoo.step == 0)[0])
    for a, b in zip(build_cnn(zoo.spec(i0)).state_dict().values(), zoo.state_dict(i0).values()):
        assert torch.equal(a, b)
    # split by run: no run in two splits, splits partition the zoo
    for run in zoo.run.unique():
        assert zoo.split_id[zoo.run == run].unique().numel() == 1
    parts = [zoo.split(n) for n in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(zoo) and all(len(p) > 0 for p in parts)
    runs = [set(p.run.tolist()) for p in parts]
    assert not (runs[0] & runs[1]) and not (runs[0] & runs[2]) and not (runs[1] & runs[2])
    test = parts[2]
    j = len(test) - 1
    assert test.spec(j) == zoo.spec(int(torch.nonzero(zoo.split_id == 2).flatten()[j]))
    sub = zoo.subset([3, 1])
    assert len(sub) == 2 and sub.test_acc[0] == zoo.test_acc[3] and torch.equal(sub.params(1), zoo.params(1))
    # cached: a second call returns the same file without rebuilding; other settings give another file
    mtime = path.stat().st_mtime_ns
    assert build_cnn_zoo("fashion-mnist", **kw) == path and path.stat().st_mtime_ns == mtime
    assert build_cnn_zoo("fmnist", **{**kw, "n_archs": 1, "nets_per_arch": 2}) != path
    # the same settings rebuild to the same zoo (deterministic)
    again = CnnZoo.load(build_cnn_zoo("fmnist", **{**kw, "force": True}))
    assert torch.equal(again.test_acc, zoo.test_acc)
    assert all(torch.equal(again.params(i), zoo.params(i)) for i in range(len(zoo)))


def test_interrupted_build_resumes_from_parts(fake_root, tmp_path, monkeypatch):
    import tasks.weight_space.cnn_zoo as cz
    kw = dict(root=fake_root, n_archs=2, nets_per_arch=2, snapshots=(1, 2), batch_size=8, n_test=20,
              cache_dir=tmp_path / "zoo", strict=False, progress=False)
    real, calls = cz._build_group, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cz, "_build_group", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cnn_zoo("fmnist", **kw)
    assert len(list((tmp_path / "zoo").glob("*.parts/group-*.pt"))) == 1
    calls.clear()
    monkeypatch.setattr(cz, "_build_group", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    zoo = CnnZoo.load(build_cnn_zoo("fmnist", **kw))
    assert len(calls) == 1 and len(zoo) == 2 * 2 * 2


def test_load_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ZooNotFoundError, match="nope.pt") as err:
        CnnZoo.load(missing)
    assert "python -m tasks.weight_space.cnn_zoo" in str(err.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CorruptZooError, match="bad.pt"):
        CnnZoo.load(bad)
    partial = tmp_path / "partial.pt"
    torch.save({"version": 1, "dataset": "fashion-mnist"}, partial)
    with pytest.raises(CorruptZooError, match="missing"):
        CnnZoo.load(partial)


def test_unflatten_checks_size():
    spec = CnnSpec(channels=(4,))
    with pytest.raises(ValueError, match="parameters"):
        unflatten_state(torch.zeros(spec.num_params() + 1), spec)
    flat = torch.arange(spec.num_params(), dtype=torch.float32)
    state = unflatten_state(flat, spec)
    assert torch.equal(torch.cat([t.reshape(-1) for t in state.values()]), flat)


def test_cli_missing_data_root_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "fmnist", "--data-root", str(tmp_path / "missing"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "fmnist", "--data-root", str(tmp_path), "--cache-dir", str(tmp_path / "z"),
              "--no-progress"])
    assert exit_info.value.code == 2
    assert "FashionMNIST" in capsys.readouterr().err
    for name in ("mnist", "imagenet"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--dataset", name, "--data-root", str(tmp_path)])
        assert exit_info.value.code == 2
    assert "fmnist or cifar10" in capsys.readouterr().err


def test_cli_builds_and_summarises(fake_root, tmp_path, capsys, monkeypatch):
    import tasks.weight_space.cnn_zoo as cz
    monkeypatch.setattr(cz, "build_cnn_zoo", lambda *a, **k: build_cnn_zoo(*a, **{**k, "strict": False}))
    assert main(["--dataset", "fmnist", "--data-root", str(fake_root), "--cache-dir", str(tmp_path / "z"),
                 "--n-archs", "1", "--nets-per-arch", "2", "--snapshots", "0,1", "--batch-size", "4",
                 "--n-test", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "4 members" in out and "step    1" in out
    assert math.isfinite(CnnZoo.load(next((tmp_path / "z").glob("cnnzoo-fmnist-*.pt"))).test_acc.sum().item())
