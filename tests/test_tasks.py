"""Optimizee networks, the task registry and task families; no real data needed."""
from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasks import (
    MLP,
    ConvNet,
    ImageDataset,
    Task,
    TaskFamily,
    channels_for,
    conv_task,
    fmnist_family,
    get_task,
    list_tasks,
    mlp_task,
    register_task,
)

EXPECTED_TASKS = {
    "fmnist-conv", "cifar10-conv", "cifar10-conv-w16", "cifar10-conv-w32", "cifar10-conv-w64", "cifar10-conv-w128",
    "cifar10-conv-d1", "cifar10-conv-d2", "cifar10-conv-d3", "cifar10-conv-d4", "cifar10-conv-d5",
    "mnist-mlp", "fmnist-mlp",
}


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------------------------------
# Registry


def test_default_tasks_are_registered():
    assert EXPECTED_TASKS <= set(list_tasks())


@pytest.mark.parametrize("name", sorted(EXPECTED_TASKS))
def test_every_task_builds_and_runs(name):
    task = get_task(name)
    model = task.make_model(0)
    x = torch.randn(4, *task.input_shape)
    assert model(x).shape == (4, 10)
    assert task.batch_size == 128 and task.description


def test_same_seed_same_weights_and_global_rng_untouched():
    task = get_task("cifar10-conv")
    state = torch.get_rng_state()
    a, b, c = task.make_model(5), task.make_model(5), task.make_model(6)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name


def test_fmnist_conv_matches_the_reference_architecture():
    """Kofinas et al. (ICLR 2024), section 5: conv 1->16 (3x3, stride 2), ReLU, conv 16->32, ReLU, conv 32->32, ReLU, GAP, 32->10."""
    model = get_task("fmnist-conv").make_model(0)
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU,
                                        nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert param_shapes(model) == {
        "0.weight": (16, 1, 3, 3), "0.bias": (16,),
        "2.weight": (32, 16, 3, 3), "2.bias": (32,),
        "4.weight": (32, 32, 3, 3), "4.bias": (32,),
        "8.weight": (10, 32), "8.bias": (10,),
    }
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.padding == (1, 1) for c in convs)
    assert get_task("fmnist-conv").input_shape == (1, 28, 28) and get_task("fmnist-conv").dataset == "fashion-mnist"


def test_cifar_sweeps_share_the_reference_layout():
    reference = param_shapes(get_task("cifar10-conv").make_model(0))
    assert reference["0.weight"] == (32, 3, 3, 3) and reference["2.weight"] == (64, 32, 3, 3)
    assert reference["4.weight"] == (64, 64, 3, 3) and reference["8.weight"] == (10, 64)
    assert param_shapes(get_task("cifar10-conv-w32").make_model(0)) == reference
    assert param_shapes(get_task("cifar10-conv-d3").make_model(0)) == reference
    assert get_task("cifar10-conv-w128").make_model(0).channels == (128, 256, 256)
    assert [get_task(f"cifar10-conv-d{d}").make_model(0).channels for d in (1, 5)] == [(32,), (32, 64, 64, 64, 64)]


def test_mlp_tasks():
    model = get_task("mnist-mlp").make_model(0)
    assert param_shapes(model) == {"1.weight": (100, 784), "1.bias": (100,), "3.weight": (100, 100),
                                   "3.bias": (100,), "5.weight": (10, 100), "5.bias": (10,)}
    assert get_task("fmnist-mlp").dataset == "fashion-mnist"


def test_models_are_fx_traceable():
    traced = torch.fx.symbolic_trace(get_task("fmnist-conv").make_model(0))
    targets = [node.target for node in traced.graph.nodes if node.op == "call_module"]
    assert targets == [str(i) for i in range(9)]


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(KeyError, match="fmnist-conv"):
        get_task("imagenet-resnet")


def test_programmatic_tasks_and_registration():
    task = conv_task("fashion-mnist", [8, 16])
    assert task.name == "fmnist-conv-8-16" and task.input_shape == (1, 28, 28)
    assert mlp_task("cifar10", [50]).name == "cifar10-mlp-50"
    assert mlp_task("cifar10", [50]).make_model(0)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="already registered"):
        register_task(conv_task("fashion-mnist", [8], name="fmnist-conv"))
    custom = register_task(conv_task("mnist", [4], name="test-only-mnist-conv-4"))
    assert get_task("test-only-mnist-conv-4") is custom


