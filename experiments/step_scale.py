"""Is a learned rule's step size what limits it on a longer, different task? Its steps times a constant, evaluated.

    python -m experiments.step_scale --checkpoint default=results/checkpoints/default.pt \\
        --factors 0.7 1.0 1.4 --task cifar10-conv --seeds 0 1

Meta-training sees fmnist-conv for at most 1000 steps (truncations of 200); evaluation runs cifar10-conv for 1000
steps from a different initialisation scale. A rule meta-trained on short truncations is known to prefer steps
shorter than a longer run wants (short-horizon bias), and an absolute rule's steps are a different fraction of
cifar10-conv's smaller weights. Scaling every step of the rule by ``factor`` (the last layer's step output row times
``factor``: ``lam d exp(lam m)`` is linear in ``d``) and evaluating shows which way, and how far, its step is off.

This is a diagnostic on the test split, with few seeds: it picks nothing that is shipped. A factor chosen for a
shipped rule would have to come from the meta-training task's validation split.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from l2o.optim.checkpoint import load_checkpoint, save_checkpoint

OUT = Path("results/experiments/step-scale")
SCALED = Path("runs/step-scale")  # the scaled checkpoints (rewritten by every call; not results)


def scaled_checkpoint(source: Path, out: Path, factor: float) -> Path:
    """Write ``source``'s rule (an ``mlp`` step rule) with every step multiplied by ``factor``."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    optimizer, config, payload = load_checkpoint(source)
    if config.step_rule != "mlp":
        raise SystemExit(f"{source}: step_rule={config.step_rule!r}; scaling is implemented for the 'mlp' rule "
                         f"(its step is linear in the output row 0)")
    with torch.no_grad():
        optimizer.head.out.weight[0].mul_(factor)
        optimizer.head.out.bias[0].mul_(factor)
    summary = {**payload.get("summary", {}), "step_scale_note": f"{source} with every step x {factor}"}
    return save_checkpoint(out, optimizer, config, summary)


def summary_rows(results: dict, factors: dict[str, float]) -> list[dict]:
    """Per evaluated rule: label, factor, final test accuracy mean / std and per seed, the paired difference
    against the same source's factor 1 (when evaluated)."""
    rows, by_label = [], results["runs"]
    for label, entry in by_label.items():
        accs = {r.seed: 100 * r.acc for r in entry.runs}
        base_label = label.rsplit("@", 1)[0] + "@1"
        base = {r.seed: 100 * r.acc for r in by_label[base_label].runs} if base_label in by_label else None
        diffs = [accs[s] - base[s] for s in accs if base and s in base]
        finite = [a for a in accs.values() if math.isfinite(a)]
        rows.append({"optimizer": label, "factor": factors[label], "seeds": sorted(accs),
                     "acc_mean": statistics.fmean(finite) if finite else float("nan"),
                     "acc_std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
                     "acc_per_seed": [accs[s] for s in sorted(accs)],
                     "vs_factor_1": statistics.fmean(diffs) if diffs and label != base_label else None})
    return rows


def main(argv: list[str] | None = None) -> None:
    from meta_train.evaluate import evaluate

    ap = argparse.ArgumentParser(prog="python -m experiments.step_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True, metavar="LABEL=PATH", help="'mlp' rules to scale")
    ap.add_argument("--factors", nargs="+", type=float, default=[0.7, 1.0, 1.4])
    ap.add_argument("--task", default="cifar10-conv")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    specs, factors = [], {}
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--checkpoint {item!r}: expected LABEL=PATH of an existing checkpoint")
        for factor in args.factors:
            name = f"{label}@{factor:g}"
            ckpt = scaled_checkpoint(Path(path), SCALED / f"{name}.pt", factor)
            specs.append(f"{name}={ckpt}")
            factors[name] = factor
    results = evaluate(args.task, specs, args.steps, args.seeds, args.out / args.task, resume=True)
    rows = summary_rows(results, factors)
    lines = [f"# Steps x factor on {args.task}, {args.steps} steps, seeds {args.seeds} (test accuracy %; a "
             "diagnostic, nothing is picked from it)", "",
             "| rule @ factor | acc % (mean +- std) | per seed | vs factor 1, paired |", "|---|---|---|---|"]
    for r in rows:
        vs = "" if r["vs_factor_1"] is None else f"{r['vs_factor_1']:+.2f}"
        lines.append(f"| {r['optimizer']} | {r['acc_mean']:.2f} +- {r['acc_std']:.2f} | "
                     f"{' / '.join(f'{a:.2f}' for a in r['acc_per_seed'])} | {vs} |")
    (args.out / f"{args.task}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.task}.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
