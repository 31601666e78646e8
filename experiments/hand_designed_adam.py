"""Hand-designed Adam variants: where should the learning rate be, per data set, per layer and per depth?

Asks whether hand-designed changes to Adam (a tuned rate per data set, batch size or layer, a schedule, a step
relative to each tensor's scale) have headroom over one tuned global rate, and whether the best relative rate
depends on the network's depth. Single runs of 1000 steps, seed 1000 (``adam-schedule``: seeds 1000 and 1001),
batch 128 unless stated, accuracy on the project's *validation* split (never the test set). Each subcommand prints
one line per argument, ``ARGUMENT accuracy-%``; the table in ``results/experiments/hand-designed-adam/README.md``
holds those lines (the study writes no file). Run from the repository root with ``L2O_DATA`` set and
``OMP_NUM_THREADS=1``:

    python -m experiments.hand_designed_adam adam-grid cifar10-conv-w16@3e-3 fmnist-conv@2e-2   # TASK@LR
    python -m experiments.hand_designed_adam adam-batch 16@3e-3 32@1e-2        # Fashion-MNIST CNN, BATCH@LR
    python -m experiments.hand_designed_adam adam-schedule cifar10-conv 3e-3:const 3e-3:cos    # LR:SCHEDULE
    python -m experiments.hand_designed_adam adam-layers in=1e-2               # CIFAR-10, per-layer rates
    python -m experiments.hand_designed_adam relative cifar10-conv@0.07 cifar10-conv@0.1@live  # TASK@ETA[@live]
    python -m experiments.hand_designed_adam relative-depth --data mnist 1@0.3 5@0.1          # DEPTH@ETA
    python -m experiments.hand_designed_adam relative --device cuda cifar10-conv@0.07         # any of them on a GPU

``adam-grid`` and ``adam-batch`` train with this package's functional Adam (``l2o.optim``, family "adam"), the
others with ``torch.optim.Adam`` (the two agree: ``tests/test_optim.py::test_hand_designed_match_torch``).
*Relative Adam* is Adam with one rate per tensor, ``eta`` x the tensor's RMS at initialisation
(:func:`relative_adam`; the library's version is the optimizer family "relative-adam", which also floors the RMS).
Every subcommand takes ``--device`` (default cpu; cpu | cuda | cuda:N): where the models, optimizers and batches go.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

import torch

from l2o.optim import OptimizerConfig, build_optimizer
from meta_train.inner_train import train_optimizee
from tasks import Task, channels_for, conv_task, get_task
from tasks.devices import device_or_exit

SEED, STEPS = 1000, 1000
SCHEDULE_SEEDS = (1000, 1001)
SCHEDULES = ("const", "cos", "lin", "wcos")
LAYER_KEYS = ("lr", "in", "hid", "out", "b2", "decay_to")
FMNIST_CHANNELS = (16, 32, 32)  # the Fashion-MNIST CNN; relative-depth cuts it or extends it with 32s to a depth


def relative_adam(model: torch.nn.Module, eta: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` with one group per tensor at ``lr = eta x RMS(tensor)`` read now (call it at init)."""
    return torch.optim.Adam([{"params": [p], "lr": eta * rms(p)} for p in model.parameters()])


def rms(p: torch.Tensor) -> float:
    return float(p.detach().pow(2).mean().sqrt())


def train_torch(task: Task, model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int = SEED,
                steps: int = STEPS, before_step: Callable[[int], None] | None = None) -> float:
    """Train ``model`` with ``opt`` on batches ``0..steps-1`` of the seeded train stream; validation accuracy.

    ``before_step(t)`` runs at the start of step ``t`` (it sets learning rates). The batches go to the model's device
    (the evaluation too)."""
    stream = task.batches("train", seed=seed, device=next(model.parameters()).device)
    for t in range(steps):
        if before_step is not None:
            before_step(t)
        x, y = stream.batch(t)
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return task.evaluate(model, "val")["acc"]


def show(arg: str, acc) -> None:
    value = [round(100 * a, 2) for a in acc] if isinstance(acc, list) else round(100 * acc, 2)
    print(arg, value, flush=True)


