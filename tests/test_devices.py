"""Every path on every device: graph batching, optimizer updates, each estimator, evaluation, the torch.optim
wrapper. Parametrised over ``cpu`` and ``cuda`` (skipped without a GPU); the CUDA results must match the CPU's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from l2o import NeuralGraph, NeuralGraphOptimizer
from l2o.optim import OptimizerConfig, ParamContext, build_optimizer
from meta_train.config import load_config
from meta_train.estimators import build_estimator
from meta_train.inner_train import context_for, train_optimizee
from meta_train.train import make_task_sampler
from meta_train.unroll import TaskPool, batch_states
from model_zoo import mixed_kernel_cnn, mlp
from tasks.regression import RegressionTask

SMALL = dict(hidden=8, depth=1, head_hidden=8, kmax=5)


def _opt(family: str, **kw):
    torch.manual_seed(0)
    extra = SMALL if family in ("ng-gnn", "ng-t", "dng", "nfn") else dict(head_hidden=8)
    return build_optimizer(OptimizerConfig(family=family, **{**extra, **kw}))


def test_batched_graphs_and_contexts_stay_on_the_device(device):
    graphs = [NeuralGraph.from_module(mlp(0), kmax=5).to(device), NeuralGraph.from_module(mixed_kernel_cnn(0), kmax=5).to(device)]
    assert NeuralGraph.batch(graphs).device.type == device.type
    ctx = ParamContext.batch([ParamContext.for_graph(g) for g in graphs])
    for t in (ctx.tensor_id, ctx.offsets, ctx.category, ctx.tensor_task, ctx.graph.edge_index):
        assert t.device.type == device.type


@pytest.mark.parametrize("family, kw", [("ng-gnn", {}), ("dng", {}), ("ng-t", {}), ("nfn", {}), ("lstm", {}),
                                        ("ng-gnn", dict(inputs="reference", step_rule="mlp",
                                                        encoder_options={"shared_reverse": True})),
                                        ("tensor-lstm", dict(inputs="reference", step_rule="mlp"))])
def test_batched_update_on_device_matches_cpu(device, family, kw):
    opt = _opt(family, **kw).double()
    ctxs, ps = [], []
    for model in (mlp(0), mixed_kernel_cnn(1)):
        ctx = context_for(model, opt)
        ctxs.append(ctx)
        ps.append(ctx.flatten([p.detach().double() for p in model.parameters()]))
    gs = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
          for i, p in enumerate(ps)]
    outs = {}
    for dev in ("cpu", device):
        o = opt.to(dev)
        cs = [c.to(dev) for c in ctxs]
        states = [o.init_state(c, p.to(dev)) for c, p in zip(cs, ps)]
        new_p, _ = o.update(ParamContext.batch(cs), torch.cat(ps).to(dev), torch.cat(gs).to(dev),
                            batch_states(states, [p.numel() for p in ps]))
        outs[str(dev)] = new_p.cpu()
    torch.testing.assert_close(outs[str(device)], outs["cpu"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("estimator", ["greedy", "tbptt", "window", "pes"])
def test_every_estimator_runs_on_the_device(device, estimator):
    over = [f"meta.estimator={estimator}", "meta.truncation=3", "meta.horizon=5", "meta.tasks_per_process=2",
            "tasks.family=regression", "optimizer.family=ng-gnn", "optimizer.hidden=8", "optimizer.depth=1",
            "optimizer.head_hidden=8"]
    if estimator == "window":
        over.append("meta.window=4")
    cfg = load_config(None, over)
    torch.manual_seed(0)
    learned = build_optimizer(cfg.optimizer).to(device)
    pool = TaskPool(make_task_sampler(cfg), learned, [0, 1], 5, 0, seed=0, device=device)
    est = build_estimator(cfg.meta, learned)
    for _ in range(3):
        estimate = est.step(pool)
    assert estimate.stats["blowups"] == 0
    grads = list(estimate.grads.values())
    assert grads and all(g.device.type == device.type and torch.isfinite(g).all() for g in grads)
    assert all(t.params.device.type == device.type for t in pool.tasks)


def test_inner_training_on_device_matches_cpu(device):
    opt = _opt("ng-gnn")
    task = RegressionTask(4, 3)
    runs = [train_optimizee(opt.to(dev), task, 10, seed=0, device=dev, eval_split=None) for dev in ("cpu", device)]
    assert runs[1]["losses"] == pytest.approx(runs[0]["losses"], rel=1e-4)


def test_torch_optim_wrapper_on_device(device):
    model = mixed_kernel_cnn(0).to(device)
    opt = NeuralGraphOptimizer(model, optimizer=_opt("ng-gnn").to(device))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6, generator=g).to(device), torch.randint(0, 3, (8,), generator=g).to(device)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(p.device.type == device.type for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_rate_adapted_steps_on_device_match_cpu(device):
    """The shipped default's recipe (relative, capped, rates adapted online) takes the same steps on every device:
    the adapted rates are state, carried from step to step."""
    recipe = dict(inputs="reference", step_rule="mlp", relative=True, category_rates=True, rate_cap=1.0,
                  rate_adapt=0.03, rate_adapt_min=1.0)
    runs = []
    for dev in ("cpu", device):
        model = mixed_kernel_cnn(0).to(dev)
        opt = NeuralGraphOptimizer(model, optimizer=_opt("ng-gnn", **recipe).to(dev))
        for t in range(5):  # the same gradients on both devices: the optimizer's own arithmetic is compared
            g = torch.Generator().manual_seed(t)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g).to(dev)
            opt.step()
        runs.append((model, opt))
    (m_cpu, o_cpu), (m_dev, o_dev) = runs
    for p_cpu, p_dev in zip(m_cpu.parameters(), m_dev.parameters()):
        torch.testing.assert_close(p_dev.cpu(), p_cpu, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(o_dev.state[p_dev]["log_rate"].cpu(), o_cpu.state[p_cpu]["log_rate"],
                                   rtol=1e-4, atol=1e-6)
    assert any(bool((o_cpu.state[p]["log_rate"] > 0).any()) for p in m_cpu.parameters())
