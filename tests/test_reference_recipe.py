"""The published reference recipe as first-class options: plain-sum momenta, the MLP step rule, the per-tensor
"LSTM" of the reference code, NG-GNN with reversed edges as one relation, summed meta-losses and L2 outer Adam."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from l2o import NeuralGraphOptimizer
from l2o.optim import OptimizerConfig, ParamContext, build_optimizer
from l2o.optim.features import DECAYS, FeatureConfig, init_moments, logsign, param_features, update_moments
from meta_train.config import load_config
from meta_train.inner_train import context_for
from model_zoo import mixed_kernel_cnn, mlp, permute_sequential

REF = dict(inputs="reference", step_rule="mlp", head_hidden=8, head_layers=3)


def _opt(family, seed=0, **kw):
    torch.manual_seed(seed)
    extra = dict(hidden=8, depth=2) if family == "ng-gnn" else {}
    return build_optimizer(OptimizerConfig(family=family, **{**REF, **extra, **kw}))


def test_reference_inputs_are_parameter_gradient_and_plain_momentum_sums():
    cfg = FeatureConfig(inputs="reference")
    assert cfg.num_features == 14 and cfg.state_floats == 5
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0]), torch.tensor([-1.0, 1.0])]
    state = init_moments(2, cfg=cfg)
    assert set(state) == {"m", "step"}  # no second moment
    for g in grads:
        state = update_moments(g, state, cfg)
    for k, beta in enumerate(DECAYS):  # m <- beta m + g: no (1 - beta), no bias correction
        want = beta ** 2 * grads[0] + beta * grads[1] + grads[2]
        torch.testing.assert_close(state["m"][:, k], want)
    params = torch.tensor([0.3, -0.1])
    ctx = ParamContext.build(None, ["w"], [torch.Size([2])])
    feats = param_features(ctx, params, grads[-1], state, cfg)
    raw = torch.cat([params[:, None], grads[-1][:, None], state["m"]], 1)
    torch.testing.assert_close(feats, logsign(raw))


def test_reference_plus_v_adds_only_the_second_moment():
    """The ablation set: the reference's plain sums unchanged, plus sqrt(v_hat) of Adam's second moment."""
    ref, plus = FeatureConfig(inputs="reference"), FeatureConfig(inputs="reference+v")
    assert (plus.num_features, plus.state_floats) == (16, 6)
    grads = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0])]
    s_ref, s_plus = init_moments(2, cfg=ref), init_moments(2, cfg=plus)
    for g in grads:
        s_ref, s_plus = update_moments(g, s_ref, ref), update_moments(g, s_plus, plus)
    torch.testing.assert_close(s_plus["m"], s_ref["m"])
    v = (1 - 0.999) * (0.999 * grads[0] ** 2 + grads[1] ** 2)
    torch.testing.assert_close(s_plus["v"], v)
    params = torch.tensor([0.3, -0.1])
    feats = param_features(None, params, grads[-1], s_plus, plus)
    torch.testing.assert_close(feats[:, :7], param_features(None, params, grads[-1], s_ref, ref)[:, :7])
    torch.testing.assert_close(feats[:, 7], torch.log(torch.sqrt(v / (1 - 0.999 ** 2))) / 10)


def test_mlp_step_rule_is_lam_d_exp_lam_m():
    opt = _opt("ff", lam=0.01)
    head = opt.head
    feats = torch.randn(6, 14)
    h = feats
    for lin in [head.feat_in, *head.hidden]:
        h = torch.relu(lin(h))
    d, m = head.out(h).unbind(-1)
    torch.testing.assert_close(head(None, feats, None), 0.01 * d * torch.exp(0.01 * m))
    assert len(head.hidden) == 2  # head_layers=3 hidden layers: feat_in + 2


def test_relative_mlp_step_is_the_absolute_step_times_the_initial_tensor_rms():
    """optimizer.relative with the mlp rule: the same rule, each element's step x its tensor's RMS at the start
    (kept in the state, so a tensor's later growth does not change it)."""
    absolute, relative = _opt("ng-gnn", kmax=5), _opt("ng-gnn", kmax=5, relative=True)
    relative.load_state_dict(absolute.state_dict())
    model = mixed_kernel_cnn(0)
    named = list(model.named_parameters())
    ctx = context_for(model, relative)
    params = ctx.flatten([p.detach() for _, p in named])
    grads = torch.randn_like(params)
    state_a, state_r = absolute.init_state(ctx, params), relative.init_state(ctx, params)
    rms = torch.cat([t.pow(2).mean().sqrt().expand(t.numel()) for t in ctx.split(params)])
    torch.testing.assert_close(state_r["scale"], rms)
    with torch.no_grad():
        new_a, _ = absolute.update(ctx, params, grads, state_a)
        new_r, _ = relative.update(ctx, params, grads, state_r)
    torch.testing.assert_close(new_r - params, (new_a - params) * rms, rtol=1e-4, atol=1e-9)


def test_relative_warm_start_keeps_the_absolute_step_on_a_tensor_of_the_reference_rms(tmp_path):
    from experiments.relative_steps import relative_warm_start
    from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

    absolute, config = _opt("ff"), OptimizerConfig(family="ff", **REF)
    src = save_checkpoint(tmp_path / "abs.pt", absolute, config)
    ref = relative_warm_start(src, tmp_path / "rel.pt", "fmnist-conv")["all"]
    relative, rel_config, payload = load_checkpoint(tmp_path / "rel.pt")
    assert rel_config.relative and "warm_start_note" in payload["summary"]
    ctx = ParamContext.build(None, ["w"], [torch.Size([50])])
    params = torch.randn(50)
    params *= ref / params.pow(2).mean().sqrt()  # a tensor whose RMS is the reference
    grads = torch.randn(50)
    with torch.no_grad():
        new_a, _ = absolute.update(ctx, params, grads, absolute.init_state(ctx, params))
        new_r, _ = relative.update(ctx, params, grads, relative.init_state(ctx, params))
    torch.testing.assert_close(new_r, new_a, rtol=1e-5, atol=1e-8)
    with pytest.raises(SystemExit, match="expected an absolute 'mlp' rule"):
        relative_warm_start(tmp_path / "rel.pt", tmp_path / "again.pt", "fmnist-conv")


def test_category_rates_multiply_each_step_by_its_categorys_learned_rate():
    """optimizer.category_rates: zero-initialised (the plain rule), then each tensor's step x exp(its rate)."""
    from l2o.optim.context import NUM_CATEGORIES

    plain, rated = _opt("ng-gnn", kmax=5), _opt("ng-gnn", kmax=5, category_rates=True)
    assert rated.head.log_rate.shape == (NUM_CATEGORIES,) and not rated.head.log_rate.any()
    rated.load_state_dict({**plain.state_dict(), "head.log_rate": torch.zeros(NUM_CATEGORIES)})
    model = mixed_kernel_cnn(0)
    ctx = context_for(model, rated)
    params = ctx.flatten([p.detach() for _, p in model.named_parameters()])
    grads = torch.randn_like(params)
    with torch.no_grad():
        step_p = plain.update(ctx, params, grads, plain.init_state(ctx, params))[0] - params
        torch.testing.assert_close(rated.update(ctx, params, grads, rated.init_state(ctx, params))[0] - params,
                                   step_p)
        rated.head.log_rate.copy_(torch.linspace(-1.0, 1.5, NUM_CATEGORIES))
        step_r = rated.update(ctx, params, grads, rated.init_state(ctx, params))[0] - params
    factor = torch.exp(rated.head.log_rate.detach())[ctx.category][ctx.tensor_id]
    assert len(set(ctx.category.tolist())) >= 4  # several categories, so a mix-up would show
    torch.testing.assert_close(step_r, step_p * factor, rtol=1e-4, atol=1e-9)


def test_category_rates_are_an_option_of_the_mlp_rule_only():
    with pytest.raises(ValueError, match="category_rates=True is an option of step_rule='mlp'"):
        build_optimizer(OptimizerConfig(family="ff", step_rule="modulated", category_rates=True))


def _relative_from_absolute(tmp_path, name: str, **kw):
    """(absolute rule, its per-category relative warm start on fmnist-conv with ``kw``, that start's config)."""
    from experiments.relative_steps import relative_warm_start
    from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

    absolute, config = _opt("ng-gnn", kmax=3), OptimizerConfig(family="ng-gnn", hidden=8, depth=2, **REF)
    src = save_checkpoint(tmp_path / "abs.pt", absolute, config)
    refs = relative_warm_start(src, tmp_path / name, "fmnist-conv", per_category=True, **kw)
    relative, rel_config, _ = load_checkpoint(tmp_path / name)
    assert len(refs) == 6
    return absolute, relative, rel_config


def _first_steps(model, *optimizers) -> tuple[list[str], list[list[torch.Tensor]]]:
    """Each optimizer's first step on ``model`` (same gradients), split per tensor in the context's order."""
    ctx = context_for(model, optimizers[-1])
    named = dict(model.named_parameters())
    params = ctx.flatten([named[n].detach() for n in ctx.names])
    grads = torch.randn_like(params)
    with torch.no_grad():
        return ctx.names, [ctx.split(o.update(ctx, params, grads, o.init_state(ctx, params))[0] - params)
                           for o in optimizers]


def test_per_category_relative_warm_start_is_the_absolute_rule_on_every_layer_of_the_task(tmp_path):
    """The relative rule with category rates 1 / (each category's initial RMS on fmnist-conv) takes the absolute
    rule's first step on every tensor that sets its category's RMS (all but the first hidden conv layer, whose
    category's median element lies in the larger second one)."""
    from experiments.relative_steps import relative_warm_start
    from tasks import get_task

    absolute, relative, rel_config = _relative_from_absolute(tmp_path, "rel.pt")
    assert rel_config.relative and rel_config.category_rates
    names, (step_a, step_r) = _first_steps(get_task("fmnist-conv").make_model(0), absolute, relative)
    exact = [i for i, n in enumerate(names) if not n.startswith("2.")]
    assert len(exact) == 6 and len(names) == 8
    for i in exact:
        torch.testing.assert_close(step_r[i], step_a[i], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(step_r[2], step_a[2])  # 2.weight: hidden, RMS 0.049 against the category's 0.034
    with pytest.raises(SystemExit, match="without category rates"):
        relative_warm_start(tmp_path / "rel.pt", tmp_path / "again.pt", "fmnist-conv", per_category=True)


def test_a_rate_cap_keeps_every_step_at_most_the_absolute_rules(tmp_path):
    """rate_cap = 1 on the per-category relative start: no tensor moves further than under the absolute rule (the
    first hidden conv of fmnist-conv, 1.4x uncapped, takes exactly its step), smaller tensors proportionally less."""
    from experiments.relative_steps import capped_tensors
    from tasks import get_task

    absolute, capped, cap_config = _relative_from_absolute(tmp_path, "capped.pt", rate_cap=1.0)
    assert cap_config.rate_cap == 1.0
    binds = capped_tensors(tmp_path / "capped.pt", "fmnist-conv", [0])[0]
    assert [name for name, _ in binds] == ["2.weight", "2.bias"] and all(m > 1.3 for _, m in binds)
    model = get_task("fmnist-conv").make_model(0)
    with torch.no_grad():
        model[2].weight.mul_(0.5)  # a tensor below its category's RMS: half the absolute step
    names, (step_a, step_c) = _first_steps(model, absolute, capped)
    for i, name in enumerate(names):
        if name != "2.weight":
            torch.testing.assert_close(step_c[i], step_a[i], rtol=1e-4, atol=1e-9)
    ratio = (step_c[names.index("2.weight")] / step_a[names.index("2.weight")]).median()
    assert ratio == pytest.approx(0.5 * 1.4, rel=0.05)  # uncapped 1.4x the absolute step, halved with the weights
    with pytest.raises(ValueError, match="rate_cap is an option of step_rule='mlp'"):
        build_optimizer(OptimizerConfig(family="ff", step_rule="modulated", rate_cap=1.0))
    with pytest.raises(ValueError, match="needs relative=True or category_rates=True"):
        _opt("ff", rate_cap=1.0)


def test_mlp_step_rule_rejects_adam_residual():
    with pytest.raises(ValueError, match="step_rule='mlp'"):
        _opt("ff", adam_residual=True)


def test_tensor_lstm_runs_its_cell_over_tensors_in_order():
    opt = _opt("tensor-lstm", lstm_hidden=4, head_layers=1)
    model = mlp(0)
    names = [n for n, _ in model.named_parameters()]
    ctx = ParamContext.build(None, names, [p.shape for _, p in model.named_parameters()])
    params = ctx.flatten([p.detach() for p in model.parameters()])
    grads = torch.randn_like(params)
    state = opt.init_state(ctx, params)
    feats = param_features(ctx, params, grads, update_moments(grads, state, opt.features), opt.features)
    emb, _ = opt.embed(ctx, feats, state)
    # By hand: mean of the encoded features per tensor, one LSTM cell over the tensors from a zero state.
    h = c = torch.zeros(1, 4)
    outs = []
    for chunk in torch.split(opt.encode(feats), ctx.sizes):
        h, c = opt.cell(chunk.mean(0, keepdim=True), (h, c))
        outs.append(h)
    want = opt.head.embed_proj(torch.cat(outs)).index_select(0, ctx.tensor_id)
    torch.testing.assert_close(emb, want)


@pytest.mark.parametrize("family", ["tensor-lstm", "ng-gnn", "ff"])
def test_batched_tasks_update_as_each_alone(family):
    opt = _opt(family, kmax=5)
    ctxs, ps, gs, ss = [], [], [], []
    for seed, model in ((0, mlp(0)), (1, mixed_kernel_cnn(1))):
        probe = NeuralGraphOptimizer(model, optimizer=opt)
        ctx = probe.context
        p = ctx.flatten([t.detach() for t in probe._params])
        ctxs.append(ctx); ps.append(p); gs.append(torch.randn_like(p)); ss.append(opt.init_state(ctx, p))
    from meta_train.unroll import batch_states

    sizes = [p.numel() for p in ps]
    new_p, _ = opt.update(ParamContext.batch(ctxs), torch.cat(ps), torch.cat(gs), batch_states(ss, sizes))
    for part, ctx, p, g, s in zip(torch.split(new_p, sizes), ctxs, ps, gs, ss):
        alone, _ = opt.update(ctx, p, g, s)
        torch.testing.assert_close(part, alone, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["ng-gnn", "tensor-lstm"])
def test_reference_updates_are_permutation_equivariant(family):
    gen = torch.Generator().manual_seed(0)
    model = mixed_kernel_cnn(0).double()
    perms = {i: torch.randperm(model[i].weight.shape[0], generator=gen) for i in (0, 2)}
    permuted = permute_sequential(model, perms)
    learned = _opt(family, kmax=5, encoder_options={"shared_reverse": True} if family == "ng-gnn" else {}).double()
    o1 = NeuralGraphOptimizer(model, optimizer=copy.deepcopy(learned))
    o2 = NeuralGraphOptimizer(permuted, optimizer=copy.deepcopy(learned))
    for s in range(2):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 3, 6, 6, generator=g).double(), torch.randint(0, 3, (8,), generator=g)
        for m, o in ((model, o1), (permuted, o2)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    expected = permute_sequential(model, perms)
    for (n, a), b in zip(permuted.named_parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{family} {n}")


def test_reference_configs_build_the_published_sizes():
    cfg = load_config("meta_train/configs/reference.toml")
    o, m = cfg.optimizer, cfg.meta
    assert (o.family, o.hidden, o.depth, o.kmax, o.head_hidden, o.head_layers) == ("ng-gnn", 64, 8, 5, 64, 8)
    assert (o.inputs, o.step_rule, o.encoder_options) == ("reference", "mlp", {"shared_reverse": True})
    assert (m.estimator, m.meta_loss, m.reduction, m.outer_optimizer, m.clip_norm) == ("greedy", "same", "sum",
                                                                                      "adam", 0.0)
    assert (m.outer_steps, m.truncation, m.horizon, m.lr, m.weight_decay) == (1000, 100, 100, 3e-4, 1e-4)
    for name, family in (("reference-ff", "ff"), ("reference-tensor-lstm", "tensor-lstm")):
        c = load_config(f"meta_train/configs/{name}.toml")
        assert c.optimizer.family == family and c.meta == m
        build_optimizer(c.optimizer)


def test_summed_meta_loss_is_k_times_the_mean(tmp_path):
    """``reduction = "sum"`` (the reference) scales the greedy meta-gradient by the truncation length."""
    from meta_train.estimators import build_estimator
    from meta_train.train import make_task_sampler
    from meta_train.unroll import TaskPool

    grads = {}
    for reduction in ("mean", "sum"):
        cfg = load_config(None, ["optimizer.family=ff", "optimizer.inputs=reference", "optimizer.step_rule=mlp",
                                 "meta.estimator=greedy", "meta.truncation=4", "meta.horizon=50",
                                 f"meta.reduction={reduction}", "tasks.family=regression"])
        torch.manual_seed(0)
        learned = build_optimizer(cfg.optimizer)
        pool = TaskPool(make_task_sampler(cfg), learned, [0], 50, 0, seed=0)
        estimate = build_estimator(cfg.meta, learned).step(pool)
        grads[reduction] = torch.cat([estimate.grads[n].flatten() for n, _ in learned.named_parameters()])
    torch.testing.assert_close(grads["sum"], 4 * grads["mean"])


def test_relative_adam_is_torch_adam_with_per_tensor_rates():
    model, ref = mlp(0).double(), mlp(0).double()
    opt = NeuralGraphOptimizer(model, optimizer=build_optimizer(OptimizerConfig(family="relative-adam", lr=0.2)))
    torch_opt = torch.optim.Adam([{"params": [p], "lr": 0.2 * max(float(p.detach().pow(2).mean().sqrt()), 1e-3)}
                                  for p in ref.parameters()])
    for s in range(3):
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 5, generator=g).double(), torch.randint(0, 3, (8,), generator=g)
        for m, o in ((model, opt), (ref, torch_opt)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["reference", "reference-ff", "reference-tensor-lstm"])
def test_reference_configs_meta_train_end_to_end(tmp_path, name):
    """Each reference config runs the outer loop as written (greedy, same-batch loss, summed, L2 Adam), here on
    small regression tasks for speed, and its meta-parameters move."""
    from l2o.optim import load_checkpoint
    from meta_train.train import train

    cfg = load_config(f"meta_train/configs/{name}.toml",
                      ["meta.outer_steps=2", "meta.truncation=3", "meta.horizon=6", "tasks.family=regression",
                       "run.validate_every=0", f"run.out_dir={tmp_path / 'run'}"])
    torch.manual_seed(cfg.run.seed)
    before = build_optimizer(cfg.optimizer).state_dict()
    train(cfg)
    after, _, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    moved = [k for k, v in after.state_dict().items() if not torch.equal(v, before[k])]
    assert moved


def _warm_pair(tmp_path, family="ng-gnn", **head):
    """An FF optimizer saved to a checkpoint and an NG-GNN warm-started from it (``head``: the NG-GNN's head)."""
    from l2o.optim import save_checkpoint, warm_start

    common = dict(inputs="adam", step_rule="mlp", head_hidden=16, head_layers=2)
    ff_cfg = OptimizerConfig(family="ff", **common)
    torch.manual_seed(0)
    ff = build_optimizer(ff_cfg)
    save_checkpoint(tmp_path / "ff.pt", ff, ff_cfg)
    gnn_cfg = OptimizerConfig(family=family, hidden=8, depth=2, kmax=5, **{**common, **head})
    torch.manual_seed(1)
    gnn = build_optimizer(gnn_cfg)
    return ff, gnn, gnn_cfg, warm_start


@pytest.mark.parametrize("family", ["ng-gnn", "dng"])
def test_a_graph_optimizer_warm_started_from_ff_takes_ff_steps_then_trains_its_encoder(tmp_path, family):
    ff, gnn, cfg, warm_start = _warm_pair(tmp_path, family)
    copied = warm_start(gnn, cfg, tmp_path / "ff.pt")
    assert copied and all(k.startswith("head.") for k in copied)
    probe = NeuralGraphOptimizer(mixed_kernel_cnn(0), optimizer=copy.deepcopy(gnn))  # (it freezes its optimizer)
    ctx = probe.context
    p = ctx.flatten([t.detach() for t in probe._params])
    g = torch.randn_like(p)
    stepped, _ = gnn.update(ctx, p, g, gnn.init_state(ctx, p))
    expected, _ = ff.update(ctx, p, g, ff.init_state(ctx, p))
    torch.testing.assert_close(stepped, expected, rtol=0, atol=1e-6)
    # the embedding enters through a zero projection: the projection's gradient is not zero, so the encoder's
    # contribution grows from the first outer step
    (stepped.pow(2).sum()).backward()
    assert gnn.head.embed_proj.weight.grad.abs().sum() > 0


def test_warm_start_refuses_a_head_set_up_differently(tmp_path):
    from l2o.optim import CheckpointError

    _, gnn, cfg, warm_start = _warm_pair(tmp_path, head_layers=3)
    with pytest.raises(CheckpointError, match="head_layers: 2 there, 3 here"):
        warm_start(gnn, cfg, tmp_path / "ff.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        warm_start(gnn, cfg, tmp_path / "missing.pt")


def test_loss_rise_is_zero_for_a_falling_loss_and_measures_a_climb_after_step_100():
    from experiments.reference_recipe import loss_rise
    from meta_train.eval_records import OptimizerRuns, SeedRun

    def entry(curve):
        return OptimizerRuns(family="x", checkpoint="x.pt", digest=None, hyper=None, runs=[
            SeedRun(seed=s, losses=curve, evals=[], acc=0.5, step_ms=1.0, diverged=False) for s in (0, 1)])

    falling = [2.0 - 0.001 * t for t in range(1000)]
    assert loss_rise(entry(falling)) == 0.0
    jump = [2.0] * 500 + [3.0] * 500  # the loss jumps by 1 at step 501 and stays there
    assert loss_rise(entry(jump)) == pytest.approx(1.0)
    early = [2.0 + 0.01 * t for t in range(60)] + falling[60:]  # a climb before step 100 does not count
    assert loss_rise(entry(early)) == 0.0


def test_category_rates_train_apart_at_their_own_outer_rate_when_asked():
    from meta_train.config import ConfigError
    from meta_train.train import outer_param_groups

    cfg = load_config(None, ["optimizer.step_rule='mlp'", "optimizer.family='ff'", "optimizer.category_rates=true",
                             "meta.lr=1e-3"])
    opt = build_optimizer(cfg.optimizer)
    (one,) = outer_param_groups(opt, cfg.meta)  # rate_lr_scale = 1: everything in one group, as before
    assert len(one["params"]) == len(list(opt.parameters()))
    cfg = load_config(None, ["optimizer.step_rule='mlp'", "optimizer.family='ff'", "optimizer.category_rates=true",
                             "meta.lr=1e-3", "meta.rate_lr_scale=30"])
    rest, rates = outer_param_groups(opt, cfg.meta)
    assert rates["params"] == [opt.head.log_rate] and rates["lr"] == pytest.approx(0.03)
    assert rates["weight_decay"] == 0.0 and "lr" not in rest
    assert len(rest["params"]) == len(list(opt.parameters())) - 1
    with pytest.raises(ConfigError, match="rate_lr_scale"):
        load_config(None, ["meta.rate_lr_scale=0"])