# ---------------------------------------------------------------------------------------- Adam, one global rate
def adam_functional(task: Task, lr: float, steps: int = STEPS, device: str | torch.device = "cpu") -> float:
    """This package's functional Adam at rate ``lr``: validation accuracy after ``steps`` steps on ``device``."""
    opt = build_optimizer(OptimizerConfig(family="adam", lr=lr)).to(device)
    return train_optimizee(opt, task, steps, seed=SEED, device=device, eval_split="val")["acc"]


def adam_grid(specs: list[str], steps: int, device: str | torch.device = "cpu") -> None:
    """``TASK@LR``: a registered task at one Adam rate."""
    for spec in specs:
        name, lr = spec.split("@")
        show(spec, adam_functional(get_task(name), float(lr), steps, device))


def adam_batch(specs: list[str], device: str | torch.device = "cpu") -> None:
    """``BATCH@LR``: the Fashion-MNIST CNN (channels 16, 32, 32) at another batch size (gradient noise)."""
    for spec in specs:
        bs, lr = spec.split("@")
        task = conv_task("fashion-mnist", FMNIST_CHANNELS, batch_size=int(bs))
        show(spec, adam_functional(task, float(lr), device=device))


def schedule_factor(schedule: str, t: int, steps: int) -> float:
    """The rate multiplier at step ``t``: constant, cosine to 0, linear to 0, or 50 warm-up steps then cosine."""
    cosine = 0.5 * (1 + math.cos(math.pi * t / steps))
    return {"const": 1.0, "cos": cosine, "lin": 1 - t / steps, "wcos": min(1.0, (t + 1) / 50) * cosine}[schedule]


