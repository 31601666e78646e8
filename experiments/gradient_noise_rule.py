"""Does a statistic of the training run predict each task's best relative rate?

Relative Adam at eta = 0.13 (the shipped default's rate; :func:`experiments.hand_designed_adam.relative_adam`)
trains each of seven tasks (seed 1000); at steps 50, 100, 200 and 400 we read five candidate inputs of a rate rule
(details in ``results/experiments/gradient-noise-rule/README.md``): two signal fractions from exponential averages
of g and g^2 with the same decay B = 0.9, the cosine between consecutive gradients, the training loss, and the
ratio of the loss drop a step gives the next (unseen) batch to the drop it gives its own batch. Each task's best
relative rate at 1000 steps is from ``python -m experiments.hand_designed_adam``.

Writes ``results/experiments/gradient-noise-rule/snr.json`` after every task and skips the tasks already in it:

    python -m experiments.gradient_noise_rule            # about 6 min on one core
    python -m experiments.gradient_noise_rule --device cuda

``--device`` (default cpu; cpu | cuda | cuda:N) is where the model, the optimizer and the batches go; a row measured
off the CPU records its ``device``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from experiments import RESULTS
from experiments.hand_designed_adam import relative_adam
from tasks import channels_for, conv_task
from tasks.devices import device_or_exit

OUT = RESULTS / "experiments" / "gradient-noise-rule" / "snr.json"
ETA, READ_AT, B, SEED = 0.13, (50, 100, 200, 400), 0.9, 1000
WINDOW = 50  # cosine, loss and drop ratio are means over the last WINDOW steps before each reading
# (data, base channels, depth, batch, best relative rate on validation at 1000 steps, from hand_designed_adam)
TASKS = [
    ("fashion-mnist", (16, 32, 32), 3, 128, "0.3"),
    ("fashion-mnist", (16, 32, 32), 3, 16, "<0.13"),
    ("fashion-mnist", (16, 32, 32, 32, 32), 1, 128, "0.3"),
    ("fashion-mnist", (16, 32, 32, 32, 32), 5, 128, "0.1-0.3"),
    ("cifar10", (32, 64, 64, 64, 64), 1, 128, "1.0"),
    ("cifar10", (32, 64, 64), 3, 128, "0.07"),
    ("cifar10", (32, 64, 64, 64, 64), 5, 128, "<=0.05"),
]


def signal_fraction(moments, t):
    """moments: per tensor (EMA of g, EMA of g^2), both with decay B. Returns (mean over tensors of the per-weight
    fraction, mean over tensors of the tensor-level fraction sum m^2 / sum v, per-tensor tensor-level fractions)."""
    per_weight, per_tensor = [], []
    for m, v in moments:
        m, v = m / (1 - B ** t), v / (1 - B ** t)
        per_weight.append(float((m * m / (v + 1e-16)).clamp(max=1.0).mean()))
        per_tensor.append(float((m * m).sum() / v.sum()))
    return sum(per_weight) / len(per_weight), sum(per_tensor) / len(per_tensor), per_tensor


def mean_last(values: list[float]) -> float:
    return sum(values[-WINDOW:]) / len(values[-WINDOW:])


def measure(task, bs: int, best: str, device: str | torch.device = "cpu") -> dict:
    """Train ``task`` with relative Adam for max(READ_AT) steps on ``device`` and read the candidate statistics at
    READ_AT (off the CPU the row also holds its ``"device"``)."""
    device = torch.device(device)
    torch.manual_seed(SEED)
    model = task.make_model(SEED).to(device)
    opt = relative_adam(model, ETA)
    stream = task.batches("train", seed=SEED, device=device)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()]
    row = {"task": task.name, "batch": bs, "best_rate": best, "per_weight": {}, "tensor_level": {}, "per_tensor": {},
           "cos_prev": {}, "train_loss": {}, "fresh_over_own": {}}
    if device.type != "cpu":
        row["device"] = str(device)
    prev, cosines, losses, own, fresh = None, [], [], [], []
    for t in range(max(READ_AT)):
        x, y = stream.batch(t)
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        if prev is not None:
            cosines.append(float(torch.nn.functional.cosine_similarity(g, prev, dim=0)))
        prev = g
        losses.append(loss.item())
        x1, y1 = stream.batch(t + 1)
        with torch.no_grad():  # no batch norm or dropout in these CNNs: extra forwards change nothing
            next_before = task.loss(model(x1), y1).item()
            opt.step()
            own.append(loss.item() - task.loss(model(x), y).item())
            fresh.append(next_before - task.loss(model(x1), y1).item())
        for (mom, sq), p in zip(moments, model.parameters()):
            mom.mul_(B).add_(p.grad, alpha=1 - B)
            sq.mul_(B).addcmul_(p.grad, p.grad, value=1 - B)
        if t + 1 in READ_AT:
            a, w, per = signal_fraction(moments, t + 1)
            row["per_weight"][t + 1], row["tensor_level"][t + 1] = a, w
            row["per_tensor"][t + 1] = [round(v, 4) for v in per]
            row["cos_prev"][t + 1] = mean_last(cosines)
            row["train_loss"][t + 1] = mean_last(losses)
            row["fresh_over_own"][t + 1] = sum(fresh[-WINDOW:]) / sum(own[-WINDOW:])
    return row


def summary(row: dict, bs: int, best: str) -> str:
    cells = " ".join(f"{k}:{row['per_weight'][k]:.3f}/{row['tensor_level'][k]:.3f}/{row['cos_prev'][k]:+.3f}/"
                     f"{row['train_loss'][k]:.2f}/{row['fresh_over_own'][k]:.2f}" for k in READ_AT)
    return f"{row['task']:30s} bs {bs:3d} best {best:8s} " + cells


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.gradient_noise_rule", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT.relative_to(RESULTS.parent)})")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu): where the runs go")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    path = args.out
    torch.set_num_threads(1)
    rows = json.loads(path.read_text()) if path.exists() else []
    for data, base, depth, bs, best in TASKS:
        task = conv_task(data, channels_for(base, depth, 1.0), batch_size=bs)
        if any(r["task"] == task.name and r["batch"] == bs for r in rows):
            continue
        row = measure(task, bs, best, device)
        rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(summary(row, bs, best), flush=True)


if __name__ == "__main__":
    main()
