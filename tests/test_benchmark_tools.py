"""The measuring tools of ``benchmarks/`` measure what they say."""
from __future__ import annotations

import json

import pytest
import torch

import l2o.runtime


def test_live_storage_counter_tracks_the_peak_of_live_tensors():
    from benchmarks.step_memory import LiveStorageCounter

    counter = LiveStorageCounter()
    with counter, torch.no_grad():
        a = torch.zeros(1000)  # 4,000 bytes
        b = torch.zeros(500)  # 2,000: 6,000 live
        view = a[10:20].view(2, 5)  # a view: nothing new
        a.add_(1.0)  # in place: nothing new
        del a, view  # 2,000 live
        c = torch.zeros(250)  # 3,000 live
    assert counter.peak == 6000
    assert counter.live == 3000
    del b, c
    assert counter.live == 0


def test_step_overhead_times_a_checkpoint_beside_the_shipped_default(tmp_path):
    from benchmarks.step_overhead import bench_task
    from l2o.optim import OptimizerConfig, build_optimizer, save_checkpoint

    cfg = OptimizerConfig(family="ff", head_hidden=8)
    save_checkpoint(tmp_path / "ff.pt", build_optimizer(cfg), cfg)
    records = bench_task("fmnist-conv", [], repeats=1, checkpoints={"candidate": tmp_path / "ff.pt"})
    rows = {r["optimizer"]: r for r in records}
    assert set(rows) == {"adam (torch)", "candidate", "shipped default"}
    assert rows["candidate"]["step_ms"] > 0 and rows["candidate"]["params"] == rows["adam (torch)"]["params"]
    assert {r["chunk_rows"] for r in records} == {8192}  # the CPU chunk size as shipped


def test_step_overhead_chunk_rows_sets_the_devices_chunk_size_and_rejects_nonsense(tmp_path, monkeypatch, capsys):
    from benchmarks import step_overhead

    with pytest.raises(SystemExit):
        step_overhead.main(["--chunk-rows", "0", "--families", "--tasks", "fmnist-conv"])
    assert "--chunk-rows 0: expected a positive number of rows" in capsys.readouterr().err
    monkeypatch.setattr(l2o.runtime, "CPU_CHUNK_ROWS", l2o.runtime.CPU_CHUNK_ROWS)  # restored after the test
    step_overhead.main(["--chunk-rows", "1000", "--families", "--tasks", "fmnist-conv", "--repeats", "1",
                        "--out", str(tmp_path)])
    records = json.loads((tmp_path / "step_overhead.json").read_text())
    assert {r["chunk_rows"] for r in records} == {1000} and l2o.runtime.CPU_CHUNK_ROWS == 1000


def test_step_overhead_matmul_precision_is_set_and_recorded(tmp_path, capsys):
    from benchmarks import step_overhead

    with pytest.raises(SystemExit):
        step_overhead.main(["--matmul-precision", "fast", "--families", "--tasks", "fmnist-conv"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    before = torch.get_float32_matmul_precision()
    try:
        step_overhead.main(["--matmul-precision", "high", "--families", "--tasks", "fmnist-conv", "--repeats", "1",
                            "--out", str(tmp_path)])
    finally:
        torch.set_float32_matmul_precision(before)
    records = json.loads((tmp_path / "step_overhead.json").read_text())
    assert {r["matmul_precision"] for r in records} == {"high"}


def test_step_grids_times_both_settings_and_restores_the_shipped_one(tmp_path, monkeypatch):
    """Both optimizers really step (each setting's time is of a full step, not of a skipped one), and the switch
    is back as shipped afterwards."""
    import json

    import l2o.encoders.ng_gnn as ng_gnn
    from benchmarks import step_grids

    called = []
    real = ng_gnn.edge_pieces
    monkeypatch.setattr(ng_gnn, "edge_pieces", lambda *a: called.append(a) or real(*a))
    step_grids.main(["--tasks", "cifar10-conv", "--rounds", "1", "--steps", "1", "--out", str(tmp_path)])
    (r,) = json.loads((tmp_path / "step_grids.json").read_text())
    assert r["task"] == "cifar10-conv" and r["device"] == "cpu" and called
    assert r["grids_ms"] > 1 and r["row_chunks_ms"] > 1  # a real step each (a skipped one takes ~0.1 ms)
    assert r["grids_over_row_chunks"] == r["grids_ms"] / r["row_chunks_ms"]
    assert ng_gnn.DENSE_GRIDS is True and (tmp_path / "step_grids.md").read_text().count("cifar10-conv") == 1


def test_step_memory_counts_less_with_streamed_features(tmp_path):
    """The default's step peak with its features streamed is below the held one by about the [P, F] block, and
    the switch is back as shipped afterwards."""
    import json

    import l2o.runtime
    from benchmarks import step_memory

    shipped = l2o.runtime.CPU_STREAM_ROWS
    step_memory.main(["--tasks", "cifar10-conv", "--optimizers", "default", "ff", "--out", str(tmp_path)])
    rows = {(r["optimizer"], r["features"]): r["peak_bytes_per_param"]
            for r in json.loads((tmp_path / "step_memory.json").read_text())}
    assert set(rows) == {("default", "held"), ("default", "streamed"), ("ff", "held")}
    assert rows[("default", "held")] - rows[("default", "streamed")] > 40  # 72 bytes/param of features, at most
    assert l2o.runtime.CPU_STREAM_ROWS == shipped


def test_profile_step_writes_the_table_and_the_steps_matrix_flops(tmp_path):
    """The FLOP count is the encoder's real arithmetic: the default's NG-GNN step on cifar10-conv multiplies
    matrices of tens of MFLOP at least (its per-edge 32-wide linears over 2 x 57k edges), not zero."""
    import re

    from benchmarks import profile_step

    out = tmp_path / "nested" / "folder"  # created by the script
    profile_step.main(["--task", "cifar10-conv", "--repeats", "1", "--rows", "5", "--out", str(out)])
    text = (out / "profile_step_cifar10-conv.md").read_text()
    gflop = float(re.search(r"([0-9.]+) GFLOP of matrix products per step", text).group(1))
    assert 0.05 < gflop < 50 and "aten::" in text
