"""The vectorised task pool (``TaskPool(vectorize=True)``, config ``meta.vectorize``): the optimizee losses and
gradients of tasks sharing an architecture come from one ``torch.func.vmap`` call, and everything the pool reports or
keeps (losses, gradients, new parameters, meta-losses, blow-ups, resets, checkpoints, meta-gradients) matches the
per-task loop to float rounding.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from pathlib import Path

import pytest
import torch
from torch import nn

import meta_train.unroll as unroll
from conftest import needs_data
from l2o.optim import OptimizerConfig, build_optimizer
from meta_train.config import ConfigError, MetaConfig, load_config
from meta_train.estimators import build_estimator
from meta_train.run_files import RESUMABLE_CHANGES
from meta_train.unroll import Advance, TaskPool, vmap_key
from tasks import TaskFamily
from tasks.regression import RegressionFamily, RegressionStream, RegressionTask

# vmap may sum in another order than the per-task kernels: float32 results agree to a few ulps of their scale. NaN
# equals NaN here: a blown-up meta-loss is reported as it was computed, and the flags are compared separately.
TOL = dict(rtol=1e-4, atol=1e-5, equal_nan=True)


def _learned(device="cpu", family="ff", **kw):
    torch.manual_seed(0)
    extra = dict(hidden=8, depth=1, head_hidden=8, kmax=5) if family in ("ng-gnn", "dng") else {}
    cfg = OptimizerConfig(family=family, **({"adam_residual": True, "adam_scale": 1.0} if family == "ff" else {}),
                          **extra, **kw)
    return build_optimizer(cfg).to(device)


def _pools(sample, learned, n=3, horizon=5, device="cpu", **kw) -> tuple[TaskPool, TaskPool]:
    """The same tasks twice: vectorised and looped."""
    return tuple(TaskPool(sample, learned, list(range(n)), horizon, 0, seed=0, device=device, vectorize=v, **kw)
                 for v in (True, False))


def _conv_family() -> TaskFamily:
    """Tiny Fashion-MNIST CNNs of two widths (channels (2, 4) and (4, 8)): mixed architectures on real data."""
    return TaskFamily(base_channels=(2, 4), widths=(1.0, 2.0), depths=(2,), batch_size=16)


def _close_pair(a, b) -> None:
    if a is None or b is None:
        assert a is None and b is None
        return
    torch.testing.assert_close(a[0], b[0], **TOL)
    torch.testing.assert_close(a[1], b[1], **TOL)


def _same_advance(a: Advance, b: Advance) -> None:
    assert a.steps == b.steps and a.bad == b.bad and a.finished == b.finished
    assert [c.names for c in a.contexts] == [c.names for c in b.contexts]
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses), **TOL)
    for field in ("params", "grads", "new_params"):
        for x, y in zip(getattr(a, field), getattr(b, field)):
            torch.testing.assert_close(x, y, **TOL)
    for x, y in zip(a.states, b.states):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], **TOL)
    for x, y in zip(a.meta, b.meta):
        _close_pair(x, y)


def _same_pool(p: TaskPool, q: TaskPool) -> None:
    assert p.resets == q.resets
    for s, t in zip(p.tasks, q.tasks):
        assert (s.step, s.horizon, s.seed, s.task.to_spec()) == (t.step, t.horizon, t.seed, t.task.to_spec())
        torch.testing.assert_close(s.params, t.params, **TOL)
        _close_pair(s.pending, t.pending)


@pytest.fixture
def vmap_calls(monkeypatch) -> list[int]:
    """The group sizes K of every vmapped call the pool makes."""
    calls = []
    original = unroll.batched_loss_and_grad

    def spy(model, ctx, loss_fn, params, x, y):
        calls.append(params.shape[0])
        return original(model, ctx, loss_fn, params, x, y)

    monkeypatch.setattr(unroll, "batched_loss_and_grad", spy)
    return calls


# ---------------------------------------------------------------------------------------------- the same results
@pytest.mark.parametrize("meta_loss", ["train", "same", "fresh"])
def test_advance_matches_the_loop(device, meta_loss, vmap_calls):
    learned = _learned(device)
    fast, slow = _pools(RegressionFamily((4,)).sample, learned, n=3, horizon=4, device=device)
    for _ in range(6):  # across resets (horizon 4, staggered first horizons)
        a = fast.advance(learned.update, meta_loss=meta_loss, keep_graph=True)
        b = slow.advance(learned.update, meta_loss=meta_loss, keep_graph=True)
        _same_advance(a, b)
        assert all(p.requires_grad for p in a.new_params)  # the update's graph is kept as in the loop
        assert all(m is None or not m[1].requires_grad for m in a.meta)  # first order: constant inner gradients
        _same_pool(fast, slow)
        fast.detach(), slow.detach()
    assert fast.resets > 0 and vmap_calls and max(vmap_calls) == 3


@needs_data
def test_conv_tasks_of_two_widths_group_by_architecture(vmap_calls):
    """Real data, conv layers, a graph optimizer: each architecture's tasks form one vmapped group."""
    learned = _learned(family="ng-gnn")
    fast, slow = _pools(_conv_family().sample, learned, n=5, horizon=1000)
    widths = [tuple(t.task.to_spec()["widths"]) for t in fast.tasks]
    counts = [widths.count(w) for w in set(widths)]
    assert len(counts) == 2 and max(counts) >= 2, widths  # mixed, and at least one group to vectorise
    _same_advance(fast.advance(learned.update), slow.advance(learned.update))
    groups = [c for c in counts if c > 1]
    assert sorted(vmap_calls) == sorted(groups * 2)  # the inner losses, then the meta-losses: one call per group
    _same_advance(fast.advance(learned.update), slow.advance(learned.update))
    _same_pool(fast, slow)


