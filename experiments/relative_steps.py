"""A learned rule made relative: each step times its tensor's initial RMS, started exactly where an absolute rule is.

    python -m experiments.relative_steps warm-start --source results/checkpoints/default.pt \\
        --out results/experiments/relative-steps/checkpoints/default-relative-start.pt
    python -m experiments.relative_steps probe --checkpoint results/checkpoints/default.pt \\
        --tasks cifar10-conv cifar10-conv-w128

Why: the graph default takes absolute steps (the reference's ``mlp`` rule) whose size its embedding fixes from
structure that does not change with width (relative degree scalers, mean aggregation, LayerNorm), so at 4x the
meta-training width, where the initialisation is half as large, it moves the wide layers twice as far relative to
their scale and grows them until the loss spikes (``results/experiments/update-outliers``). With
``optimizer.relative = true`` the same output is a step in units of the tensor's initial RMS.

``warm-start`` writes the relative rule that starts as the absolute one on the meta-training task: the head's step
output ``d`` (row 0 of its last layer) is divided by ``ref``, the initial RMS of the task's median *element* (tensors
weighted by size, so the large hidden layers set it), so on a tensor of RMS ``ref`` the step is unchanged (elsewhere
it scales with the tensor: what meta-training then adapts).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

OUT = Path("results/experiments/relative-steps")


def _median_element(rms: list[tuple[float, int]]) -> float:
    """The value of the median element of ``(value, numel)`` tensors (weighted by size)."""
    rms = sorted(rms)
    half, seen = sum(n for _, n in rms) / 2, 0
    for value, n in rms:
        seen += n
        if seen >= half:
            return value
    raise ValueError("no parameters")


def reference_rms(task_name: str, seed: int = 0) -> float:
    """The initial RMS of its tensor for the median element of ``task_name``'s model (seed ``seed``)."""
    from tasks import get_task

    model = get_task(task_name).make_model(seed)
    return _median_element([(p.detach().pow(2).mean().sqrt().item(), p.numel()) for p in model.parameters()])


def category_rms(task_name: str, seed: int = 0) -> dict[str, float]:
    """Per tensor category (``l2o.optim.context.CATEGORIES``) present in ``task_name``'s model: the initial RMS of
    its tensor for the category's median element."""
    from l2o.graph import NeuralGraph
    from l2o.optim.context import CATEGORIES, ParamContext
    from tasks import get_task

    model = get_task(task_name).make_model(seed)
    ctx = ParamContext.for_graph(NeuralGraph.from_module(model))  # the categories a graph optimizer sees
    by_cat: dict[str, list] = {}
    for name, p in model.named_parameters():
        cat = CATEGORIES[int(ctx.category[ctx.names.index(name)])]
        by_cat.setdefault(cat, []).append((p.detach().pow(2).mean().sqrt().item(), p.numel()))
    return {cat: _median_element(v) for cat, v in by_cat.items()}


def relative_warm_start(source: Path, out: Path, task_name: str, per_category: bool = False,
                        rate_cap: float = 0.0) -> dict[str, float]:
    """Write ``source``'s rule with ``relative = True`` that starts as ``source`` on ``task_name``; returns the
    reference RMS used (``{"all": ref}``, or one per category).

    Without ``per_category`` the step output is divided by one reference RMS (the task's median element): exact on
    tensors of that RMS only. With it the rule gets learned category rates (``category_rates``) set to
    ``1 / RMS`` of each category's median element, exact on every layer whose category has one tensor."""
    from l2o.optim.config import build_optimizer
    from l2o.optim.context import CATEGORIES

    optimizer, config, payload = load_checkpoint(source)
    if config.step_rule != "mlp" or config.relative or config.category_rates:
        raise SystemExit(f"{source}: expected an absolute 'mlp' rule without category rates, got "
                         f"step_rule={config.step_rule!r}, relative={config.relative}, "
                         f"category_rates={config.category_rates}")
    config = replace(config, relative=True, category_rates=per_category, rate_cap=rate_cap)
    if per_category:
        refs = category_rms(task_name)
        fallback = reference_rms(task_name)  # for categories the task lacks
        new = build_optimizer(config)
        new.load_state_dict(optimizer.state_dict(), strict=False)
        with torch.no_grad():
            new.head.log_rate.copy_(torch.tensor([-math.log(refs.get(c, fallback)) for c in CATEGORIES]))
        optimizer = new
        note = ("relative warm start of {}: category rates 1 / ({}) (initial tensor RMS of each category's median "
                "element of {}; {:.5g} for the others)").format(
                    source, ", ".join(f"{c} {v:.5g}" for c, v in refs.items()), task_name, fallback)
    else:
        refs = {"all": reference_rms(task_name)}
        with torch.no_grad():
            optimizer.head.out.weight[0].div_(refs["all"])
            optimizer.head.out.bias[0].div_(refs["all"])
        note = (f"relative warm start of {source}: step output divided by {refs['all']:.5g} (initial tensor RMS of "
                f"the median element of {task_name})")
    if rate_cap:
        note += f"; each element's multiplier capped at {rate_cap:g} (rate_cap)"
    summary = {**payload.get("summary", {}), "warm_start_note": note}
    save_checkpoint(out, optimizer, config, summary)
    print(note, "->", out)
    return refs


