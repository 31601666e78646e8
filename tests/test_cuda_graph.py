"""The optimizer step recorded as a CUDA graph (``NeuralGraphOptimizer(cuda_graph=...)``): the same parameters and
state as the eager step, step after step, through learning-rate changes and rejected steps; an update that cannot be
recorded runs eagerly. The CUDA cases skip without a GPU; the argument checks run everywhere."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2o import NeuralGraphOptimizer
from l2o.optim import OptimizerConfig, build_optimizer
from l2o.optim.cuda_graph import CapturedUpdate
from model_zoo import mixed_kernel_cnn

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SMALL = dict(hidden=8, depth=1, head_hidden=8, kmax=5)


# the shipped default's recipe, small: the reference rule in relative steps per category, capped, rates adapted upward
DEFAULT_RECIPE = dict(inputs="reference", step_rule="mlp", relative=True, category_rates=True, rate_cap=1.0,
                      rate_adapt=0.03, rate_adapt_min=1.0)


def _learned(family: str, **kw):
    torch.manual_seed(0)
    extra = SMALL if family in ("ng-gnn", "dng") else dict(head_hidden=8)
    return build_optimizer(OptimizerConfig(family=family, **{**extra, **kw}))


def _batch(device, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 6, 6, generator=g).to(device), torch.randint(0, 3, (8,), generator=g).to(device)


def _train(opt, model, steps: int, lrs=None, device="cuda"):
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        x, y = _batch(device, t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@needs_cuda
@pytest.mark.parametrize("family, kw", [("ng-gnn", {}), ("dng", {}), ("ff", {}), ("ng-gnn", DEFAULT_RECIPE)],
                         ids=["ng-gnn", "dng", "ff", "default-recipe"])
def test_graphed_steps_match_eager(family, kw):
    runs = []
    for graphed in (True, False):
        model = mixed_kernel_cnn(0).cuda()
        opt = NeuralGraphOptimizer(model, optimizer=_learned(family, **kw).cuda(), cuda_graph=graphed)
        _train(opt, model, 6, lrs=[1.0, 1.0, 0.5, 0.5, 2.0, 1.0])  # a scheduler's changes reach the replay
        runs.append((model, opt))
    (m_graph, o_graph), (m_eager, o_eager) = runs
    assert o_graph._captured is not None and o_eager._captured is None
    for a, b in zip(m_graph.parameters(), m_eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_graph, p_eager in zip(m_graph.parameters(), m_eager.parameters()):
        for k, v in o_eager.state[p_eager].items():
            torch.testing.assert_close(o_graph.state[p_graph][k], v, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_the_packaged_default_is_recorded_and_matches_eager():
    """``NeuralGraphOptimizer(model)`` as a user calls it: the packaged default (rates adapted online) is recorded
    as a CUDA graph and its replays give the eager steps, adapted rates included."""
    runs = []
    for graphed in (True, False):
        model = mixed_kernel_cnn(0).cuda()
        opt = NeuralGraphOptimizer(model, cuda_graph=graphed)
        _train(opt, model, 6)
        runs.append((model, opt))
    (m_graph, o_graph), (m_eager, o_eager) = runs
    assert o_graph._captured is not None
    for p_graph, p_eager in zip(m_graph.parameters(), m_eager.parameters()):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-5, atol=1e-6)
        for k, v in o_eager.state[p_eager].items():
            torch.testing.assert_close(o_graph.state[p_graph][k], v, rtol=1e-5, atol=1e-6)
    assert any(bool((o_graph.state[p]["log_rate"] != 0).any()) for p in m_graph.parameters())


@needs_cuda
def test_a_rejected_replay_leaves_parameters_and_state_unchanged():
    model = mixed_kernel_cnn(0).cuda()
    opt = NeuralGraphOptimizer(model, optimizer=_learned("ng-gnn").cuda(), cuda_graph=True)
    _train(opt, model, 3)
    assert opt._captured is not None
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(FloatingPointError):
        opt.step()
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p, before)
        for k, v in state[id(p)].items():
            assert torch.equal(opt.state[p][k], v), k


@needs_cuda
def test_an_update_that_syncs_with_the_host_runs_eagerly_with_a_warning():
    # the reference "LSTM" reads the number of tasks and tensors from the device (int(tensor.max()))
    models = [mixed_kernel_cnn(0).cuda() for _ in range(2)]
    opts = [NeuralGraphOptimizer(models[0], optimizer=_learned("tensor-lstm").cuda(), cuda_graph=True),
            NeuralGraphOptimizer(models[1], optimizer=_learned("tensor-lstm").cuda(), cuda_graph=False)]
    _train(opts[1], models[1], 3)
    with pytest.warns(UserWarning, match="cannot be recorded as a CUDA graph"):
        _train(opts[0], models[0], 3)
    assert opts[0]._captured is None and not opts[0]._cuda_graph
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b)


def test_cuda_graph_needs_a_cuda_model_and_a_bool():
    model = mixed_kernel_cnn(0)
    with pytest.raises(ValueError, match="move the model to a GPU"):
        NeuralGraphOptimizer(model, optimizer=_learned("ff"), cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph must be None"):
        NeuralGraphOptimizer(model, optimizer=_learned("ff"), cuda_graph="yes")
    assert not NeuralGraphOptimizer(model, optimizer=_learned("ff"))._cuda_graph  # auto: off on the CPU


def test_captured_update_refuses_cpu_tensors():
    p = torch.zeros(4)
    with pytest.raises(ValueError, match="CUDA tensors"):
        CapturedUpdate(lambda *a: a[:2], p, p, {}, torch.ones(()))


def test_device_constants_are_made_once_and_are_ordinary_tensors():
    """The update's constants are made once per (values, dtype, device), so replaying a graph never copies from the
    host; one made under inference mode can still be saved for a backward later."""
    from l2o.runtime import device_constant

    with torch.inference_mode():
        c = device_constant((0.5, 0.25), torch.float64, torch.device("cpu"))
    assert device_constant((0.5, 0.25), torch.float64, torch.device("cpu")) is c
    assert device_constant((0.5, 0.25), torch.float32, torch.device("cpu")) is not c
    assert not c.is_inference()
    x = torch.ones(2, dtype=torch.float64, requires_grad=True)
    (x * c).sum().backward()
    assert x.grad.tolist() == [0.5, 0.25]
