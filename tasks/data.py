"""Image-classification data: file readers, fixed splits and a seeded batch sampler.

The data root uses torchvision's layout, so one folder serves both projects::

    <root>/MNIST/raw/train-images-idx3-ubyte.gz        (and the other three IDX files)
    <root>/FashionMNIST/raw/train-images-idx3-ubyte.gz
    <root>/cifar-10-batches-bin/data_batch_{1..5}.bin, test_batch.bin
    <root>/cifar-10-batches-py/data_batch_{1..5}, test_batch     (alternative CIFAR-10 format)

Nothing here touches the network: `download` exists for machines with internet access and is never
called implicitly.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

ENV_VAR = "L2O_DATA"
LAYOUT_HINT = (
    "The expected layout is torchvision's: <root>/FashionMNIST/raw/*-idx?-ubyte.gz, "
    "<root>/MNIST/raw/*-idx?-ubyte.gz, <root>/cifar-10-batches-bin/data_batch_{1..5}.bin + test_batch.bin "
    "(or <root>/cifar-10-batches-py/)."
)
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
VAL_SEED = 0  # fixed forever: changing it would silently move examples between "val" and "train"
SPLITS = ("train", "val", "test", "train+val")


class DataNotFoundError(FileNotFoundError):
    """A data root or data file is missing; the message says where it was looked for and how to get it."""


class CorruptDataError(ValueError):
    """A data file exists but its content is not what its format promises (bad magic, truncated, ...)."""


class DataDownloadError(OSError):
    """`download` could not fetch a data set (typically: no internet access on this machine)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one data set; nothing here needs the files."""

    name: str
    short: str  # used in task names: "fmnist-conv"
    folder: str  # relative to the data root
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]  # per channel, of pixel / 255 over the training set (published values)
    std: tuple[float, ...]
    train_count: int  # official training set size, before the validation carve-out
    test_count: int
    val_count: int  # carved out of the official training set
    urls: tuple[str, ...]  # where to download from (on a machine with internet access)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_BIN_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_CIFAR_PY_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist", short="mnist", folder="MNIST/raw", shape=(1, 28, 28), num_classes=10,
        mean=(0.1307,), std=(0.3081,), train_count=60000, test_count=10000, val_count=10000,
        urls=("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", short="fmnist", folder="FashionMNIST/raw", shape=(1, 28, 28), num_classes=10,
        mean=(0.2860,), std=(0.3530,), train_count=60000, test_count=10000, val_count=10000,
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    "cifar10": DatasetInfo(
        name="cifar10", short="cifar10", folder="cifar-10-batches-bin", shape=(3, 32, 32), num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        train_count=50000, test_count=10000, val_count=5000,
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
              "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    ),
}
_ALIASES = {
    "fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10", "cifar_10": "cifar10",
}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a data set by name (aliases such as "fmnist" and "cifar-10" accepted)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[key]


# ----------------------------------------------------------------------------------------------------------------
# Data root


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The data root: the explicit argument if given, else the L2O_DATA environment variable.

    Raises DataNotFoundError when neither is set or the folder does not exist.
    """
    if root is None or str(root) == "":
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise DataNotFoundError(
                f"no data root: pass root=... (or --data-root on the command line) or set the environment "
                f"variable {ENV_VAR}=/path/to/data. {LAYOUT_HINT}"
            )
        root, source = env, f"environment variable {ENV_VAR}"
    else:
        source = "argument root"
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(
            f"data root {str(path)!r} (from {source}) is not a directory: point root=... / --data-root or "
            f"{ENV_VAR} at an existing folder. {LAYOUT_HINT}"
        )
    return path


def _missing(path: Path, info: DatasetInfo, extra: str = "") -> DataNotFoundError:
    return DataNotFoundError(
        f"{path} not found{extra}. Get {info.name} from {' or '.join(info.urls)} on a machine with internet "
        f"access (or call tasks.data.download({info.name!r}, root) there), copy it to <root>/{info.folder}/ "
        f"and set {ENV_VAR}=<root> (or pass root=...). {LAYOUT_HINT}"
    )