def capped_tensors(checkpoint: Path, task_name: str, seeds: list[int]) -> dict[int, list[tuple[str, float]]]:
    """Per seed of ``task_name``: the tensors whose multiplier (initial RMS x category rate, the head's own floor
    included) is above the checkpoint's ``rate_cap`` (beyond rounding), with the uncapped value. Where none is, the
    capped rule takes exactly the steps of the same rule without the cap, so its evaluations there carry over."""
    from l2o.graph import NeuralGraph
    from l2o.optim.context import ParamContext
    from l2o.optim.heads import relative_scale
    from tasks import get_task

    optimizer, config, _ = load_checkpoint(checkpoint)
    if not (config.relative and config.category_rates and config.rate_cap):
        raise SystemExit(f"{checkpoint}: expected a relative rule with category rates and a rate_cap")
    out = {}
    for seed in seeds:
        model = get_task(task_name).make_model(seed)
        ctx = ParamContext.for_graph(NeuralGraph.from_module(model))
        named = dict(model.named_parameters())
        params = ctx.flatten([named[n].detach() for n in ctx.names])
        with torch.no_grad():
            mult = optimizer.head.multiplier(ctx, relative_scale(ctx, params))
        # one value per tensor; beyond rounding only (on the warm-start task RMS x 1/RMS is 1)
        per_tensor = [(name, m.reshape(-1)[0].item()) for name, m in zip(ctx.names, ctx.split(mult))]
        out[seed] = [(name, m) for name, m in per_tensor if m > config.rate_cap * (1 + 1e-5)]
    return out


AGGREGATES = ("mean", "min", "max", "std")