def test_tasks_pickle():
    """Tasks cross process boundaries (one task stream per process)."""
    task = pickle.loads(pickle.dumps(get_task("fmnist-conv")))
    assert param_shapes(task.make_model(0)) == param_shapes(get_task("fmnist-conv").make_model(0))


def test_model_constructor_validation():
    with pytest.raises(ValueError):
        ConvNet(3, [])
    with pytest.raises(ValueError, match="activation"):
        MLP(4, [3], activation="swishy")
    assert MLP(12, []).forward(torch.randn(2, 3, 2, 2)).shape == (2, 10)
    assert isinstance(ConvNet(1, [4], activation="tanh")[1], nn.Tanh)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation and batches on a synthetic data set


def tiny_dataset(n: int = 37) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return ImageDataset(images, labels, (0.2860,), (0.3530,), 10, "tiny")


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_on_a_synthetic_data_set(training):
    task, data = get_task("fmnist-conv"), tiny_dataset()
    model = task.make_model(0)
    x = (data.images.float() / 255 - 0.2860) / 0.3530
    with torch.no_grad():
        logits = model(x)
    # Relabel so that exactly the first 20 of 37 predictions are right: a known accuracy.
    predicted = logits.argmax(1)
    data.labels = torch.cat([predicted[:20], (predicted[20:] + 1) % 10])
    model.train(training)
    result = task.evaluate(model, batch_size=10, data=data)  # 37 examples: a short last batch
    assert model.training == training
    assert all(p.grad is None for p in model.parameters())
    assert result["acc"] == 20 / 37
    assert math.isclose(result["loss"], F.cross_entropy(logits, data.labels).item(), rel_tol=1e-5)


def test_task_batches_from_an_explicit_data_set():
    task, data = get_task("fmnist-conv"), tiny_dataset()
    stream = task.batches(batch_size=16, seed=1, data=data)
    x, y = stream.batch(0)
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,)
    assert task.loss(task.make_model(0)(x), y).dim() == 0
    assert task.batches(seed=1, data=data).batch_size == 128


# ----------------------------------------------------------------------------------------------------------------
# Task families


def sample_names(family: TaskFamily, seed: int, k: int = 20) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    return [family.sample(generator).name for _ in range(k)]