def test_regression_dims_group_by_architecture():
    learned = _learned()
    pool = TaskPool(RegressionFamily((4, 8)).sample, learned, list(range(6)), 10, 0, seed=0)
    jobs = [(i, t.params, t.step, False) for i, t in enumerate(pool.tasks)]
    groups = pool._vmap_groups(jobs)
    dims = [[pool.tasks[job[0]].task.dim for job, _ in g] for g in groups]
    assert sorted(d[0] for d in dims) == [4, 8] and all(len(set(d)) == 1 for d in dims)
    assert sorted(job[0] for g in groups for job, _ in g) == list(range(6))


def test_greedy_meta_gradient_matches_the_loop(device):
    cfg = MetaConfig(estimator="greedy", truncation=4, horizon=6, log_loss=True)
    learned = _learned(device)
    fast, slow = _pools(RegressionFamily((4, 8)).sample, learned, n=4, horizon=6, device=device)
    estimator = build_estimator(cfg, learned)
    for _ in range(2):
        a, b = estimator.step(fast), estimator.step(slow)
        assert a.grads.keys() == b.grads.keys() and a.grads
        for k in a.grads:
            torch.testing.assert_close(a.grads[k], b.grads[k], **TOL)
        assert a.stats["blowups"] == b.stats["blowups"] and a.stats["inner_steps"] == b.stats["inner_steps"]
        assert a.stats["meta_loss"] == pytest.approx(b.stats["meta_loss"], rel=1e-5)
    _same_pool(fast, slow)


def test_second_order_takes_the_loop(vmap_calls):
    learned = _learned()
    fast, slow = _pools(RegressionFamily((4,)).sample, learned, n=3)
    a = fast.advance(learned.update, create_graph=True, keep_graph=True)
    b = slow.advance(learned.update, create_graph=True, keep_graph=True)
    assert vmap_calls == []
    _same_advance(a, b)
    assert all(m[0].requires_grad for m in a.meta)


# ---------------------------------------------------------------------------------------------- blow-ups
@dataclass(frozen=True)
class _NaNStream:
    """A stream whose inputs are NaN from ``start`` on: the task's loss blows up there."""

    inner: RegressionStream
    start: int = 0

    def batch(self, step: int):
        x, y = self.inner.batch(step)
        return (x * float("nan"), y) if step >= self.start else (x, y)