# ----------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def _read_bytes(path: Path) -> bytes:
    """Whole file content, transparently un-gzipped; decompression failures become CorruptDataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptDataError(f"{path}: cannot decompress ({err})") from err


def read_idx(path: str | Path, magic: int, expected_count: int | None = None,
             expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes.

    Checks the magic number, that the payload length matches the header dimensions, and optionally the item
    count and per-item shape.

    Returns:
        uint8 array `[n, *dims]` as given by the header (`[n, rows, cols]` for images, `[n]` for labels).
    """
    path = Path(path)
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise CorruptDataError(f"{path}: file too short ({len(raw)} bytes) for an IDX header of {header_len}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise CorruptDataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_len = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header_len
    if payload != expected_len:
        raise CorruptDataError(
            f"{path}: header says {dims} = {expected_len} bytes of data but the file holds {payload} "
            f"({'truncated' if payload < expected_len else 'trailing bytes'})"
        )
    if expected_count is not None and dims[0] != expected_count:
        raise CorruptDataError(f"{path}: {dims[0]} items, expected {expected_count}")
    if expected_shape is not None and dims[1:] != tuple(expected_shape):
        raise CorruptDataError(f"{path}: items of shape {dims[1:]}, expected {tuple(expected_shape)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _idx_path(folder: Path, stem: str, info: DatasetInfo) -> Path:
    """Prefer the gzipped file, accept the un-gzipped one."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise _missing(folder / f"{stem}.gz", info, extra=f" (nor {folder / stem})")


def read_mnist_like(root: str | Path, name: str, split: str, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read an official MNIST or Fashion-MNIST split ("train" or "test") from `<root>/<folder>/raw/`.

    Args:
        strict: also require the official item counts (60000 / 10000) and 28x28 images.

    Returns:
        images uint8 `[n, 1, 28, 28]`, labels int64 `[n]`.
    """
    info = dataset_info(name)
    folder = Path(root) / info.folder
    image_stem, label_stem = _IDX_FILES[split]
    count = (info.train_count if split == "train" else info.test_count) if strict else None
    image_path = _idx_path(folder, image_stem, info)
    label_path = _idx_path(folder, label_stem, info)
    images = read_idx(image_path, IDX_IMAGES_MAGIC, count, info.shape[1:] if strict else None)
    labels = read_idx(label_path, IDX_LABELS_MAGIC, count)
    if len(images) != len(labels):
        raise CorruptDataError(f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels")
    _check_labels(labels, info.num_classes, label_path)
    return images[:, None], labels.astype(np.int64)


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise CorruptDataError(f"{path}: label {int(labels.max())} out of range 0..{num_classes - 1}")


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10


def read_cifar_bin(path: str | Path, expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 binary version: 3073-byte records `<label><R 1024><G 1024><B 1024>`.

    Returns:
        images uint8 `[n, 3, 32, 32]`, labels int64 `[n]`.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % CIFAR_RECORD_BYTES:
        raise CorruptDataError(
            f"{path}: size {len(raw)} bytes is not a positive multiple of the {CIFAR_RECORD_BYTES}-byte record "
            f"(truncated?)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    if expected_count is not None and len(records) != expected_count:
        raise CorruptDataError(f"{path}: {len(records)} records, expected {expected_count}")
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 10, path)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar_pickle(path: str | Path, expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one file of the CIFAR-10 python version: a pickled dict with b'data' `[n, 3072]` and b'labels'.

    pickle is used only because it is the data set's official distribution format; unpickling runs code from
    the file, so only read files you obtained from the official source.

    Returns:
        images uint8 `[n, 3, 32, 32]`, labels int64 `[n]`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated pickles raise EOFError, UnpicklingError, ValueError, ...
        raise CorruptDataError(f"{path}: cannot unpickle ({type(err).__name__}: {err})") from err
    if not isinstance(entry, dict) or b"data" not in entry or b"labels" not in entry:
        raise CorruptDataError(f"{path}: expected a dict with keys b'data' and b'labels'")
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptDataError(f"{path}: b'data' has dtype {data.dtype} and shape {data.shape}, expected uint8 [n, 3072]")
    if labels.shape != (len(data),):
        raise CorruptDataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if expected_count is not None and len(data) != expected_count:
        raise CorruptDataError(f"{path}: {len(data)} images, expected {expected_count}")
    if labels.size and int(labels.min()) < 0:
        raise CorruptDataError(f"{path}: negative label {int(labels.min())}")
    _check_labels(labels, 10, path)
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(root: str | Path, split: str, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read the official CIFAR-10 split ("train" or "test"), binary version first, else the python version.

    Args:
        strict: also require the official counts (10000 per file: 50000 train, 10000 test).

    Returns:
        images uint8 `[n, 3, 32, 32]`, labels int64 `[n]`.
    """
    info = DATASETS["cifar10"]
    root = Path(root)
    per_file = 10000 if strict else None
    bin_dir, py_dir = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    if bin_dir.is_dir():
        paths, reader = [bin_dir / f for f in _CIFAR_BIN_FILES[split]], read_cifar_bin
    elif py_dir.is_dir():
        paths, reader = [py_dir / f for f in _CIFAR_PY_FILES[split]], read_cifar_pickle
    else:
        raise _missing(bin_dir, info, extra=f" (nor {py_dir})")
    for path in paths:
        if not path.is_file():
            raise _missing(path, info)
    parts = [reader(path, per_file) for path in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ----------------------------------------------------------------------------------------------------------------
# Splits and loading


@dataclass
class ImageDataset:
    """An in-memory image-classification split.

    Tensors may be shared with the module cache: treat them as read-only.
    """

    images: torch.Tensor  # uint8 [n, C, H, W]
    labels: torch.Tensor  # int64 [n]
    mean: tuple[float, ...]  # per channel, applied to pixel / 255
    std: tuple[float, ...]
    num_classes: int = 10
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [n, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [n] = [{self.images.shape[0]}], got {tuple(self.labels.shape)}")
        if not len(self.mean) == len(self.std) == self.images.shape[1]:
            raise ValueError(f"mean/std need one value per channel ({self.images.shape[1]})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor, name: str | None = None) -> "ImageDataset":
        """The examples at `index` (int64 `[m]`), in that order."""
        return ImageDataset(self.images[index], self.labels[index], self.mean, self.std, self.num_classes,
                            self.name if name is None else name)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed bijective 64-bit mixer (SplitMix64 finaliser); uint64 arithmetic wraps, which is intended."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def val_split_indices(n_train: int, n_val: int, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fixed carve-out of the official training set: (train_index `[n_train - n_val]`, val_index `[n_val]`).

    The permutation sorts indices by a hash of (seed, index) written out here, not by a library RNG, so it
    cannot change with a torch or numpy upgrade. The last `n_val` positions of that permutation are "val".
    Both index arrays are returned sorted so that subsets keep the official order.
    """
    if not 0 < n_val < n_train:
        raise ValueError(f"need 0 < n_val < n_train, got n_val={n_val}, n_train={n_train}")
    keys = _splitmix64(np.arange(n_train, dtype=np.uint64) ^ _splitmix64(np.array([seed], dtype=np.uint64)))
    perm = np.argsort(keys, kind="stable")
    return np.sort(perm[: n_train - n_val]), np.sort(perm[n_train - n_val:])


def val_count(info: DatasetInfo, n_train: int) -> int:
    """Validation size: the official one for the official training set, the same fraction for other sizes."""
    if n_train == info.train_count:
        return info.val_count
    return max(1, min(n_train - 1, round(n_train * info.val_count / info.train_count)))


# Module-level cache: (name, official split, root, strict) -> (images, labels) and (name, split, root, strict)
# -> ImageDataset, so that tasks sampled again and again do not re-read or re-copy the data.
_RAW_CACHE: dict[tuple[str, str, str, bool], tuple[torch.Tensor, torch.Tensor]] = {}
_SPLIT_CACHE: dict[tuple[str, str, str, bool], ImageDataset] = {}


def clear_cache() -> None:
    """Forget all loaded arrays (e.g. after the files on disk changed)."""
    _RAW_CACHE.clear()
    _SPLIT_CACHE.clear()


def _load_official(info: DatasetInfo, split: str, root: Path, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    key = (info.name, split, str(root.resolve()), strict)
    if key not in _RAW_CACHE:
        if info.name == "cifar10":
            images, labels = read_cifar10(root, split, strict)
        else:
            images, labels = read_mnist_like(root, info.name, split, strict)
        # np.frombuffer arrays are read-only; copy once into tensors that own their memory.
        _RAW_CACHE[key] = (torch.from_numpy(np.ascontiguousarray(images).copy()), torch.from_numpy(labels.copy()))
    return _RAW_CACHE[key]


def load_dataset(name: str, split: str = "train", root: str | Path | None = None, strict: bool = True) -> ImageDataset:
    """Load a split of "mnist", "fashion-mnist" or "cifar10".

    Splits: "train" and "val" partition the official training set (val = a fixed, seeded carve-out of 10,000
    images, 5,000 for CIFAR-10; see `val_split_indices`), "train+val" is the whole official training set in
    official order, "test" the official test set.

    Args:
        root: data root; default the L2O_DATA environment variable (see `resolve_data_root`).
        strict: require the official sizes; pass False for small synthetic files in the same formats.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    root_path = resolve_data_root(root)
    key = (info.name, split, str(root_path.resolve()), strict)
    if key in _SPLIT_CACHE:
        return _SPLIT_CACHE[key]
    official = "test" if split == "test" else "train"
    images, labels = _load_official(info, official, root_path, strict)
    dataset = ImageDataset(images, labels, info.mean, info.std, info.num_classes, f"{info.name}/{split}")
    if split in ("train", "val"):
        train_idx, val_idx = val_split_indices(len(dataset), val_count(info, len(dataset)))
        dataset = dataset.subset(torch.from_numpy(train_idx if split == "train" else val_idx))
    _SPLIT_CACHE[key] = dataset
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# Batches


def _mix(seed: int, epoch: int) -> int:
    """Deterministic 63-bit seed for (seed, epoch); Python's hash() is not used because it is salted for str."""
    mixed = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ _splitmix64(
        np.array([epoch], dtype=np.uint64)))
    return int(mixed[0]) & 0x7FFFFFFFFFFFFFFF


class BatchStream:
    """Seeded sampler of normalised batches; no DataLoader, no worker processes.

    `batch(step)` is a pure function of (seed, step): example number i = step * B + j of the stream is
    position i % n of epoch i // n, whose order is a permutation drawn from a generator seeded with a hash of
    (seed, epoch). The data position is therefore one integer, which meta-training stores for exact resume.
    A batch that crosses an epoch boundary takes the tail of one epoch and the head of the next, so every
    epoch visits each example exactly once.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("cannot sample batches from an empty data set")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.device = torch.device(device)
        # uint8 stays resident on the device (4x smaller than float); normalise per batch.
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std), -mean / std
        self._perms: dict[int, torch.Tensor] = {}  # the few most recent epochs' permutations

    def __len__(self) -> int:
        """Steps per epoch, rounded up."""
        return -(-len(self.dataset) // self.batch_size)

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """Order of the examples in `epoch`: int64 `[n]` on the stream's device."""
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            perm = torch.randperm(len(self.dataset), generator=generator).to(self.device)
            if len(self._perms) >= 2:  # a batch spans at most two epochs when B <= n
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Example indices of batch `step`: int64 `[B]`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, start = len(self.dataset), step * self.batch_size
        stop = start + self.batch_size
        parts = []
        for epoch in range(start // n, (stop - 1) // n + 1):
            lo, hi = max(start, epoch * n) - epoch * n, min(stop, (epoch + 1) * n) - epoch * n
            parts.append(self.epoch_permutation(epoch)[lo:hi])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, C, H, W]` -> float32 `[B, C, H, W]`, (pixel / 255 - mean) / std per channel."""
        return images.float() * self._scale + self._shift

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `step`: x float32 `[B, C, H, W]` normalised, y int64 `[B]`."""
        index = self.indices(step)
        return self.normalise(self.images[index]), self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless consecutive batches from step 0."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1

    def full(self, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in data set order (for evaluation): x `[b, C, H, W]`, y `[b]`, b <= batch_size."""
        for start in range(0, len(self.dataset), batch_size):
            yield self.normalise(self.images[start:start + batch_size]), self.labels[start:start + batch_size]


# ----------------------------------------------------------------------------------------------------------------
# Download (explicit only; the library and tests never call it)


def download(name: str, root: str | Path, timeout: float = 60.0) -> Path:
    """Fetch a data set into `root` in torchvision's layout, then validate it with `load_dataset`.

    Meant for a machine with internet access; copy the folder to offline machines and set L2O_DATA there.
    Raises DataDownloadError when the server cannot be reached.
    """
    info = dataset_info(name)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if info.name == "cifar10":
        archive = _fetch(info.urls[0], root, timeout)
        with tarfile.open(archive, "r:gz") as tar:
            # The "data" filter refuses absolute paths and links that escape root (Python >= 3.10.12).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)
        archive.unlink()
    else:
        folder = root / info.folder
        folder.mkdir(parents=True, exist_ok=True)
        for stem in (*_IDX_FILES["train"], *_IDX_FILES["test"]):
            base_url = info.urls[-1] if info.name == "mnist" else info.urls[0]  # the MNIST home page refuses bots
            fetched = _fetch(base_url + stem + ".gz", folder, timeout)
            fetched.replace(folder / f"{stem}.gz")
    for split in ("train", "test"):
        load_dataset(info.name, split, root)
    return root


def _fetch(url: str, folder: Path, timeout: float) -> Path:
    """Download `url` into a temporary file in `folder` and return its path (removed again on failure)."""
    with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as out:
        part = Path(out.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            out.close()
            part.unlink(missing_ok=True)
            raise DataDownloadError(
                f"could not download {url} ({err}). This machine may be offline: download the data set on a "
                f"machine with internet access, copy it here in torchvision's layout and set {ENV_VAR}. "
                f"{LAYOUT_HINT}"
            ) from err
    return part
