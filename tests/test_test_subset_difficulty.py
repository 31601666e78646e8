"""``experiments.test_subset_difficulty``: every subset is measured on its own rows, and the outputs are written."""
from __future__ import annotations

import json

import torch

from experiments import test_subset_difficulty as study
from tasks.data import ImageDataset


def test_each_subset_is_scored_on_its_own_rows(monkeypatch, tmp_path):
    """Test images 0-1999 are noise with random labels and the rest copies of learnable train images: the first
    2,000 score near chance, the last 5,000 perfectly, the whole set in between, and the table says so."""
    gen = torch.Generator().manual_seed(0)
    train_y = torch.arange(200) % 10
    train_x = torch.zeros(200, 1, 28, 28, dtype=torch.uint8)
    train_x.view(200, -1)[torch.arange(200), train_y * 50] = 255  # one bright pixel per class
    test_y = torch.cat([torch.randint(0, 10, (2000,), generator=gen), torch.arange(8000) % 10])
    test_x = torch.cat([torch.randint(0, 256, (2000, 1, 28, 28), generator=gen, dtype=torch.uint8),
                        train_x[torch.arange(8000) % 200]])
    data = {"train": (train_x, train_y), "val": (train_x[:100], train_y[:100]), "test": (test_x, test_y)}
    monkeypatch.setattr("tasks.data.load_dataset",
                        lambda name, split, root=None: ImageDataset(*data[split], (0.5,), (0.5,)))
    study.main(["--datasets", "mnist", "--seeds", "0", "1", "--epochs", "20", "--out", str(tmp_path)])
    rows = {r["subset"]: r for r in json.loads((tmp_path / "test_subset_difficulty.json").read_text())["rows"]}
    assert set(rows) == {label for label, _, _ in study.SUBSETS} and all(len(r["per_seed"]) == 2 for r in rows.values())
    assert rows["test, last 5,000"]["accuracy_mean"] == 100.0 and rows["val, all"]["accuracy_mean"] == 100.0
    assert rows["test, first 2,000"]["accuracy_mean"] < 30
    whole = rows["test, all"]["accuracy_mean"]
    assert 75 < whole < 90  # 8,000 of 10,000 right, plus chance on the noise
    assert "| mnist | test, first 2,000 |" in (tmp_path / "test_subset_difficulty.md").read_text()