@pytest.mark.parametrize("start", [0, 1])  # the inner loss blows up, or the meta-loss at the new parameters
def test_a_nan_task_is_bad_alone(device, start):
    learned = _learned(device)
    fast, slow = _pools(RegressionFamily((4,)).sample, learned, n=3, horizon=20, device=device)
    clean, _ = _pools(RegressionFamily((4,)).sample, learned, n=3, horizon=20, device=device)
    for pool in (fast, slow):
        pool.tasks[1].stream = _NaNStream(pool.tasks[1].stream, start)
    a, b, c = (p.advance(learned.update) for p in (fast, slow, clean))
    _same_advance(a, b)
    assert a.bad == [False, True, False] and a.finished == [False, True, False] and fast.resets == 1
    assert (a.meta[1] is None) == (start == 0)
    for i in (0, 2):  # the other tasks see what they see without the NaN task
        assert a.losses[i] == pytest.approx(c.losses[i], rel=1e-6)
        torch.testing.assert_close(a.new_params[i], c.new_params[i], **TOL)
        _close_pair(a.meta[i], c.meta[i])
        assert torch.isfinite(fast.tasks[i].pending[1]).all()
    assert fast.tasks[1].step == 0 and fast.tasks[1].pending is None  # the replacement starts fresh


def test_loss_clip_flags_the_same_tasks():
    learned = _learned()
    fast, slow = _pools(RegressionFamily((4, 8, 16)).sample, learned, n=5, horizon=20)
    losses = [float(t.loss_and_grad(t.params, t.step)[0]) for t in fast.tasks]
    clip = sorted(losses)[2]  # about half the tasks are above it
    a, b = fast.advance(learned.update, loss_clip=clip), slow.advance(learned.update, loss_clip=clip)
    _same_advance(a, b)
    assert 0 < sum(a.bad) < 5


@pytest.mark.parametrize("start", [0, 1])
def test_advance_reads_values_to_the_host_once_per_check_for_all_tasks(monkeypatch, start):
    """On a GPU every float() / bool() of a tensor is a synchronisation: one inner step of K tasks reads the inner
    losses and gradient flags, the new parameters' flags and the meta-losses in three host copies, whatever K is,
    and the meta-losses it reports are those values (NaN where not evaluated), also with a blown-up task."""
    learned = _learned()
    pool = TaskPool(RegressionFamily((4, 8)).sample, learned, list(range(5)), 20, 0, seed=0)
    pool.tasks[2].stream = _NaNStream(pool.tasks[2].stream, start)
    pool.advance(learned.update)  # tasks now hold their pending (meta_loss="train") inner losses
    calls = []
    real = unroll.host_checks
    monkeypatch.setattr(unroll, "host_checks", lambda *a: calls.append(a) or real(*a))
    for name in ("__float__", "__bool__", "item"):
        monkeypatch.setattr(torch.Tensor, name, lambda *a: pytest.fail("a per-task host read in advance()"))
    a = pool.advance(learned.update, meta_loss="same", finite_meta_grad=True)
    monkeypatch.undo()
    assert len(calls) == 3
    for i, m in enumerate(a.meta):
        if m is None:
            assert math.isnan(a.meta_values[i])
        else:
            assert a.meta_values[i] == float(m[0])


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_format_is_unchanged_and_loads_across_modes():
    learned = _learned()
    fast, slow = _pools(RegressionFamily((4, 8)).sample, learned, n=4, horizon=5)
    for _ in range(3):
        fast.advance(learned.update), slow.advance(learned.update)
    sd_fast, sd_slow = fast.state_dict(), slow.state_dict()
    assert sd_fast.keys() == sd_slow.keys() and len(sd_fast["tasks"]) == len(sd_slow["tasks"])
    for x, y in zip(sd_fast["tasks"], sd_slow["tasks"]):
        assert x.keys() == y.keys() and x["state"].keys() == y["state"].keys()
        assert (x["pending"] is None) == (y["pending"] is None)
        assert x["params"].shape == y["params"].shape and not x["params"].requires_grad
    # a vectorised run's checkpoint resumes in the loop and vice versa, continuing alike
    twin_slow = TaskPool(RegressionFamily((4, 8)).sample, learned, list(range(4)), 5, 0, seed=0, vectorize=False)
    twin_fast = TaskPool(RegressionFamily((4, 8)).sample, learned, list(range(4)), 5, 0, seed=0, vectorize=True)
    twin_slow.load_state_dict(copy.deepcopy(sd_fast))
    twin_fast.load_state_dict(copy.deepcopy(sd_slow))
    for _ in range(3):
        _same_advance(fast.advance(learned.update), twin_slow.advance(learned.update))
        _same_advance(slow.advance(learned.update), twin_fast.advance(learned.update))


