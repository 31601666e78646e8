"""Weight averages ("soups") of learned rules meta-trained from one warm start, evaluated beside their parts.

    python -m experiments.rule_soup --name continued-seeds01 \\
        --parts results/experiments/reference-recipe/checkpoints/ng-gnn-32x2-from-ff-h1000-window-continued-lr3e-4.pt \\
                results/experiments/reference-recipe/checkpoints/ng-gnn-32x2-from-ff-h1000-window-continued-lr3e-4-seed1.pt \\
        --task cifar10-conv --seeds 0 1

Why: the continuations of the graph default's recipe land 58.0-63.8 % on CIFAR-10 from nearly the same Fashion-MNIST
validation (87.5-88.1 %), and every further continuation of the default scored below it: which run transfers best is
close to chance. Rules meta-trained from the same warm start may sit in one basin, where their average keeps what
they share and averages out what each run picked up from its own task draws (as model soups do for fine-tuned
networks). A diagnostic on the test split with the evaluation seeds given: the parts are evaluated on the same
seeds, paired; nothing is shipped from it.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

OUT = Path("results/experiments/rule-soup")
SOUPS = Path("runs/rule-soup")  # the averaged checkpoints (rewritten by every call; not results)


def average_rules(parts: list[Path], out: Path) -> Path:
    """Write the element-wise mean of the weights of ``parts`` (same config, same weight names and shapes)."""
    if len(parts) < 2:
        raise ValueError(f"a soup needs at least two rules, got {len(parts)}")
    loaded = [load_checkpoint(p) for p in parts]
    config = loaded[0][1]
    for path, (_, cfg, _) in zip(parts[1:], loaded[1:]):
        if cfg != config:
            raise SystemExit(f"{path}: its optimizer config differs from {parts[0]}'s; only rules of one config average")
    optimizer = loaded[0][0]
    states = [opt.state_dict() for opt, _, _ in loaded]
    optimizer.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                               for k in states[0]})
    return save_checkpoint(out, optimizer, config, {"soup_of": [str(p) for p in parts]})


def main(argv: list[str] | None = None) -> None:
    from meta_train.evaluate import evaluate

    ap = argparse.ArgumentParser(prog="python -m experiments.rule_soup", description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True, help="the soup's label")
    ap.add_argument("--parts", nargs="+", type=Path, required=True, help="checkpoints of one optimizer config")
    ap.add_argument("--task", default="cifar10-conv")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.parts if not p.is_file()]
    if missing:
        ap.error(f"--parts: no such checkpoint {missing}")
    soup = average_rules(args.parts, SOUPS / f"{args.name}.pt")
    specs = [f"soup:{args.name}={soup}", *(f"{p.stem}={p}" for p in args.parts)]
    results = evaluate(args.task, specs, args.steps, args.seeds, args.out / args.name / args.task, resume=True)
    acc = {label: {r.seed: 100 * r.acc for r in entry.runs} for label, entry in results["runs"].items()}
    soup_acc = acc[f"soup:{args.name}"]
    lines = [f"# Soup {args.name} on {args.task}, {args.steps} steps, seeds {args.seeds} (test accuracy %; a "
             "diagnostic)", "", "| rule | acc % per seed | mean | soup - rule, paired |", "|---|---|---|---|"]
    rows = []
    for label, by_seed in acc.items():
        diff = statistics.fmean(soup_acc[s] - by_seed[s] for s in by_seed) if by_seed is not soup_acc else None
        rows.append({"rule": label, "acc_per_seed": [by_seed[s] for s in args.seeds],
                     "mean": statistics.fmean(by_seed.values()), "soup_minus_rule": diff})
        lines.append(f"| {label} | {' / '.join(f'{by_seed[s]:.2f}' for s in args.seeds)} | "
                     f"{rows[-1]['mean']:.2f} | {'' if diff is None else f'{diff:+.2f}'} |")
    (args.out / args.name / f"{args.task}.md").write_text("\n".join(lines) + "\n")
    (args.out / args.name / f"{args.task}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
