"""Relative Adam (rate eta x each tensor's RMS at init) on Fashion-MNIST CNNs of depth 1..5, validation accuracy.

Does Fashion-MNIST show CIFAR-10's depth dependence of the best relative rate (about 1.0 at depth 1, 0.05 at
depth 5)? If so, a task family with depths 1..5 gives a meta-learner the signal to choose its rate from the
architecture. Usage: ``relative_depth.py DEPTH@ETA ...`` (channels 16, 32, 32, 32, 32 cut to DEPTH).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tasks import channels_for, conv_task  # noqa: E402

torch.set_num_threads(1)


def run(depth: int, eta: float, seed: int = 1000, steps: int = 1000) -> float:
    task = conv_task("fashion-mnist", channels_for((16, 32, 32), depth, 1.0))
    torch.manual_seed(seed)
    m = task.make_model(seed)
    groups = [{"params": [p], "lr": eta * float(p.detach().pow(2).mean().sqrt())} for p in m.parameters()]
    opt = torch.optim.Adam(groups)
    stream = task.batches("train", seed=seed)
    for t in range(steps):
        x, y = stream.batch(t)
        loss = task.loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return task.evaluate(m, "val")["acc"]


for spec in sys.argv[1:]:
    depth, eta = spec.split("@")
    print(spec, round(100 * run(int(depth), float(eta)), 2), flush=True)
