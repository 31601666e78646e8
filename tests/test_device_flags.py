"""``--device`` on every command, and the paths it reaches: the weight-space training loop and zoo fitting, step
statistics, evaluation's optimizers, the demo, the studies in ``experiments/`` and the benchmarks. The device-sensitive
tests take the ``device`` fixture (``cpu`` always, ``cuda`` only where a GPU is present); the command-line checks need
no GPU (CUDA's availability is faked where a test needs a GPU to be "present")."""
from __future__ import annotations

import importlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_data
from meta_train import cli
from tasks.devices import parse_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")

# Every command that trains or evaluates, with the positional arguments it needs to parse.
COMMANDS = {
    "demo": ["demo"],
    "train": ["train"],
    "evaluate": ["evaluate", "--optimizers", "adam"],
    "main-job": ["main-job"],
    "results": ["results"],
    "step-stats": ["step-stats", "some.pt"],
    "weight-space": ["weight-space", "classify"],
}


def _fake_gpus(monkeypatch, count: int) -> None:
    """Make this machine look like it has ``count`` CUDA GPUs (only the device checks ask)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def _exit_status(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_device(command):
    parser = cli.build_parser()
    for name in ("cpu", "cuda", "cuda:1"):
        assert parser.parse_args(COMMANDS[command] + ["--device", name]).device == name
    default = parser.parse_args(COMMANDS[command]).device
    assert default == (None if command == "train" else "cpu")  # train: the config's run.device unless given


@no_gpu
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cuda_without_a_gpu_stops_at_once(command, capsys):
    status, err = _exit_status(COMMANDS[command] + ["--device", "cuda"], capsys)
    assert status == 2
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback
    assert "no usable CUDA GPU" in err and "--device cpu" in err


def test_unknown_device_and_gpu_index(monkeypatch, capsys):
    status, err = _exit_status(["demo", "--device", "tpu"], capsys)
    assert status == 2 and "use cpu, cuda or cuda:N" in err
    _fake_gpus(monkeypatch, 2)
    status, err = _exit_status(["evaluate", "--optimizers", "adam", "--device", "cuda:2"], capsys)
    assert status == 2 and "2 CUDA GPU(s)" in err
    # Meta-training picks its GPU through Accelerate, so an index would be dropped: refused, with the way to pick it.
    for argv in (["train"], ["main-job"], ["results", "--stages", "train"]):
        status, err = _exit_status(argv + ["--device", "cuda:1"], capsys)
        assert status == 2 and "CUDA_VISIBLE_DEVICES=1" in err


def test_gpu_index_is_fine_where_nothing_meta_trains(monkeypatch):
    _fake_gpus(monkeypatch, 2)
    for argv in (["evaluate", "--optimizers", "adam"], ["results", "--stages", "eval", "report"], ["demo"]):
        cli._check_device(cli.build_parser().parse_args(argv + ["--device", "cuda:1"]))
    assert parse_device("cuda:1") == torch.device("cuda", 1)


def test_train_device_is_a_run_device_override():
    args = cli.build_parser().parse_args(["train", "--device", "cpu", "--set", "meta.lr=1e-4"])
    cli._start_train(args, [])
    assert args.overrides == ["meta.lr=1e-4", "run.device='cpu'"]
    args = cli.build_parser().parse_args(["train"])
    cli._start_train(args, [])
    assert args.overrides == []  # no flag: the config's run.device stays
    cli._check_device(cli.build_parser().parse_args(["train", "--device", "auto"]))  # every run.device value


@no_gpu
def test_zoo_builders_refuse_cuda_without_a_gpu(capsys):
    from tasks.weight_space import cnn_zoo, inr_zoo

    assert inr_zoo.main(["--dataset", "mnist", "--device", "cuda"]) == 2
    assert "no usable CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cnn_zoo.main(["--dataset", "fmnist", "--device", "cuda"])
    assert info.value.code == 2 and "no usable CUDA GPU" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ weight space
def test_weight_batches_live_on_the_device(device):
    from tasks.weight_space.batching import Batcher, Normalizer
    from tasks.weight_space.synthetic import synthetic_cnn_zoo
    from tasks.weight_space.task_runs import cnn_task_data

    table = cnn_task_data(synthetic_cnn_zoo(n_archs=2, per_arch=4, seed=3)).train.table
    batcher = Batcher(table, Normalizer(table), mixed=True, raw_channel=True, device=device)
    idx = torch.arange(len(table))
    for batch in (batcher.make(idx), batcher.make(idx, rows=table.flat[idx] * -1)):  # plain and augmented rows
        for name in ("node", "edge", "flat", "rows", "mask", "dense", "stats", "std", "std_rows"):
            assert getattr(batch, name).device.type == device.type, name
        assert batch.graph.edge_index.device.type == device.type
        assert batch.index.device.type == batch.arch.device.type == "cpu"  # they index the CPU tables


@pytest.mark.parametrize("task", ["classify", "edit", "generalization"])
def test_weight_space_run_on_the_device(device, task, tmp_path):
    from tasks.weight_space.synthetic import synthetic_cnn_zoo, synthetic_inr_zoo
    from tasks.weight_space.task_runs import cnn_task_data, default_spec, inr_task_data, run

    if task == "generalization":
        data, encoder, extra = cnn_task_data(synthetic_cnn_zoo(n_archs=2, per_arch=4, seed=1)), "ng-gnn", {}
    else:
        zoo = synthetic_inr_zoo(n_train=8, n_val=4, n_test=4, hidden=(6, 6), side=6)
        data, encoder = inr_task_data(zoo, task), ("dng" if task == "classify" else "nfn")
        extra = {"probes": 3, "aux_recon": 0.5} if task == "classify" else {"probes": 3}
    spec = default_spec(task, "synthetic", encoder, seed=0, epochs=1, batch_size=4, hidden=8, depth=1, **extra)
    rec = run(spec, data=data, out_dir=tmp_path, progress=False, log=None, device=device)
    assert rec["device"] == str(device)
    assert all(math.isfinite(v) for v in rec["metrics"].values())
    if task == "edit":  # the examples file is read on any machine: CPU tensors
        examples = torch.load(tmp_path / rec["examples"], weights_only=True)
        assert all(t.device.type == "cpu" for t in examples.values())


def test_inr_fit_on_the_device(device):
    from tasks.weight_space.inr_zoo import fit_inrs

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 6, 6, generator=gen)
    params, scores = fit_inrs(images, steps=5, seeds=[1, 2, 3], hidden=(6, 6), micro_batch=2, device=device)
    assert scores.device.type == "cpu" and scores.shape == (3,) and torch.isfinite(scores).all()
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in params.values())
    if device.type == "cpu":  # the same fit as without a device argument
        again, _ = fit_inrs(images, steps=5, seeds=[1, 2, 3], hidden=(6, 6), micro_batch=2)
        assert all(torch.equal(params[n], again[n]) for n in params)


def test_cnn_zoo_group_on_the_device(device):
    from tasks.data import ImageDataset
    from tasks.weight_space.cnn_zoo import _build_group
    from tasks.weight_space.cnn_zoo_member import CnnSpec

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=32)
    images = np.clip(labels[:, None, None, None] * 25 + rng.integers(0, 40, size=(32, 3, 8, 8)), 0, 255)
    train = ImageDataset(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64)),
                         (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    arch = CnnSpec(in_channels=3, image_size=8, channels=(4,), kernel_size=3, batch_size=8)
    specs = [replace(arch, seed=s, lr=1e-2, data_seed=7) for s in (1, 2)]
    x_test = (torch.from_numpy(images[:10]).float() / 255 - 0.5) / 0.25
    members = _build_group(specs, train, [0, 3], x_test, torch.from_numpy(labels[:10]), 0, "", device=device)
    assert len(members["params"]) == 4 and all(p.device.type == "cpu" for p in members["params"])
    assert all(0 <= c <= 10 for c in members["correct"]) and all(math.isfinite(x) for x in members["train_loss"])


# ------------------------------------------------------------------------------------------------ meta_train paths
def test_step_stats_on_the_device(device):
    from l2o.optim import OptimizerConfig, build_optimizer
    from meta_train.pipelines.step_stats import step_stats
    from tasks.regression import RegressionTask

    torch.manual_seed(0)
    learned = build_optimizer(OptimizerConfig(family="ff", head_hidden=8, adam_residual=True))
    recs = step_stats(learned, RegressionTask(4, 0), steps=4, ref_lr=1e-2, every=2, device=device)
    assert [r["step"] for r in recs] == [0, 2, 3] and all(math.isfinite(r["loss"]) for r in recs)
    assert all(p.device.type == device.type for p in learned.parameters())


def test_evaluation_runs_learned_optimizers_on_the_device(device, tmp_path, monkeypatch):
    from l2o.optim import OptimizerConfig, build_optimizer, save_checkpoint
    from meta_train import evaluate as ev

    seen = []

    def fake(opt, task, steps, seed, device, eval_split, eval_every=0, progress=None):
        seen.append({t.device.type for t in [*opt.parameters(), *opt.buffers()]} | {torch.device(device).type})
        return {"losses": [1.0] * steps, "evals": [], "acc": 0.5, "step_ms": 1.0, "diverged": False}

    monkeypatch.setattr(ev, "train_optimizee", fake)
    cfg = OptimizerConfig(family="ff", head_hidden=8)
    save_checkpoint(tmp_path / "ff.pt", build_optimizer(cfg), cfg)
    ev.evaluate("fmnist-conv", [f"ff={tmp_path / 'ff.pt'}"], steps=2, seeds=1, out=tmp_path / "out", eval_every=0,
                device=str(device))
    assert seen == [{device.type}]  # the checkpoint's network went where the model and the data go


@needs_data
def test_demo_runs_on_the_device(device):
    from meta_train.pipelines.demo import run_demo

    res = run_demo("fmnist-conv", steps=2, seed=0, device=device)
    assert math.isfinite(res["final_loss"]) and 0.0 <= res["test_acc"] <= 1.0


# ------------------------------------------------------------------------------------------------ experiments, benchmarks
# The scripts outside meta_train's command line: the arguments each needs (``{tmp}``: a scratch folder, so that no
# committed results file is read or written) and the function its work starts with, "module:name".
SCRIPTS = {
    "experiments.dng_discount": (["some.pt", "--out", "{tmp}/rates.json"], "experiments.dng_discount:effective_rates"),
    "experiments.family_rates": (["--out", "{tmp}/rates.json"], "experiments.dng_discount:effective_rates"),
    "experiments.gradient_noise_rule": (["--out", "{tmp}/snr.json"], "experiments.gradient_noise_rule:measure"),
    "experiments.hand_designed_adam": (["relative", "fmnist-conv@0.1"], "experiments.hand_designed_adam:relative_run"),
    "experiments.meta_gradient_probe": (["--out", "{tmp}/probe.json"], "experiments.meta_gradient_probe:optimizer"),
    "experiments.untrained_optimizer": (["--out", "{tmp}/untrained.pt"],
                                        "experiments.untrained_optimizer:write_untrained"),
    "benchmarks.fault_injection": (["--out", "{tmp}"], "benchmarks.fault_injection:run_one"),
    "benchmarks.graph": (["--out", "{tmp}"], "benchmarks.graph:bench"),
    "experiments.dng_ablation": (["--out", "{tmp}/r", "--results", "{tmp}/res"], "experiments.dng_ablation:run_study"),
    "experiments.inr_scaling": (["--out", "{tmp}/r", "--results", "{tmp}/res"], "experiments.inr_scaling:run_study"),
}


class _WorkStarted(Exception):
    pass


def _stub_work(monkeypatch, script: str, tmp_path: Path) -> tuple[list[str], list]:
    """``(argv, seen)``: the script's arguments, and the devices its work was started on (the work itself replaced by
    a stand-in that notes its device, the last argument, and stops the script)."""
    argv, target = SCRIPTS[script]
    module, name = target.split(":")
    seen = []

    def stand_in(*args, **kw):
        seen.append(torch.device(kw["device"] if "device" in kw else args[-1]))
        raise _WorkStarted

    monkeypatch.setattr(importlib.import_module(module), name, stand_in)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the studies pin one thread: not this process
    return [a.format(tmp=tmp_path) for a in argv], seen


def _run_script(script: str, argv: list[str]) -> None:
    with pytest.raises(_WorkStarted):
        importlib.import_module(script).main(argv)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_script_takes_device(script, monkeypatch, tmp_path, capsys):
    argv, seen = _stub_work(monkeypatch, script, tmp_path)
    _run_script(script, argv)
    assert seen == [torch.device("cpu")]  # the default
    _fake_gpus(monkeypatch, 2)
    for name in ("cpu", "cuda", "cuda:1"):
        if script == "benchmarks.fault_injection" and name == "cuda:1":  # meta-trains: no GPU index, as `train`
            with pytest.raises(SystemExit) as info:
                importlib.import_module(script).main(argv + ["--device", name])
            assert info.value.code == 2 and "CUDA_VISIBLE_DEVICES=1" in capsys.readouterr().err
            continue
        _run_script(script, argv + ["--device", name])
        assert seen[-1] == torch.device(name)
    with pytest.raises(SystemExit) as info:
        importlib.import_module(script).main(argv + ["--device", "tpu"])
    assert info.value.code == 2 and "use cpu, cuda or cuda:N" in capsys.readouterr().err
    assert len(seen) == 4 - (script == "benchmarks.fault_injection")  # the bad devices started nothing


@no_gpu
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_scripts_refuse_cuda_without_a_gpu(script, monkeypatch, tmp_path, capsys):
    argv, seen = _stub_work(monkeypatch, script, tmp_path)
    with pytest.raises(SystemExit) as info:
        importlib.import_module(script).main(argv + ["--device", "cuda"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and seen == []  # stopped before any work
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no usable CUDA GPU" in err and "--device cpu" in err


def test_benchmarks_keep_the_cpu_tables(monkeypatch, tmp_path):
    """A GPU run writes ``<name>_cuda.*`` beside the committed CPU tables, and each record says its device."""
    from benchmarks import fault_injection, graph

    monkeypatch.setattr(graph, "bench", lambda task, repeats, device: {
        "task": task.name, "ratio": 0.5, "device": str(device)})
    monkeypatch.setattr(fault_injection, "run_one", lambda estimator, *args: {
        "estimator": estimator, "metrics_bit_identical": True, "weights_bit_identical": True, "device": args[-1],
        "cuda": None})
    for name, suffix in (("cpu", ""), ("cuda", "_cuda")):
        out = tmp_path / name
        if name == "cuda":
            _fake_gpus(monkeypatch, 1)
        graph.main(["--out", str(out), "--device", name])
        fault_injection.main(["--out", str(out), "--device", name, "--estimators", "greedy"])
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{stem}{suffix}.{ext}" for stem, ext in (("graph", "json"), ("fault_injection", "json"),
                                                      ("fault_injection", "md")))
        assert (f"--device {name}" in (out / f"fault_injection{suffix}.md").read_text()) == (name != "cpu")


def test_fault_injection_meta_trains_on_the_device():
    from benchmarks.fault_injection import _cmd

    for name in ("cpu", "cuda"):
        cmd = _cmd(Path("runs/x"), 3, "window", True, name)
        assert cmd[1:4] == ["-m", "meta_train", "train"]
        args = cli.build_parser().parse_args(cmd[3:])
        cli._start_train(args, [])
        assert args.device == name and args.overrides[-1] == f"run.device='{name}'"


def _tiny_task(seen: set[str] | None = None):
    """A CNN of 4 and 4 channels on 64 synthetic 8x8 images (no data files); its loss notes where the logits were."""
    from tasks.data import ImageDataset
    from tasks.registry import conv_task

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=64)
    images = np.clip(labels[:, None, None, None] * 25 + rng.integers(0, 40, size=(64, 1, 8, 8)), 0, 255)
    data = ImageDataset(torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64)),
                        (0.5,), (0.25,))
    task = conv_task("fashion-mnist", (4, 4), batch_size=8)
    task.data = lambda split="train", root=None: data
    if seen is not None:
        task.loss = lambda logits, y: (seen.add(logits.device.type), F.cross_entropy(logits, y))[1]
    return task


def test_gradient_noise_rule_on_the_device(device, monkeypatch):
    import experiments.gradient_noise_rule as gnr

    monkeypatch.setattr(gnr, "READ_AT", (3, 5))
    monkeypatch.setattr(gnr, "WINDOW", 2)
    seen = set()
    row = gnr.measure(_tiny_task(seen), 8, "0.1", device=device)
    assert seen == {device.type}
    assert all(math.isfinite(row[k][5]) for k in ("per_weight", "tensor_level", "cos_prev", "train_loss"))
    assert row.get("device") == (None if device.type == "cpu" else str(device))  # CPU rows as before


def test_hand_designed_adam_on_the_device(device):
    import experiments.hand_designed_adam as hda

    seen = set()
    task = _tiny_task(seen)
    accs = [hda.relative_run(task, 0.1, live=True, steps=3, device=device),
            hda.adam_schedule_run(task, 1e-2, "wcos", 1000, steps=3, device=device),
            hda.adam_layers_run(task, "lr=1e-2,in=3e-2", steps=3, device=device),
            hda.adam_functional(task, 1e-2, steps=3, device=device)]
    assert seen == {device.type} and all(0.0 <= a <= 1.0 for a in accs)


def test_meta_gradient_probe_on_the_device(device, monkeypatch):
    import experiments.meta_gradient_probe as mgp

    monkeypatch.setattr(mgp, "WARM", 2)
    seen = set()
    opt = mgp.optimizer(device)
    t, p, s = mgp.start(opt, _tiny_task(seen), device)
    assert p.device.type == device.type and all(q.device.type == device.type for q in opt.parameters())
    values = [mgp.derivative(opt, t, p, s, 2, mode, 0.98) for mode in ("fd", "fd-val", "first-credit", "first",
                                                                        "second")]
    assert seen == {device.type} and all(math.isfinite(v) for v in values)


def test_effective_rates_of_the_untrained_optimizer_on_the_device(device, monkeypatch, tmp_path):
    import experiments.dng_discount as dd
    from experiments.untrained_optimizer import write_untrained

    path = write_untrained(tmp_path / "untrained.pt", device)
    cpu = torch.load(write_untrained(tmp_path / "cpu.pt"), weights_only=True)["state_dict"]
    weights = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.device.type == "cpu" and torch.equal(v, cpu[k]) for k, v in weights.items())  # the same file
    seen = set()
    monkeypatch.setattr(dd, "TASKS", [("fashion-mnist", (4, 4), 2, 8)])
    monkeypatch.setattr(dd, "conv_task", lambda *args, **kw: _tiny_task(seen))
    rows = dd.effective_rates([str(path)], steps=3, device=device)
    assert seen == {device.type} and len(rows) == 1
    assert all(math.isfinite(rows[0][c]) for c in dd.CATS if c in rows[0])
    assert rows[0].get("device") == (None if device.type == "cpu" else str(device))


def test_graph_benchmark_on_the_device(device):
    from benchmarks.graph import bench
    from tasks.registry import conv_task

    rec = bench(conv_task("fashion-mnist", (4, 4), batch_size=8), repeats=1, device=device)
    assert rec["device"] == str(device) and rec["num_edges"] > 0
    assert all(math.isfinite(rec[k]) and rec[k] > 0 for k in ("build_ms", "scatter_gather_ms", "fwd_bwd_ms"))
