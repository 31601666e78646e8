"""Shipping meta-trained optimizers: ``results/checkpoints/<name>.pt`` with a model card, the checkpoint index, and
``default.pt`` (the default of ``NeuralGraphOptimizer(model)``, also copied into the package data).

Stage ``train`` / ``ship`` of ``python -m meta_train results``; the folders are :mod:`results_plan`'s.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from l2o.optim import GRAPH_FAMILIES, build_optimizer, read_checkpoint

from ..config import load_config
from ..train import validate
from . import results_plan as plan


def ship(name: str, run: Path, reproduce: str | None = None) -> Path:
    """Copy a finished run's ``best.pt`` to ``results/checkpoints/<name>.pt`` and write its model card;
    ``reproduce``: the card's command line (default: this pipeline's, for a :data:`results_plan.SHIPPED` name).

    ``run`` may also be a checkpoint file (``.pt``) that no run folder holds, such as a rule derived from a shipped
    one without further meta-training: it is copied as it is, and its card says what it was derived from (the
    ``warm_start_note`` of its summary)."""
    reproduce = reproduce or _reproduce(name)  # before anything is copied: a name it cannot describe ships nothing
    source = run if run.suffix == ".pt" else run / "best.pt"
    if not source.is_file():
        raise FileNotFoundError(f"ship {name}: no {source} (meta-train the run first, or pass an existing .pt file)")
    plan.CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    dst = plan.CHECKPOINTS / f"{name}.pt"
    shutil.copyfile(source, dst)
    payload = read_checkpoint(dst)
    summary, cfg = payload["summary"], payload["config"]
    meta = json.loads(summary.get("meta", "{}"))
    m, t = meta.get("meta", {}), meta.get("tasks", {})
    n_params = sum(v.numel() for v in payload["state_dict"].values())
    own = summary.get("val_score") is not None  # a kept validated file: its own score and step
    score = summary["val_score"] if own else summary.get("best_val_score")
    step = summary.get("outer_step") if own else summary.get("best_step")
    minutes = _run_minutes(run) if source != run else float("nan")
    wall = (f"{minutes:.1f} min for the whole run" if minutes == minutes else  # nan: no metrics.jsonl came with it
            f"{summary.get('wall_s', float('nan')) / 60:.1f} min to this checkpoint")
    card = [
        f"# `{name}.pt`: {cfg['family']} learned optimizer", "",
        (f"- **Family / config:** `{cfg['family']}`, hidden {cfg['hidden']}, depth {cfg['depth']}, head hidden "
         f"{cfg['head_hidden']}, Adam residual {cfg['adam_residual']} (initial "
         f"{'relative rate' if cfg.get('relative') else 'lr'} {cfg['adam_lr']}, per-element "
         f"multiplier range e^+-{cfg.get('adam_scale', 0.0)}, additive term {cfg.get('additive', True)}), features "
         f"`{cfg['preprocess']}`, encoder options {cfg['encoder_options'] or '{}'}; {n_params:,} meta-parameters."),
        (f"- **Meta-training data:** Fashion-MNIST CNN family `{t.get('family')}` (width multipliers "
         f"{t.get('widths')}, depths {t.get('depths')}), training split only; validation on `fmnist-conv` "
         f"({meta.get('run', {}).get('validation_steps')} inner steps, validation split)."),
        (f"- **Budget:** {m.get('outer_steps')} outer steps x {m.get('tasks_per_process')} tasks x truncation "
         f"{m.get('truncation')} ({m.get('estimator')}"
         f"{', window ' + str(m.get('window')) if m.get('estimator') == 'window' else ''}, horizons "
         f"{m.get('horizon')}..{m.get('horizon_max')}), "
         f"meta-lr {m.get('lr')}, meta-training seed {meta.get('run', {}).get('seed')}."),
        *([f"- **Starts from:** the rule in `{m['init_from']}` (`meta.init_from`; the budget above is what was "
           f"added to it)."] if m.get("init_from") else []),
        *([f"- **Derived after meta-training, not meta-trained since:** {summary['warm_start_note']}. The budget, "
           f"selection and wall time on this card are those of the rule it was derived from."]
          if summary.get("warm_start_note") else []),
        (f"- **Selected:** outer step {step} of {m.get('outer_steps')} by Fashion-MNIST validation accuracy "
         f"{pct(score)}."),
        f"- **Wall time:** {wall} on {summary.get('machine')} (shared with other jobs, so an upper bound).",
        f"- **Commit:** `{summary.get('commit')}`.",
        f"- **Reproduce:** {reproduce}", ""]
    dst.with_suffix(".md").write_text("\n".join(card))
    print(f"   shipped {dst} (+ model card)")
    return dst


def _reproduce(name: str) -> str:
    if name not in plan.SHIPPED:
        raise ValueError(f"{name!r} is not trained by this pipeline ({', '.join(plan.SHIPPED)}): pass ship() the "
                         "command that reproduces it")
    return (f"`python -m meta_train results --stages train --only {name}` "
            f"(config `meta_train/configs/{plan.SHIPPED[name][0]}`, seed {plan.SHIPPED[name][1]}).")


def _run_minutes(run: Path) -> float:
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] if (
        run / "metrics.jsonl").exists() else []
    return json.loads(lines[-1])["wall_s"] / 60 if lines else float("nan")


def pct(x) -> str:
    """A fraction as a percentage with two decimals, ``n/a`` when missing."""
    return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "n/a"


def reference_validation(config: str = "ng-gnn.toml") -> dict:
    """The meta-training validation score of the *untrained* optimizer: the line every meta-trained checkpoint has to
    clear. With the shared budget's zero-initialised head every family's untrained optimizer is exactly the same
    (relative) Adam, so it is measured with the cheapest family (FF). Cached in ``results/checkpoints/reference.json``."""
    path = plan.CHECKPOINTS / "reference.json"
    cfg = load_config(plan.CONFIGS / config, [])
    o = cfg.optimizer
    key = {"validation_task": cfg.run.validation_task, "validation_steps": cfg.run.validation_steps,
           "validation_seeds": cfg.run.validation_seeds, "adam_lr": o.adam_lr, "relative": o.relative}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    untrained = build_optimizer(replace(o, family="ff"))
    label = f"{'relative ' if o.relative else ''}Adam at {'rate' if o.relative else 'lr'} {o.adam_lr:g}"
    ref = {"key": key, "optimizer": label, "val_score": validate(untrained, cfg, "cpu")}
    plan.CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref, indent=2) + "\n")
    return ref


def write_index() -> None:
    """``results/checkpoints/README.md``: every shipped checkpoint with its selection score beside the reference."""
    ref, pin = reference_validation(), pinned_default()
    how = (f"is `{pin['pinned']}.pt`, pinned by `default.json` ({pin['reason'].rstrip('.')})" if pin else
           "is the graph optimizer with the best Fashion-MNIST validation accuracy")
    lines = ["# Shipped learned optimizers", "",
             "Meta-trained on the Fashion-MNIST CNN family with one shared budget (`meta_train/configs/fmnist.toml`) by "
             "`python -m meta_train results --stages train`, except where a card says otherwise; each file has a "
             f"model card (`<name>.md`). `default.pt` (the default of `NeuralGraphOptimizer(model)`) {how}.", "",
             f"Validation: `{ref['key']['validation_task']}` validation split, {ref['key']['validation_steps']} inner "
             f"steps, {ref['key']['validation_seeds']} seeds. The untrained optimizer of every family is exactly "
             f"{ref.get('optimizer', 'Adam')}, which scores **{pct(ref['val_score'])}**.", "",
             "| checkpoint | family | FMNIST validation | selected outer step | meta-parameters |", "|---|---|---|---|---|"]
    for name in dict.fromkeys([*shipped_names(), *plan.PACKAGED]):
        path = plan.CHECKPOINTS / f"{name}.pt"
        if path.exists():
            payload = read_checkpoint(path)
            summary = payload["summary"]
            n = sum(v.numel() for v in payload["state_dict"].values())
            lines.append(f"| `{name}.pt` | {payload['family']} | {pct(summary.get('best_val_score'))} | "
                         f"{summary.get('best_step')} | {n:,} |")
    (plan.CHECKPOINTS / "README.md").write_text("\n".join(lines) + "\n")


def pin_default(name: str, reason: str) -> Path:
    """Make the shipped ``results/checkpoints/<name>.pt`` the default, and keep it so: :func:`choose_default` then
    leaves it in place (``default.json`` records the choice and ``reason``, Markdown, for the card)."""
    if read_checkpoint(plan.CHECKPOINTS / f"{name}.pt")["family"] not in GRAPH_FAMILIES:
        raise ValueError(f"{name}.pt is not a graph optimizer ({', '.join(GRAPH_FAMILIES)}): the default must be one")
    (plan.CHECKPOINTS / "default.json").write_text(json.dumps({"pinned": name, "reason": reason}, indent=2) + "\n")
    return choose_default()


def shipped_names() -> list[str]:
    """The names of :data:`results_plan.SHIPPED`, then a pinned default that this pipeline does not train."""
    pin = pinned_default()
    return [*plan.SHIPPED, *([pin["pinned"]] if pin and pin["pinned"] not in plan.SHIPPED else [])]


def pinned_default() -> dict | None:
    """``{"pinned": name, "reason": ...}`` when :func:`pin_default` chose the default, else None."""
    path = plan.CHECKPOINTS / "default.json"
    return json.loads(path.read_text()) if path.is_file() else None


def choose_default() -> Path | None:
    """``default.pt``: the pinned checkpoint (:func:`pin_default`) if there is one, else the graph optimizer with the
    best Fashion-MNIST validation accuracy."""
    pin = pinned_default()
    if pin is not None:
        if not (plan.CHECKPOINTS / f"{pin['pinned']}.pt").is_file():
            raise FileNotFoundError(f"default.json pins {pin['pinned']}.pt, which is not in {plan.CHECKPOINTS}: ship "
                                    "it again or delete default.json to choose by validation")
        return _install_default(pin["pinned"], (
            f"The default of `NeuralGraphOptimizer(model)`, pinned (`default.json`). {pin['reason']} "
            f"See `{pin['pinned']}.md` for its card.\n"))
    scored = []
    for name in shipped_names():
        path = plan.CHECKPOINTS / f"{name}.pt"
        if path.exists():
            payload = read_checkpoint(path)
            if payload["family"] in GRAPH_FAMILIES and payload["summary"].get("best_val_score") is not None:
                scored.append((payload["summary"]["best_val_score"], name))
    if not scored:
        return None
    score, name = max(scored)
    print(f"== default.pt = {name}.pt (Fashion-MNIST validation {pct(score)})")
    return _install_default(name, (
        f"The default of `NeuralGraphOptimizer(model)`: of the shipped graph optimizers "
        f"({', '.join(n for _, n in sorted(scored, reverse=True))}), the one with the best Fashion-MNIST validation "
        f"accuracy ({pct(score)}). See `{name}.md` for its card.\n"))


def _install_default(name: str, why: str) -> Path:
    """Copy ``<name>.pt`` to ``default.pt`` and into the package data (with its card), and write ``default.md``."""
    dst = plan.CHECKPOINTS / "default.pt"
    shutil.copyfile(plan.CHECKPOINTS / f"{name}.pt", dst)
    shutil.copyfile(dst, plan.PRETRAINED / "default.pt")  # the package data the wheel ships, with its card
    shutil.copyfile(plan.CHECKPOINTS / f"{name}.md", plan.PRETRAINED / "default.md")
    for other in plan.PACKAGED:  # named checkpoints the wheel carries too
        for suffix in (".pt", ".md"):
            if (plan.CHECKPOINTS / f"{other}{suffix}").is_file():
                shutil.copyfile(plan.CHECKPOINTS / f"{other}{suffix}", plan.PRETRAINED / f"{other}{suffix}")
    dst.with_suffix(".md").write_text(f"# `default.pt` = `{name}.pt`\n\n{why}")
    write_index()
    return dst
