"""Does a statistic of the training run predict each task's best relative rate?

Relative Adam at eta = 0.13 (the shipped default's rate) trains each task; at a few steps we read five candidate
inputs of a rate rule (details in README.md): two signal fractions from exponential averages of g and g^2 with the
same decay B = 0.9, the cosine between consecutive gradients, the training loss, and the ratio of the loss drop a
step gives the next (unseen) batch to the drop it gives its own batch. Each task's best relative rate at 1000 steps
is in ``../hand-designed-adam``.

    python results/experiments/gradient-noise-rule/snr.py     # -> snr.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hand-designed-adam"))
from relative import relative_adam  # noqa: E402  (the same relative Adam as the hand-designed runs)
from tasks import channels_for, conv_task  # noqa: E402

torch.set_num_threads(1)
ETA, READ_AT, B = 0.13, (50, 100, 200, 400), 0.9
# (data, base channels, depth, batch, best relative rate on validation at 1000 steps from ../hand-designed-adam)
TASKS = [("fashion-mnist", (16, 32, 32), 3, 128, "0.3"), ("fashion-mnist", (16, 32, 32), 3, 16, "<0.13"),
         ("fashion-mnist", (16, 32, 32, 32, 32), 1, 128, "0.3"), ("fashion-mnist", (16, 32, 32, 32, 32), 5, 128,
                                                                   "0.1-0.3"),
         ("cifar10", (32, 64, 64, 64, 64), 1, 128, "1.0"), ("cifar10", (32, 64, 64), 3, 128, "0.07"),
         ("cifar10", (32, 64, 64, 64, 64), 5, 128, "<=0.05")]


def signal_fraction(moments, t):
    """moments: per tensor (EMA of g, EMA of g^2), both with decay B. Returns (mean over tensors of the per-weight
    fraction, mean over tensors of the tensor-level fraction sum m^2 / sum v, per-tensor tensor-level fractions)."""
    per_weight, per_tensor = [], []
    for m, v in moments:
        m, v = m / (1 - B ** t), v / (1 - B ** t)
        per_weight.append(float((m * m / (v + 1e-16)).clamp(max=1.0).mean()))
        per_tensor.append(float((m * m).sum() / v.sum()))
    return sum(per_weight) / len(per_weight), sum(per_tensor) / len(per_tensor), per_tensor


def main():
    path = Path(__file__).with_name("snr.json")
    rows = json.loads(path.read_text()) if path.exists() else []
    for data, base, depth, bs, best in TASKS:
        task = conv_task(data, channels_for(base, depth, 1.0), batch_size=bs)
        if any(r["task"] == task.name and r["batch"] == bs for r in rows):
            continue
        seed = 1000
        torch.manual_seed(seed)
        m = task.make_model(seed)
        opt = relative_adam(m, ETA)
        stream = task.batches("train", seed=seed)
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in m.parameters()]
        row = {"task": task.name, "batch": bs, "best_rate": best, "per_weight": {}, "tensor_level": {}, "per_tensor": {}}
        row.update(cos_prev={}, train_loss={}, fresh_over_own={})
        prev, cosines, losses, own, fresh = None, [], [], [], []
        for t in range(max(READ_AT)):
            x, y = stream.batch(t)
            loss = task.loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            g = torch.cat([p.grad.flatten() for p in m.parameters()])
            if prev is not None:
                cosines.append(float(torch.nn.functional.cosine_similarity(g, prev, dim=0)))
            prev, losses = g, losses + [loss.item()]
            x1, y1 = stream.batch(t + 1)
            with torch.no_grad():  # no batch norm or dropout in these CNNs: extra forwards change nothing
                next_before = task.loss(m(x1), y1).item()
                opt.step()
                own.append(loss.item() - task.loss(m(x), y).item())
                fresh.append(next_before - task.loss(m(x1), y1).item())
            for (mom, sq), p in zip(moments, m.parameters()):
                mom.mul_(B).add_(p.grad, alpha=1 - B)
                sq.mul_(B).addcmul_(p.grad, p.grad, value=1 - B)
            if t + 1 in READ_AT:
                a, w, per = signal_fraction(moments, t + 1)
                row["per_weight"][t + 1], row["tensor_level"][t + 1] = a, w
                row["per_tensor"][t + 1] = [round(v, 4) for v in per]
                row["cos_prev"][t + 1] = sum(cosines[-50:]) / len(cosines[-50:])
                row["train_loss"][t + 1] = sum(losses[-50:]) / len(losses[-50:])
                row["fresh_over_own"][t + 1] = sum(fresh[-50:]) / sum(own[-50:])
        rows.append(row)
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{task.name:30s} bs {bs:3d} best {best:8s} " + " ".join(
            f"{k}:{row['per_weight'][k]:.3f}/{row['tensor_level'][k]:.3f}/{row['cos_prev'][k]:+.3f}/"
            f"{row['train_loss'][k]:.2f}/{row['fresh_over_own'][k]:.2f}" for k in READ_AT), flush=True)


if __name__ == "__main__":
    main()