# ---------------------------------------------------------------------------------------------- what is vmapped
class _BatchNormTask(RegressionTask):
    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(self.dim, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


class _DropoutTask(RegressionTask):
    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(self.dim, 4), nn.Dropout(0.5), nn.Linear(4, 1))


class _TanhTask(RegressionTask):
    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Sequential(nn.Linear(self.dim, 4), nn.Tanh(), nn.Linear(4, 1))


class _ReluTask(_TanhTask):
    def make_model(self, seed: int) -> nn.Module:
        model = super().make_model(seed)
        model[1] = nn.ReLU()
        return model


def test_vmap_keys():
    learned = _learned()
    pool = TaskPool(lambda g: RegressionTask(4, 0), learned, [0], 10, 0, seed=0)

    def key(task):
        model = task.make_model(0)
        return vmap_key(task, model, pool._context(task, model))

    assert key(_BatchNormTask(4, 0)) is None and key(_DropoutTask(4, 0)) is None  # the loop (see vmap_key)
    assert key(RegressionTask(4, 0)) == key(RegressionTask(4, 1)) is not None  # other data, same structure
    assert key(RegressionTask(4, 0)) != key(RegressionTask(8, 0))
    tanh, relu = _TanhTask(4, 0), _ReluTask(4, 0)  # same parameter shapes, so the same ctx, but other networks
    assert pool._context(tanh, tanh.make_model(0)) is pool._context(relu, relu.make_model(0))
    assert key(tanh) != key(relu)


def test_models_with_buffers_take_the_loop(vmap_calls):
    learned = _learned()
    fast, slow = _pools(lambda g: _BatchNormTask(4, int(torch.randint(100, (1,), generator=g))), learned, n=3)
    for _ in range(2):
        _same_advance(fast.advance(learned.update), slow.advance(learned.update))
    assert vmap_calls == []


def test_mixed_structures_with_one_ctx_are_not_vmapped_together(vmap_calls):
    learned = _learned()

    def sample(g):
        kind = _TanhTask if float(torch.rand((), generator=g)) < 0.5 else _ReluTask
        return kind(4, int(torch.randint(100, (1,), generator=g)))

    fast, slow = _pools(sample, learned, n=6, horizon=50)
    kinds = [type(t.task) for t in fast.tasks]
    _same_advance(fast.advance(learned.update), slow.advance(learned.update))
    assert sorted(vmap_calls) == sorted(2 * [kinds.count(k) for k in set(kinds) if kinds.count(k) > 1])


# ---------------------------------------------------------------------------------------------- the config switch
def test_config_switch():
    assert MetaConfig().vectorize == "auto"  # vmap on CUDA, the loop on the CPU (where it measured slower)
    assert load_config(None, ["meta.vectorize=false"]).meta.vectorize is False
    assert load_config(None, ["meta.vectorize=true"]).meta.vectorize is True
    for bad in ("meta.vectorize=1", "meta.vectorize='yes'"):
        with pytest.raises(ConfigError, match="meta.vectorize"):
            load_config(None, [bad])
    assert ("meta", "vectorize") in RESUMABLE_CHANGES


def test_auto_takes_the_loop_on_the_cpu(tmp_path, monkeypatch):
    from meta_train import train as train_module

    seen = []
    real = train_module.TaskPool

    def spy(*args, **kwargs):
        seen.append(kwargs["vectorize"])
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "TaskPool", spy)
    cfg = load_config(Path(__file__).resolve().parents[1] / "meta_train" / "configs" / "regression.toml",
                      [f"run.out_dir='{tmp_path / 'run'}'", "meta.outer_steps=1", "run.device='cpu'"])
    train_module.train(cfg)
    assert seen == [False]
