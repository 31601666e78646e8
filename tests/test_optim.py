"""Learned optimizers and NeuralGraphOptimizer: the torch.optim contract, exact resume, equivariance, checkpoints."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from l2o import NeuralGraph, NeuralGraphOptimizer, UnsupportedModuleError
from l2o.optim import (GRAPH_FAMILIES, CheckpointError, OptimizerConfig, ParamContext, build_optimizer,
                       load_checkpoint, save_checkpoint)
from l2o.optim import neural_graph_optimizer as ngo_module
from model_zoo import mixed_kernel_cnn, mlp, permute_sequential

SMALL = dict(hidden=8, depth=1, head_hidden=8)


def make_opt(family="ng-gnn", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = OptimizerConfig(family=family, **{**(SMALL if family not in ("adam", "adamw", "sgdm") else {}), **kw})
    return build_optimizer(cfg), cfg


def data(seed, n=16, shape=(5,)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(model, opt, steps, start=0, shape=(5,)):
    for s in range(start, start + steps):
        x, y = data(s, shape=shape)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("family", ["ng-gnn", "dng", "lstm"])
def test_step_equals_functional_update(family):
    model = mlp(0)
    learned, _ = make_opt(family)
    opt = NeuralGraphOptimizer(model, optimizer=learned)
    x, y = data(0)
    F.cross_entropy(model(x), y).backward()
    ctx = opt.context
    params = ctx.flatten([p.detach() for p in opt._params])
    grads = ctx.flatten([p.grad for p in opt._params])
    with torch.no_grad():
        expected, _ = learned.update(ctx, params, grads, learned.init_state(ctx, params))
    opt.step()
    got = ctx.flatten([p.detach() for p in opt._params])
    assert torch.equal(got, expected)
    assert not torch.equal(got, params)


@pytest.mark.parametrize("family", ["ng-gnn", "lstm", "adam"])
def test_state_dict_gives_exact_resume(family):
    learned, _ = make_opt(family)
    straight = mlp(0)
    opt = NeuralGraphOptimizer(straight, optimizer=copy.deepcopy(learned))
    train(straight, opt, 40)

    first = mlp(0)
    opt1 = NeuralGraphOptimizer(first, optimizer=copy.deepcopy(learned))
    train(first, opt1, 20)
    sd_model, sd_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt1.state_dict())
    resumed = mlp(5)  # different init: everything must come from the state dicts
    resumed.load_state_dict(sd_model)
    opt2 = NeuralGraphOptimizer(resumed, optimizer=copy.deepcopy(learned))
    opt2.load_state_dict(sd_opt)
    train(resumed, opt2, 20, start=20)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of")
def _one_step_delta(lr, scheduler_steps=0):
    model = mlp(0).double()
    learned, _ = make_opt("ng-gnn")
    opt = NeuralGraphOptimizer(model, optimizer=learned.double(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(scheduler_steps):
        sched.step()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = data(0)
    x = x.double()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before)], opt


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_lr_and_scheduler_scale_the_update():
    full, _ = _one_step_delta(1.0)
    half, opt = _one_step_delta(1.0, scheduler_steps=1)
    assert opt.param_groups[0]["lr"] == 0.5
    for a, b in zip(full, half):
        torch.testing.assert_close(b, 0.5 * a, rtol=1e-9, atol=1e-12)
    quarter, _ = _one_step_delta(0.25)
    for a, b in zip(full, quarter):
        torch.testing.assert_close(b, 0.25 * a, rtol=1e-9, atol=1e-12)


def test_closure_is_called_and_returned():
    model = mlp(0)
    opt = NeuralGraphOptimizer(model, optimizer=make_opt("ff")[0])
    x, y = data(0)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = model[0].weight.detach().clone()
    loss = opt.step(closure)
    assert calls == [1] and torch.is_tensor(loss) and not torch.equal(before, model[0].weight)


def test_skipped_frozen_and_grouped_parameters():
    model = mlp(0).double()
    model[4].bias.requires_grad_(False)  # frozen
    groups = [{"params": [model[0].weight, model[0].bias, model[4].bias, model[4].weight]},
              {"params": [model[2].weight], "lr": 0.5}]  # model[2].bias is in no group
    learned, _ = make_opt("ng-gnn")
    learned = learned.double()
    opt = NeuralGraphOptimizer(groups, model=model, optimizer=learned)
    ref = mlp(0).double()
    ref_opt = NeuralGraphOptimizer(ref, optimizer=copy.deepcopy(learned))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = data(0)
    x = x.double()
    F.cross_entropy(model(x), y).backward()
    model[0].bias.grad = None  # a parameter without a gradient this step is skipped
    opt.step()
    after = dict(model.named_parameters())
    for n in ("0.bias", "4.bias", "2.bias"):
        assert torch.equal(after[n], before[n]), n
        assert len(opt.state[after[n]]) == 0
    for n in ("0.weight", "2.weight", "4.weight"):
        assert not torch.equal(after[n], before[n]), n
    # The second group's lr halves its step relative to an all-lr-1 optimizer with the same inputs.
    F.cross_entropy(ref(x), y).backward()
    ref[0].bias.grad = None
    ref[2].bias.grad = None
    ref[4].bias.grad = None
    ref_opt.step()
    torch.testing.assert_close(after["2.weight"] - before["2.weight"],
                               0.5 * (ref[2].weight.detach() - before["2.weight"]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", sorted(GRAPH_FAMILIES))
def test_updates_are_permutation_equivariant(family):
    gen = torch.Generator().manual_seed(0)
    for model, idx, shape in ((mlp(0).double(), [0, 2], (5,)), (mixed_kernel_cnn(0).double(), [0, 2, 4], (3, 6, 6))):
        perms = {i: torch.randperm(model[i].weight.shape[0], generator=gen) for i in idx}
        permuted = permute_sequential(model, perms)
        learned, _ = make_opt(family, kmax=5)
        learned = learned.double()
        o1 = NeuralGraphOptimizer(model, optimizer=copy.deepcopy(learned))
        o2 = NeuralGraphOptimizer(permuted, optimizer=copy.deepcopy(learned))
        for s in range(2):
            x, y = data(s, shape=shape)
            for m, o in ((model, o1), (permuted, o2)):
                o.zero_grad()
                F.cross_entropy(m(x.double()), y).backward()
                o.step()
        expected = permute_sequential(model, perms)
        for (n, a), b in zip(permuted.named_parameters(), expected.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{family} {n}")


def test_checkpoint_round_trip_and_corruption(tmp_path):
    learned, cfg = make_opt("ng-gnn")
    path = save_checkpoint(tmp_path / "opt.pt", learned, cfg, summary={"best_val_acc": 0.5})
    loaded, cfg2, payload = load_checkpoint(path)
    assert cfg2 == cfg and payload["summary"]["best_val_acc"] == 0.5
    for (n, a), b in zip(learned.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an l2o"):
        load_checkpoint(tmp_path / "other.pt")
    payload["config"]["hidden"] = 16  # weights no longer fit the config
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        NeuralGraphOptimizer(mlp(0), checkpoint=tmp_path / "missing.pt")


def test_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "l2o-learned-optimizer", "config": Evil(), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "evil.pt")



def test_unsupported_layer_and_per_parameter_fallback():
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(), nn.Linear(6, 3))
    learned, _ = make_opt("ng-gnn")
    with pytest.raises(UnsupportedModuleError, match="'1' \\(PReLU\\)"):
        NeuralGraphOptimizer(model, optimizer=learned)
    with pytest.warns(UserWarning, match="PReLU"):
        opt = NeuralGraphOptimizer(model, optimizer=learned, fallback="per-parameter")
    assert opt.context.names[-1] == "1.weight"
    before = model[1].weight.detach().clone()
    train(model, opt, 2)
    assert not torch.equal(before, model[1].weight)


@pytest.mark.parametrize("family, torch_cls, kw", [
    ("adam", torch.optim.Adam, dict(lr=1e-2)),
    ("adamw", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    ("sgdm", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
])
def test_hand_designed_match_torch(family, torch_cls, kw):
    learned, _ = make_opt(family, **kw)
    a, b = mlp(0), mlp(0)
    oa = NeuralGraphOptimizer(a, optimizer=learned)
    ob = torch_cls(b.parameters(), **kw)
    train(a, oa, 10)
    train(b, ob, 10)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"adam_scale": 1.0, "additive": False}, {"adam_scale": 0.5}])
def test_untrained_adam_residual_is_adam(kw):
    learned, _ = make_opt("ng-gnn", adam_residual=True, adam_lr=1e-2, **kw)
    a, b = mlp(0), mlp(0)
    oa, ob = NeuralGraphOptimizer(a, optimizer=learned), torch.optim.Adam(b.parameters(), lr=1e-2)
    train(a, oa, 5)
    train(b, ob, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_adam_scale_is_a_bounded_per_element_lr_multiplier():
    """Without the additive term every element moves along Adam's direction, by at most e^adam_scale times Adam's
    step and at least e^-adam_scale times it, whatever the head outputs."""
    learned, _ = make_opt("ng-gnn", adam_residual=True, adam_lr=1e-2, adam_scale=1.0, additive=False)
    assert learned.head.log_scale is None
    with torch.no_grad():
        learned.head.out.weight.normal_(std=3.0)
    a, b = mlp(0), mlp(0)
    oa, ob = NeuralGraphOptimizer(a, optimizer=learned), torch.optim.Adam(b.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in a.parameters()]
    train(a, oa, 1)
    train(b, ob, 1)
    ratio = torch.cat([((p - p0) / (q - p0)).flatten() for p0, p, q in zip(before, a.parameters(), b.parameters())])
    assert (ratio >= math.exp(-1.0) - 1e-4).all() and (ratio <= math.exp(1.0) + 1e-4).all()
    assert ratio.std() > 0.05  # genuinely per element
    with pytest.raises(ValueError, match="needs adam_residual"):
        make_opt("ng-gnn", additive=False)


def test_relative_step_is_adam_with_per_tensor_lr_times_the_tensor_rms():
    """Untrained, a relative optimizer is Adam whose learning rate for each tensor is adam_lr x that tensor's RMS
    when the optimizer started (floored), i.e. torch's Adam with one parameter group per tensor."""
    from l2o.optim.heads import RELATIVE_FLOOR

    learned, _ = make_opt("dng", adam_residual=True, adam_lr=0.1, adam_scale=1.0, additive=False, relative=True)
    a, b = mlp(0), mlp(0)
    with torch.no_grad():  # one tensor below the floor: it must still move, at adam_lr x floor
        a[0].bias.zero_()
        b[0].bias.zero_()
    oa = NeuralGraphOptimizer(a, optimizer=learned)
    ob = torch.optim.Adam([{"params": [p], "lr": 0.1 * max(RELATIVE_FLOOR, float(p.detach().pow(2).mean().sqrt()))}
                           for p in b.parameters()])
    train(a, oa, 4)
    train(b, ob, 4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert a[0].bias.abs().max() > 0
    with pytest.raises(ValueError, match="relative"):
        make_opt("ff", relative=True)


def test_state_is_at_most_ten_floats_per_parameter():
    model = mixed_kernel_cnn(0)
    opt = NeuralGraphOptimizer(model, optimizer=make_opt("ng-gnn", kmax=5)[0])
    train(model, opt, 1, shape=(3, 6, 6))
    n_params = sum(p.numel() for p in model.parameters())
    floats = sum(v.numel() for st in opt.state.values() for k, v in st.items() if k != "step")
    assert floats / n_params == 6


def test_accelerate_prepared_model():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = acc.prepare(mlp(0))
    opt = NeuralGraphOptimizer(model, optimizer=make_opt("ng-gnn")[0])
    train(model, opt, 2)
    assert opt.graph is not None and opt.graph.num_nodes == 5 + 7 + 6 + 3


def test_context_batching_keeps_layouts():
    ga, gb = NeuralGraph.from_module(mlp(0), kmax=5), NeuralGraph.from_module(mixed_kernel_cnn(0))
    ca, cb = ParamContext.for_graph(ga), ParamContext.for_graph(gb)
    both = ParamContext.batch([ca, cb])
    assert both.num_elements == ca.num_elements + cb.num_elements and both.graph.num_graphs == 2
    learned, _ = make_opt("ng-gnn", kmax=5)
    pa, pb = torch.randn(ca.num_elements), torch.randn(cb.num_elements)
    qa, qb = torch.randn_like(pa), torch.randn_like(pb)
    with torch.no_grad():
        na, _ = learned.update(ca, pa, qa, learned.init_state(ca, pa))
        nb, _ = learned.update(cb, pb, qb, learned.init_state(cb, pb))
        p, q = torch.cat([pa, pb]), torch.cat([qa, qb])
        n, _ = learned.update(both, p, q, learned.init_state(both, p))
    torch.testing.assert_close(n, torch.cat([na, nb]), rtol=1e-5, atol=1e-7)


def test_tensor_sums_sum_each_tensor_of_a_batched_context():
    ca = ParamContext.for_graph(NeuralGraph.from_module(mlp(0), kmax=5))
    cb = ParamContext.for_graph(NeuralGraph.from_module(mixed_kernel_cnn(0)))
    both = ParamContext.batch([ca, cb])
    x = torch.randn(both.num_elements, 3, dtype=torch.float64)
    want = torch.zeros(both.num_tensors, 3, dtype=torch.float64).index_add(0, both.tensor_id, x)
    torch.testing.assert_close(both.tensor_sums(x), want)
    rms = both.tensor_rms(x)  # [P, 3]: each element's tensor's RMS per column
    first = x[: both.sizes[0]]
    torch.testing.assert_close(rms[0], first.square().mean(0).add(1e-12).sqrt())
    with pytest.raises(ValueError, match=f"expected {both.num_elements} rows"):
        both.tensor_sums(x[:-1])


def test_step_stats_measures_the_adam_multiplier():
    """The diagnostic recovers a known multiplier: a learned optimizer whose head is forced to exp(-adam_scale)
    (tanh saturated negative) takes exactly e^-1 times Adam's step, in Adam's direction."""
    from meta_train.pipelines.step_stats import step_stats
    from tasks.regression import RegressionTask

    learned, _ = make_opt("ff", adam_residual=True, adam_lr=1e-2, adam_scale=1.0, additive=False)
    with torch.no_grad():
        learned.head.out.bias[2] = -50.0
    recs = step_stats(learned, RegressionTask(4, 0), steps=12, ref_lr=1e-2, every=5)
    assert [r["step"] for r in recs] == [0, 5, 10, 11]
    for r in recs:
        for name in ("in_weight", "out_weight"):  # a 4 -> 1 linear model: its first layer is also the last
            if name in r:
                assert r[name]["ratio"] == pytest.approx(math.exp(-1.0), rel=1e-4)
                assert r[name]["cos"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="keeps no Adam moments"):
        step_stats(make_opt("adam")[0], RegressionTask(4, 0), steps=1, ref_lr=1e-2)


def test_step_stats_relative_measures_the_relative_rate():
    """With ``relative`` the ratio is the effective relative rate: a relative optimizer with its multiplier forced to
    e^+1 and initial rate 0.05 takes 0.05 e steps of relative Adam; a non-relative optimizer is refused."""
    from meta_train.pipelines.step_stats import step_stats
    from tasks.regression import RegressionTask

    learned, _ = make_opt("ff", adam_residual=True, adam_lr=0.05, adam_scale=1.0, additive=False, relative=True)
    with torch.no_grad():
        learned.head.out.bias[2] = 50.0
    recs = step_stats(learned, RegressionTask(4, 0), steps=6, ref_lr=1.0, every=5, relative=True)
    for r in recs:
        for name in ("in_weight", "out_weight"):
            if name in r:
                assert r[name]["ratio"] == pytest.approx(0.05 * math.e, rel=1e-4)
    plain, _ = make_opt("ff", adam_residual=True, adam_lr=1e-2, adam_scale=1.0, additive=False)
    with pytest.raises(ValueError, match="no relative steps"):
        step_stats(plain, RegressionTask(4, 0), steps=1, ref_lr=1.0, relative=True)


def test_shipped_default_checkpoint_trains_a_cnn():
    if not ngo_module.DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no shipped default checkpoint (results/checkpoints/default.pt)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    opt = NeuralGraphOptimizer(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.93 * losses[0] and all(math.isfinite(v) for v in losses)


def test_optimizer_and_head_constructors_take_keywords_only():
    """Eleven flags of one type in a row are too easy to shift by one: positional arguments are refused."""
    from l2o.optim.features import FeatureConfig
    from l2o.optim.heads import MLPStepHead, UpdateHead
    from l2o.optim.learned import FFOptimizer, GraphOptimizer, LSTMOptimizer, TensorLSTMOptimizer

    with pytest.raises(TypeError):
        UpdateHead(18, 7)
    with pytest.raises(TypeError):
        MLPStepHead(18)
    for cls, first in ((GraphOptimizer, "ng-gnn"), (LSTMOptimizer, 8), (TensorLSTMOptimizer, 8),
                       (FFOptimizer, FeatureConfig())):
        with pytest.raises(TypeError):
            cls(first)
    head = UpdateHead(num_features=18, time_features=7, adam_residual=True, relative=True)
    assert head.relative and head.log_adam_lr is not None
