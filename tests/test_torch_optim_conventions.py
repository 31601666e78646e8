"""NeuralGraphOptimizer follows torch.optim conventions: decoupled weight decay per group, checked group keys,
add_param_group, low- and high-precision models, independence from autocast, torch.compile-d models."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from l2o import NeuralGraphOptimizer
from l2o.optim import OptimizerConfig, build_optimizer
from model_zoo import mixed_kernel_cnn, mlp


def _learned(family="ng-gnn"):
    torch.manual_seed(0)
    return build_optimizer(OptimizerConfig(family=family, hidden=8, depth=1, head_hidden=8, kmax=5))


def _batch(seed=0, shape=(5,), n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _step(model, opt, seed=0, shape=(5,)):
    x, y = _batch(seed, shape)
    opt.zero_grad()
    loss = F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y)
    loss.backward()
    opt.step()
    return float(loss)


def test_weight_decay_is_decoupled_and_scaled_by_the_group_lr():
    plain, decayed = mlp(0), mlp(0)
    learned = _learned()
    o1 = NeuralGraphOptimizer(plain, optimizer=copy.deepcopy(learned), lr=0.5)
    o2 = NeuralGraphOptimizer([{"params": list(decayed.parameters())[:2], "weight_decay": 0.1},
                               {"params": list(decayed.parameters())[2:]}], model=decayed,
                              optimizer=copy.deepcopy(learned), lr=0.5)
    before = [p.detach().clone() for p in decayed.parameters()]
    _step(plain, o1)
    _step(decayed, o2)
    for i, (a, b, p0) in enumerate(zip(plain.parameters(), decayed.parameters(), before)):
        want = a - 0.5 * 0.1 * p0 if i < 2 else a  # p <- learned update - lr * wd * p
        torch.testing.assert_close(b, want, rtol=1e-6, atol=1e-7)


def test_unknown_group_keys_and_bad_weight_decay_raise():
    model = mlp(0)
    with pytest.raises(ValueError, match="momentum"):
        NeuralGraphOptimizer([{"params": model.parameters(), "momentum": 0.9}], model=model, optimizer=_learned())
    with pytest.raises(ValueError, match="weight_decay"):
        NeuralGraphOptimizer(model, optimizer=_learned(), weight_decay=-1.0)


def test_add_param_group_updates_the_added_parameters():
    model = mlp(0)
    params = list(model.parameters())
    opt = NeuralGraphOptimizer(params[:2], model=model, optimizer=_learned())
    _step(model, opt)
    frozen = [p.detach().clone() for p in params[2:]]
    _step(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(frozen, params[2:]))  # not in any group yet: untouched
    opt.add_param_group({"params": params[2:], "lr": 0.5})
    _step(model, opt, 2)
    assert all(not torch.equal(a, b) for a, b in zip(frozen, params[2:]))
    with pytest.raises(ValueError, match="nesterov"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "nesterov": True})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_models_train_with_float32_state(dtype):
    model = mixed_kernel_cnn(0).to(dtype)
    opt = NeuralGraphOptimizer(model, optimizer=build_optimizer(OptimizerConfig(family="relative-adam", lr=0.3)))
    losses = [_step(model, opt, 0, shape=(3, 6, 6)) for _ in range(15)]  # the same batch: the loss must fall
    assert all(p.dtype == dtype for p in model.parameters())
    # bf16 / fp16: float32 statistics; fp64 with a weightless (hand-designed) optimizer: float64 arithmetic
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert all(v.dtype == want for st in opt.state.values() for k, v in st.items() if k != "step")
    assert losses[-1] < 0.8 * losses[0], losses


def test_bf16_cnn_trains_with_the_shipped_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 3)).to(torch.bfloat16)
    opt = NeuralGraphOptimizer(model)
    losses = [_step(model, opt, 0, shape=(3, 6, 6)) for _ in range(20)]
    assert losses[-1] < losses[0], losses


def test_resume_of_a_bf16_model_keeps_float32_state():
    model = mlp(0).to(torch.bfloat16)
    opt = NeuralGraphOptimizer(model, optimizer=_learned())
    _step(model, opt)
    opt2 = NeuralGraphOptimizer(model, optimizer=_learned())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p in model.parameters():
        assert torch.equal(opt2.state[p]["m"], opt.state[p]["m"]) and opt2.state[p]["m"].dtype == torch.float32


def test_the_update_does_not_depend_on_an_enclosing_autocast():
    learned = _learned()
    a, b = mlp(0), mlp(0)
    oa, ob = NeuralGraphOptimizer(a, optimizer=copy.deepcopy(learned)), NeuralGraphOptimizer(b, optimizer=copy.deepcopy(learned))
    for m in (a, b):
        x, y = _batch()
        F.cross_entropy(m(x), y).backward()
    oa.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_torch_compiled_model_is_accepted():
    model = mlp(0)
    compiled = torch.compile(model)  # not called: compiling is not needed to build the optimizer
    opt = NeuralGraphOptimizer(compiled, optimizer=_learned())
    assert opt.graph is not None and opt.context.num_elements == sum(p.numel() for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt)
    assert all(not torch.equal(a, b) for a, b in zip(before, compiled.parameters()))


class _ExampleNet(nn.Module):
    """The PyTorch examples' MNIST net, spelled with torch.* / F.* / tensor methods in turn."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        if self.spelling == "torch":
            x = torch.relu(self.conv1(x))
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            x = torch.dropout(x, 0.25, self.training)
            x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
            return torch.log_softmax(self.fc(x), dim=1)
        if self.spelling == "F":
            x = F.relu(self.conv1(x))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = F.dropout(x, 0.25, self.training)
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return F.log_softmax(self.fc(x), dim=1)
        x = self.conv1(x).relu()
        x = self.conv2(x).relu_()
        x = x.mean((2, 3))
        return self.fc(x).log_softmax(1)


@pytest.mark.parametrize("spelling", ["torch", "F", "method"])
def test_every_spelling_of_supported_functions_builds_the_same_graph(spelling):
    from l2o import NeuralGraph

    ref = NeuralGraph.from_module(_ExampleNet("F"), kmax=3)
    g = NeuralGraph.from_module(_ExampleNet(spelling), kmax=3)
    assert (g.num_nodes, g.num_edges, g.param_names) == (ref.num_nodes, ref.num_edges, ref.param_names)
    assert torch.equal(g.edge_index, ref.edge_index)


def test_unsupported_function_error_says_what_to_do():
    from l2o import NeuralGraph, UnsupportedModuleError

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.cumsum(self.fc(x), 1)

    with pytest.raises(UnsupportedModuleError, match="fallback='per-parameter'"):
        NeuralGraph.from_module(Odd())


def test_untraceable_model_under_the_fallback_trains_per_parameter():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)
            self.noise = True

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            if self.training and self.noise and h.sum() > 0:  # data-dependent control flow: fx cannot trace it
                h = h + 0.0 * torch.randn_like(h)
            return self.fc2(h)

    from l2o import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="fallback='per-parameter'"):
        NeuralGraphOptimizer(Noisy(), optimizer=_learned())
    model = Noisy()
    with pytest.warns(UserWarning, match="every parameter is updated from its own features"):
        opt = NeuralGraphOptimizer(model, optimizer=_learned(), fallback="per-parameter")
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt)
    assert opt.graph is None and all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
