"""Data readers, fixed splits and BatchStream, on tiny synthetic files in torchvision's layout.

Only `test_real_data_sizes_and_class_counts` reads the real data sets (skipped when L2O_DATA is unset).
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.data import (
    BatchStream,
    CorruptDataError,
    DataNotFoundError,
    ImageDataset,
    clear_cache,
    load_dataset,
    resolve_data_root,
    val_split_indices,
)

# ----------------------------------------------------------------------------------------------------------------
# Writers of synthetic files in the official formats


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = True) -> Path:
    """IDX file: big-endian magic, big-endian uint32 dims, uint8 payload."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)
    return path


def make_mnist_like(root: Path, folder: str, n_train: int = 60, n_test: int = 20, gz: bool = True,
                    seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four IDX files under root/folder/raw; returns {"train"/"test": (images [n,28,28], labels [n])}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images, 0x803, gz)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels, 0x801, gz)
        out[split] = (images, labels)
    return out


def cifar_arrays(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def make_cifar(root: Path, version: str = "bin", per_file: int = 4, seed: int = 0) -> dict[str, tuple]:
    """Write five training files and one test file of `per_file` records each in the "bin" or "py" version."""
    rng = np.random.default_rng(seed)
    folder = root / f"cifar-10-batches-{version}"
    folder.mkdir(parents=True)
    parts: dict[str, list] = {"train": [], "test": []}
    names = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for split, stem in names:
        images, labels = cifar_arrays(per_file, rng)
        if version == "bin":
            records = np.concatenate([labels[:, None], images.reshape(per_file, -1)], axis=1)
            (folder / f"{stem}.bin").write_bytes(records.tobytes())
        else:
            entry = {b"data": images.reshape(per_file, -1), b"labels": labels.tolist(), b"batch_label": b"x"}
            with open(folder / stem, "wb") as f:
                pickle.dump(entry, f)
        parts[split].append((images, labels))
    return {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for s, v in parts.items()}


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ----------------------------------------------------------------------------------------------------------------
# Readers


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip(tmp_path, name, folder, gz):
    written = make_mnist_like(tmp_path, folder, gz=gz)
    for split, official in (("train+val", "train"), ("test", "test")):
        data = load_dataset(name, split, root=tmp_path, strict=False)
        images, labels = written[official]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(images), 1, 28, 28)
        assert data.labels.dtype == torch.int64
        np.testing.assert_array_equal(data.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(data.labels.numpy(), labels)
        assert data.num_classes == 10 and len(data.mean) == len(data.std) == 1


def test_normalisation_constants_are_the_published_ones(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    make_mnist_like(tmp_path, "FashionMNIST")
    make_cifar(tmp_path)
    assert load_dataset("mnist", "test", tmp_path, strict=False).mean == (0.1307,)
    assert load_dataset("mnist", "test", tmp_path, strict=False).std == (0.3081,)
    assert load_dataset("fashion-mnist", "test", tmp_path, strict=False).mean == (0.2860,)
    assert load_dataset("fashion-mnist", "test", tmp_path, strict=False).std == (0.3530,)
    cifar = load_dataset("cifar10", "test", tmp_path, strict=False)
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2470, 0.2435, 0.2616)


def test_strict_requires_official_sizes(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    with pytest.raises(CorruptDataError, match="expected 60000"):
        load_dataset("mnist", "train", root=tmp_path)


@pytest.mark.parametrize("version", ["bin", "py"])
def test_cifar_reader_round_trip(tmp_path, version):
    written = make_cifar(tmp_path, version)
    for split, official in (("train+val", "train"), ("test", "test")):
        data = load_dataset("cifar10", split, root=tmp_path, strict=False)
        images, labels = written[official]
        assert data.images.shape == (len(images), 3, 32, 32)
        np.testing.assert_array_equal(data.images.numpy(), images)
        np.testing.assert_array_equal(data.labels.numpy(), labels)


def test_cifar_binary_pixel_layout(tmp_path):
    """Record = label, then the red 1024 bytes, green, blue, each row-major."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 0 * 32 + 5] = 11  # red, row 0, column 5
    record[1 + 1 * 1024 + 2 * 32 + 0] = 22  # green, row 2, column 0
    record[1 + 2 * 1024 + 31 * 32 + 31] = 33  # blue, row 31, column 31
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f"{stem}.bin").write_bytes(record.tobytes())
    data = load_dataset("cifar10", "test", root=tmp_path, strict=False)
    assert data.labels.tolist() == [7]
    assert data.images[0, 0, 0, 5] == 11 and data.images[0, 1, 2, 0] == 22 and data.images[0, 2, 31, 31] == 33
    assert int(data.images.sum()) == 66


# ----------------------------------------------------------------------------------------------------------------
# Errors


def test_truncated_idx_names_the_file(tmp_path):
    make_mnist_like(tmp_path, "MNIST", gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", "test", root=tmp_path, strict=False)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    make_mnist_like(tmp_path, "FashionMNIST")
    path = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", "train", root=tmp_path, strict=False)


def test_bad_magic_names_the_file(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    labels = np.zeros(20, dtype=np.uint8)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels, 0x803)  # image magic on labels
    with pytest.raises(CorruptDataError, match=r"t10k-labels-idx1-ubyte.gz.*magic"):
        load_dataset("mnist", "test", root=tmp_path, strict=False)


def test_mismatched_image_and_label_counts(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8), 0x801)
    with pytest.raises(CorruptDataError, match="20 images but .* 19 labels"):
        load_dataset("mnist", "test", root=tmp_path, strict=False)


def test_label_out_of_range(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.full(20, 10, dtype=np.uint8), 0x801)
    with pytest.raises(CorruptDataError, match="out of range"):
        load_dataset("mnist", "test", root=tmp_path, strict=False)


def test_truncated_cifar_binary_names_the_file(tmp_path):
    make_cifar(tmp_path, "bin")
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptDataError, match="data_batch_3.bin.*3073"):
        load_dataset("cifar10", "train", root=tmp_path, strict=False)


def test_corrupt_cifar_pickle_names_the_file(tmp_path):
    make_cifar(tmp_path, "py")
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptDataError, match="test_batch"):
        load_dataset("cifar10", "test", root=tmp_path, strict=False)


def test_cifar_strict_counts(tmp_path):
    make_cifar(tmp_path, "bin")
    with pytest.raises(CorruptDataError, match="expected 10000"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_missing_file_names_the_path_and_the_way_out(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "train", root=tmp_path, strict=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz") in message
    assert "L2O_DATA" in message and "http" in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_data_set_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-bin.*cs.toronto.edu"):
        load_dataset("cifar10", "test", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="FashionMNIST"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_no_root_mentions_the_env_var(monkeypatch):
    monkeypatch.delenv("L2O_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="L2O_DATA") as err:
        resolve_data_root()
    assert "FashionMNIST/raw" in str(err.value) and "cifar-10-batches-bin" in str(err.value)
    with pytest.raises(DataNotFoundError, match="L2O_DATA"):
        load_dataset("mnist", "test")


def test_root_resolution_order(tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("L2O_DATA", str(other))
    assert resolve_data_root() == other
    assert resolve_data_root(tmp_path) == tmp_path  # the explicit argument wins
    monkeypatch.setenv("L2O_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere.*L2O_DATA"):
        resolve_data_root()


def test_unknown_names():
    with pytest.raises(KeyError, match="fashion-mnist"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="train\\+val"):
        load_dataset("mnist", "validation")


# ----------------------------------------------------------------------------------------------------------------
# Splits and cache


def test_val_split_is_a_fixed_disjoint_carve_out(tmp_path):
    written = make_mnist_like(tmp_path, "MNIST", n_train=120)
    train = load_dataset("mnist", "train", root=tmp_path, strict=False)
    val = load_dataset("mnist", "val", root=tmp_path, strict=False)
    assert len(train) == 100 and len(val) == 20  # the official 1/6 fraction for a non-official size
    train_idx, val_idx = val_split_indices(120, 20)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(120))
    images, _ = written["train"]
    np.testing.assert_array_equal(train.images[:, 0].numpy(), images[train_idx])
    np.testing.assert_array_equal(val.images[:, 0].numpy(), images[val_idx])
    clear_cache()
    again = load_dataset("mnist", "val", root=tmp_path, strict=False)
    assert torch.equal(again.images, val.images)


def test_val_split_indices_are_pinned():
    """The official carve-outs must never change: these values are part of every reported validation number."""
    train_idx, val_idx = val_split_indices(60000, 10000)
    assert len(train_idx) == 50000 and len(val_idx) == 10000
    assert val_idx[:5].tolist() == [2, 8, 23, 26, 29] and val_idx[-3:].tolist() == [59985, 59989, 59990]
    assert int(val_idx.sum()) == 299435781
    _, cifar_val = val_split_indices(50000, 5000)
    assert cifar_val[:5].tolist() == [23, 26, 29, 34, 57] and int(cifar_val.sum()) == 125603037


def test_repeated_loads_are_cached(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    first = load_dataset("mnist", "train", root=tmp_path, strict=False)
    assert load_dataset("mnist", "train", root=tmp_path, strict=False) is first
    whole = load_dataset("mnist", "train+val", root=tmp_path, strict=False)
    assert load_dataset("mnist", "train+val", root=tmp_path, strict=False).images is whole.images


# ----------------------------------------------------------------------------------------------------------------
# BatchStream


def synthetic_dataset(n: int = 50, channels: int = 3, seed: int = 0) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, 4, 4), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    mean, std = tuple(0.1 * (c + 1) for c in range(channels)), tuple(0.2 + 0.1 * c for c in range(channels))
    return ImageDataset(images, labels, mean, std, 10, "synthetic")


def test_batch_is_a_pure_function_of_seed_and_step():
    data = synthetic_dataset()
    a, b = BatchStream(data, 8, seed=3), BatchStream(data, 8, seed=3)
    for step in (0, 5, 6, 7, 100, 6):  # random access, out of order, across epoch boundaries
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (8, 3, 4, 4) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    iterated = [batch for _, batch in zip(range(8), iter(BatchStream(data, 8, seed=3)))]
    for step, (x, y) in enumerate(iterated):
        assert torch.equal(x, a.batch(step)[0]) and torch.equal(y, a.batch(step)[1])


def test_different_seeds_differ():
    data = synthetic_dataset()
    assert not torch.equal(BatchStream(data, 8, seed=0).indices(0), BatchStream(data, 8, seed=1).indices(0))
    stream = BatchStream(data, 10, seed=0)  # consecutive epochs use different orders too
    assert not torch.equal(stream.epoch_permutation(0), stream.epoch_permutation(1))


def test_each_epoch_covers_every_example_once():
    data = synthetic_dataset(n=50)
    stream = BatchStream(data, 8, seed=7)  # 50 is not a multiple of 8: batches straddle epoch boundaries
    order = torch.cat([stream.indices(step) for step in range(25)])  # 200 examples = 4 epochs
    for epoch in range(4):
        assert sorted(order[50 * epoch: 50 * (epoch + 1)].tolist()) == list(range(50))
    # Example i of the stream does not depend on the batch size, even for a batch larger than the data set.
    big = BatchStream(data, 120, seed=7)
    assert torch.equal(big.indices(0), order[:120])


def test_normalisation():
    data = synthetic_dataset()
    stream = BatchStream(data, 16, seed=0)
    x, y = stream.batch(2)
    index = stream.indices(2)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x * std + mean, data.images[index].float() / 255)
    assert torch.equal(y, data.labels[index])


def test_full_yields_every_example_in_order():
    data = synthetic_dataset(n=23)
    stream = BatchStream(data, 4, seed=0)
    chunks = list(stream.full(batch_size=10))
    assert [len(y) for _, y in chunks] == [10, 10, 3]
    assert torch.equal(torch.cat([y for _, y in chunks]), data.labels)
    torch.testing.assert_close(torch.cat([x for x, _ in chunks]), stream.normalise(data.images))


def test_bad_stream_arguments():
    data = synthetic_dataset()
    with pytest.raises(ValueError):
        BatchStream(data, 0)
    with pytest.raises(ValueError):
        BatchStream(data, 4).batch(-1)


# ----------------------------------------------------------------------------------------------------------------
# Real data (the one test that reads it)

REAL_ROOT = os.environ.get("L2O_DATA", "")
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.skipif(not REAL_ROOT or not Path(REAL_ROOT).is_dir(), reason="L2O_DATA unset or missing")
def test_real_data_sizes_and_class_counts():
    expected = {
        "mnist": (MNIST_TRAIN, MNIST_TEST, (1, 28, 28), 10000),
        "fashion-mnist": ([6000] * 10, [1000] * 10, (1, 28, 28), 10000),
        "cifar10": ([5000] * 10, [1000] * 10, (3, 32, 32), 5000),
    }
    for name, (train_counts, test_counts, shape, n_val) in expected.items():
        whole = load_dataset(name, "train+val")
        test = load_dataset(name, "test")
        assert whole.shape == shape and test.shape == shape
        assert torch.bincount(whole.labels, minlength=10).tolist() == train_counts, name
        assert torch.bincount(test.labels, minlength=10).tolist() == test_counts, name
        train, val = load_dataset(name, "train"), load_dataset(name, "val")
        assert len(val) == n_val and len(train) == sum(train_counts) - n_val
        assert (torch.bincount(train.labels, minlength=10) + torch.bincount(val.labels, minlength=10)).tolist() \
            == train_counts
        clear_cache()  # keep peak memory to one data set at a time