def adam_schedule_run(task: Task, lr: float, schedule: str, seed: int, steps: int = STEPS,
                      device: str | torch.device = "cpu") -> float:
    torch.manual_seed(seed)
    model = task.make_model(seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def set_rate(t: int) -> None:
        for g in opt.param_groups:
            g["lr"] = lr * schedule_factor(schedule, t, steps)

    return train_torch(task, model, opt, seed, steps, set_rate)


def adam_schedule(task_name: str, specs: list[str], device: str | torch.device = "cpu") -> None:
    """``LR:SCHEDULE``: Adam with a learning-rate schedule, on two seeds."""
    task = get_task(task_name)
    for spec in specs:
        lr, schedule = spec.split(":")
        if schedule not in SCHEDULES:
            raise SystemExit(f"unknown schedule {schedule!r} in {spec!r}: use one of {', '.join(SCHEDULES)}")
        show(spec, [adam_schedule_run(task, float(lr), schedule, s, device=device) for s in SCHEDULE_SEEDS])


# ----------------------------------------------------------------------------------------- Adam, per-layer rates
def parse_layer_spec(spec: str) -> dict[str, float]:
    """``"lr=3e-3,in=1e-2,..."`` -> settings: lr (all layers), in / hid / out (first conv / hidden / last layer,
    default lr), b2 (Adam's beta2), decay_to (exponential decay from each rate to decay_to x it; 0 = none)."""
    settings = {"lr": 3e-3, "in": None, "hid": None, "out": None, "b2": 0.999, "decay_to": 0}
    for item in spec.split(","):
        key, value = item.split("=")
        if key not in LAYER_KEYS:
            raise SystemExit(f"unknown key {key!r} in {spec!r}: use {', '.join(LAYER_KEYS)}")
        settings[key] = float(value)
    return settings


def adam_layers_run(task: Task, spec: str, seed: int = SEED, steps: int = STEPS,
                    device: str | torch.device = "cpu") -> float:
    """Adam with one rate for the first conv ("0.*"), one for the last layer ("8.*", cifar10-conv's classifier)
    and one for the layers between."""
    s = parse_layer_spec(spec)
    torch.manual_seed(seed)
    model = task.make_model(seed).to(device)
    named = list(model.named_parameters())
    first = [p for n, p in named if n.startswith("0.")]
    last = [p for n, p in named if n.startswith("8.")]
    hidden = [p for n, p in named if not (n.startswith("0.") or n.startswith("8."))]
    groups = [{"params": first, "lr": s["in"] or s["lr"]}, {"params": hidden, "lr": s["hid"] or s["lr"]},
              {"params": last, "lr": s["out"] or s["lr"]}]
    for g in groups:
        g["base"] = g["lr"]
    opt = torch.optim.Adam(groups, betas=(0.9, s["b2"]))

    def decay(t: int) -> None:
        if s["decay_to"]:
            for g in opt.param_groups:
                g["lr"] = g["base"] * s["decay_to"] ** (t / steps)

    return train_torch(task, model, opt, seed, steps, decay)


def adam_layers(specs: list[str], device: str | torch.device = "cpu") -> None:
    """``KEY=VALUE,...``: per-layer rates on CIFAR-10 (see :func:`parse_layer_spec`)."""
    task = get_task("cifar10-conv")
    for spec in specs:
        show(spec, adam_layers_run(task, spec, device=device))


# ------------------------------------------------------------------------------------------------- relative Adam
def relative_run(task: Task, eta: float, live: bool = False, seed: int = SEED, steps: int = STEPS,
                 device: str | torch.device = "cpu") -> float:
    """Relative Adam at ``eta``; ``live`` re-reads each tensor's RMS before every step (LARS-style) instead."""
    torch.manual_seed(seed)
    model = task.make_model(seed).to(device)
    opt = relative_adam(model, eta)

    def reread(t: int) -> None:
        for g in opt.param_groups:
            g["lr"] = eta * rms(g["params"][0])

    return train_torch(task, model, opt, seed, steps, reread if live else None)


def relative(specs: list[str], device: str | torch.device = "cpu") -> None:
    """``TASK@ETA`` or ``TASK@ETA@live``: relative Adam on a registered task."""
    for spec in specs:
        name, eta, *rest = spec.split("@")
        show(spec, relative_run(get_task(name), float(eta), live=bool(rest), device=device))


def relative_depth(specs: list[str], data: str, device: str | torch.device = "cpu") -> None:
    """``DEPTH@ETA``: relative Adam on a CNN of ``data`` with channels 16, 32, 32, 32, 32 cut to DEPTH."""
    for spec in specs:
        depth, eta = spec.split("@")
        task = conv_task(data, channels_for(FMNIST_CHANNELS, int(depth), 1.0))
        show(spec, relative_run(task, float(eta), device=device))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.hand_designed_adam", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)  # every subcommand's --device
    common.add_argument("--device", default="cpu",
                        help="cpu | cuda | cuda:N (default cpu): where the models, optimizers and batches go")
    p = sub.add_parser("adam-grid", parents=[common], help="this package's Adam on registered tasks: TASK@LR ...")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("specs", nargs="+", metavar="TASK@LR")
    p = sub.add_parser("adam-batch", parents=[common],
                       help="Adam on the Fashion-MNIST CNN at other batch sizes: BATCH@LR ...")
    p.add_argument("specs", nargs="+", metavar="BATCH@LR")
    p = sub.add_parser("adam-schedule", parents=[common],
                       help="torch Adam with a schedule, seeds 1000 and 1001: TASK LR:SCHEDULE ...")
    p.add_argument("task")
    p.add_argument("specs", nargs="+", metavar="LR:SCHEDULE", help=f"SCHEDULE: one of {', '.join(SCHEDULES)}")
    p = sub.add_parser("adam-layers", parents=[common],
                       help="torch Adam with per-layer rates on CIFAR-10: KEY=VALUE,... ...")
    p.add_argument("specs", nargs="+", metavar="KEY=VALUE,...", help=f"keys: {', '.join(LAYER_KEYS)}")
    p = sub.add_parser("relative", parents=[common], help="relative Adam on registered tasks: TASK@ETA[@live] ...")
    p.add_argument("specs", nargs="+", metavar="TASK@ETA[@live]")
    p = sub.add_parser("relative-depth", parents=[common], help="relative Adam on CNNs of depth 1..5: DEPTH@ETA ...")
    p.add_argument("--data", default="fashion-mnist", help="data set (default fashion-mnist)")
    p.add_argument("specs", nargs="+", metavar="DEPTH@ETA")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)

    torch.set_num_threads(1)
    if args.command == "adam-grid":
        adam_grid(args.specs, args.steps, device)
    elif args.command == "adam-batch":
        adam_batch(args.specs, device)
    elif args.command == "adam-schedule":
        adam_schedule(args.task, args.specs, device)
    elif args.command == "adam-layers":
        adam_layers(args.specs, device)
    elif args.command == "relative":
        relative(args.specs, device)
    else:
        relative_depth(args.specs, args.data, device)


if __name__ == "__main__":
    main()
