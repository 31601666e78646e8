"""Relative Adam (rate eta x each tensor's RMS at init) on Fashion-MNIST CNNs of depth 1..5, validation accuracy.

Does Fashion-MNIST show CIFAR-10's depth dependence of the best relative rate (about 1.0 at depth 1, 0.05 at
depth 5)? If so, a task family with depths 1..5 gives a meta-learner the signal to choose its rate from the
architecture. Usage: ``relative_depth.py [--data=mnist] DEPTH@ETA ...`` (channels 16, 32, 32, 32, 32 cut to DEPTH;
Fashion-MNIST unless ``--data`` names another data set).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from relative import run  # noqa: E402  (the same relative-Adam run on a task built here)
from tasks import channels_for, conv_task  # noqa: E402

args = sys.argv[1:]
data = args.pop(0).split("=", 1)[1] if args and args[0].startswith("--data=") else "fashion-mnist"
for spec in args:
    depth, eta = spec.split("@")
    task = conv_task(data, channels_for((16, 32, 32), int(depth), 1.0))
    print(spec, round(100 * run(task.name, float(eta), task=task), 2), flush=True)