@torch.no_grad()
def probe_width(optimizer, task, steps: int, seed: int = 0) -> dict:
    """What a graph optimizer's encoder sees and gives on ``task`` over ``steps`` evaluation steps (the run of
    ``meta_train.evaluate``: same model seed, batches and update).

    Returns ``{"aggregates": [steps][layers][4] (mean |.| of each PNA aggregate, mean/min/max/std, over the nodes
    that receive messages, identity scaler), "embedding_rms": [steps][tensors] (RMS of the head's projected
    embedding over each tensor's elements), "tensors": [names]}``.
    """
    from l2o.encoders.ng_gnn import NGGNNLayer
    from meta_train.inner_train import loss_and_grad, start_optimizee

    seen: dict = {"agg": [], "emb": None}

    def grab_aggregates(module, args):  # node_mlp's input: [x, per relation 4 aggregates x (identity, amplified)]
        z = args[0]
        d = z.shape[1] // (1 + 2 * len(AGGREGATES) * module.relations)
        seen["agg"].append([z[:, (1 + k) * d:(2 + k) * d].abs().mean().item() for k in range(len(AGGREGATES))])

    hooks = [m.node_mlp.register_forward_pre_hook(lambda mod, args, layer=m: grab_aggregates(layer, args))
             for m in optimizer.modules() if isinstance(m, NGGNNLayer)]
    if not hooks:
        raise SystemExit("probe: the optimizer has no NG-GNN layers (an ng-gnn checkpoint is needed)")
    encode, encode_rows = optimizer.encoder.encode_projected, optimizer.encoder.encode_projected_rows

    def grab_embedding(graph, node, edge, weight):  # the autograd path
        out = encode(graph, node, edge, weight)
        seen["emb"] = graph.gather_flat(*out)
        return out

    def grab_rows(graph, node, edge, weight):  # the optimizer step's path (no autograd)
        rows = encode_rows(graph, node, edge, weight)
        seen["emb"] = rows.materialize()
        return rows

    optimizer.encoder.encode_projected = grab_embedding
    optimizer.encoder.encode_projected_rows = grab_rows
    try:
        model, ctx, params, state = start_optimizee(optimizer, task, seed, torch.device("cpu"))
        stream = task.batches("train", seed=seed)
        rec = {"tensors": list(ctx.names), "aggregates": [], "embedding_rms": []}
        for step in range(steps):
            x, y = stream.batch(step)
            _, grad = loss_and_grad(model, ctx, task.loss, params, x, y)
            seen["agg"].clear()
            params, state = optimizer.update(ctx, params, grad, state, 1.0)
            emb = ctx.from_graph_part(seen["emb"])
            rec["aggregates"].append(list(seen["agg"]))
            rec["embedding_rms"].append([t.pow(2).mean().sqrt().item() for t in ctx.split(emb)])
    finally:
        for h in hooks:
            h.remove()
        del optimizer.encoder.encode_projected, optimizer.encoder.encode_projected_rows
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.relative_steps", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ws = sub.add_parser("warm-start", help="write the relative rule that starts as an absolute one")
    ws.add_argument("--source", type=Path, required=True, help="checkpoint of an absolute 'mlp' rule")
    ws.add_argument("--out", type=Path, required=True)
    ws.add_argument("--task", default="fmnist-conv", help="meta-training task whose tensors set the reference RMS")
    ws.add_argument("--per-category", action="store_true",
                    help="one reference RMS per tensor category, as learned category rates (exact on every layer)")
    ws.add_argument("--rate-cap", type=float, default=0.0,
                    help="cap each element's multiplier (initial RMS x category rate); 1 = never a larger step than "
                         "the source rule (default 0: no cap)")
    cc = sub.add_parser("cap-check", help="the tensors on which a capped rule's cap binds, per task and seed")
    cc.add_argument("--checkpoint", type=Path, required=True)
    cc.add_argument("--tasks", nargs="+", required=True)
    cc.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    pr = sub.add_parser("probe", help="the encoder's aggregates and embedding sizes on tasks of several widths")
    pr.add_argument("--checkpoint", type=Path, required=True, help="an ng-gnn optimizer checkpoint")
    pr.add_argument("--tasks", nargs="+", default=["cifar10-conv", "cifar10-conv-w128"])
    pr.add_argument("--steps", type=int, default=40)
    pr.add_argument("--out", type=Path, default=OUT / "probe.json")
    args = ap.parse_args(argv)
    if args.cmd == "warm-start":
        relative_warm_start(args.source, args.out, args.task, args.per_category, args.rate_cap)
        return
    if args.cmd == "cap-check":
        for name in args.tasks:
            for seed, over in capped_tensors(args.checkpoint, name, args.seeds).items():
                print(f"{name} seed {seed}: " + (", ".join(f"{t} {m:.3g}" for t, m in over) if over else
                                                 "the cap never binds (the same steps as without it)"))
        return
    from tasks import get_task

    optimizer, _, _ = load_checkpoint(args.checkpoint)
    records = {"checkpoint": str(args.checkpoint), "steps": args.steps}
    for name in args.tasks:
        rec = records[name] = probe_width(optimizer, get_task(name), args.steps)
        for step in (0, args.steps - 1):
            aggs = " | ".join("/".join(f"{v:.3f}" for v in layer) for layer in rec["aggregates"][step])
            embs = ", ".join(f"{t} {v:.3f}" for t, v in zip(rec["tensors"], rec["embedding_rms"][step]))
            print(f"{name} step {step}: aggregates mean/min/max/std by layer {aggs}; embedding RMS {embs}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