def test_family_sampling_is_deterministic_in_the_generator():
    family = fmnist_family()
    state = torch.get_rng_state()
    assert sample_names(family, 0) == sample_names(family, 0)
    assert sample_names(family, 0) != sample_names(family, 1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never read


def test_family_resumes_from_the_generator_state():
    family = fmnist_family()
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        family.sample(generator)
    saved = generator.get_state()
    ahead = [family.sample(generator).name for _ in range(5)]
    generator.set_state(saved)
    assert [family.sample(generator).name for _ in range(5)] == ahead


def test_fmnist_family_space():
    family = fmnist_family()
    allowed = {channels_for((16, 32, 32), d, w) for d in (2, 3, 4) for w in (0.5, 0.75, 1, 1.5, 2)}
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        task = family.sample(generator)
        channels = task.make_model(0).channels
        assert channels in allowed and task.dataset == "fashion-mnist" and task.input_shape == (1, 28, 28)
        seen.add(channels)
    assert len(seen) == len(allowed)  # 15 configurations, 200 draws: all of them show up
    assert (16, 32, 32) in seen and channels_for((16, 32, 32), 4, 0.5) == (8, 16, 16, 16)


def test_family_ranges_and_datasets():
    family = TaskFamily(datasets=("fashion-mnist", "cifar10"), base_channels=(8,), width_range=(1.0, 4.0),
                        depths=[1, 3])
    generator = torch.Generator().manual_seed(0)
    tasks = [family.sample(generator) for _ in range(50)]
    assert {t.dataset for t in tasks} == {"fashion-mnist", "cifar10"}
    for task in tasks:
        channels = task.make_model(0).channels
        assert len(channels) in (1, 3) and all(8 <= c <= 32 for c in channels)
        assert len(set(channels)) == 1  # base (8,) extended by repetition
    with pytest.raises(ValueError, match="at most one"):
        TaskFamily(widths=(1.0,), width_range=(1.0, 2.0))
    with pytest.raises(KeyError):
        TaskFamily(datasets=("svhn",))


def test_sampled_task_type():
    assert isinstance(fmnist_family().sample(torch.Generator().manual_seed(0)), Task)


def test_family_batch_sizes():
    fixed, mixed = TaskFamily(batch_size=64), TaskFamily(batch_sizes=[16, 32, 128])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = [fixed.sample(g1) for _ in range(40)]
    b = [mixed.sample(g2) for _ in range(40)]
    assert {t.batch_size for t in a} == {64} and {t.batch_size for t in b} == {16, 32, 128}
    # Same draws either way: the architecture sequence does not depend on the batch-size option.
    assert [t.make_model(0).channels for t in a] == [t.make_model(0).channels for t in b]
    with pytest.raises(ValueError, match="batch_sizes"):
        TaskFamily(batch_sizes=[])
    with pytest.raises(ValueError, match="batch_sizes"):
        TaskFamily(batch_sizes=[0, 16])


# ---------------------------------------------------------------------------------------------- the task protocol
def test_every_task_and_family_satisfies_the_protocol():
    from tasks import RegressionFamily, RegressionTask, TaskFamilyProtocol, TaskProtocol

    for task in (get_task("fmnist-conv"), get_task("mnist-mlp"), RegressionTask(4, 3)):
        assert isinstance(task, TaskProtocol)
    for family in (fmnist_family(), RegressionFamily((4,))):
        assert isinstance(family, TaskFamilyProtocol)
        assert isinstance(family.sample(torch.Generator().manual_seed(0)), TaskProtocol)


def test_tasks_rebuild_from_their_plain_data_specs():
    from tasks import RegressionTask, task_from_spec

    g = torch.Generator().manual_seed(3)
    tasks = [get_task("cifar10-conv"), get_task("fmnist-mlp"), mlp_task("mnist", [7], activation="tanh", batch_size=9),
             RegressionTask(8, 11, 16)] + [TaskFamily(batch_sizes=[16, 64]).sample(g) for _ in range(4)]
    for task in tasks:
        spec = task.to_spec()
        assert pickle.loads(pickle.dumps(spec)) == spec and all(  # plain data only: names, numbers, lists
            isinstance(v, (str, int, float, list)) for v in spec.values())
        rebuilt = task_from_spec(spec)
        assert type(rebuilt) is type(task) and rebuilt.to_spec() == spec and rebuilt.name == task.name
        assert param_shapes(rebuilt.make_model(0)) == param_shapes(task.make_model(0))
        pairs = zip(rebuilt.make_model(5).parameters(), task.make_model(5).parameters())
        assert all(torch.equal(a, b) for a, b in pairs)
    assert get_task("cifar10-conv").to_spec() == {"kind": "ConvNet", "name": "cifar10-conv", "dataset": "cifar10",
                                                  "batch_size": 128, "widths": [32, 64, 64], "activation": "relu"}


def test_a_task_without_a_known_architecture_cannot_be_written_as_a_spec():
    from tasks import task_from_spec

    custom = Task("custom", "cifar10", lambda: nn.Linear(3, 2), (3, 32, 32))
    with pytest.raises(ValueError, match="conv_task or tasks.mlp_task"):
        custom.to_spec()
    with pytest.raises(ValueError, match="unknown kind 'ResNet'"):
        task_from_spec({"kind": "ResNet", "name": "x"})


def test_resnet_task_is_registered_round_trips_and_refuses_other_activations():
    import pytest

    from tasks import Task, get_task, resnet_task

    task = get_task("fmnist-resnet18-w16")
    assert Task.from_spec(task.to_spec()).to_spec() == task.to_spec()
    model = task.make_model(seed=0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="ReLU only"):
        resnet_task("cifar10", 16, activation="tanh")
