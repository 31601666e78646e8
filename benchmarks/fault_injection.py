"""Fault injection: a meta-training run killed again and again (SIGKILL at random moments, SIGTERM) must resume to
exactly the run that was never interrupted.

    python -m benchmarks.fault_injection [--kills 8] [--steps 60] [--estimators greedy window pes] [--device cuda]

For each estimator: one uninterrupted run of ``meta_train/configs/regression.toml``; then the same run started and
killed ``--kills`` times at random wall-clock moments (the kill lands anywhere: mid-step, mid-checkpoint write, mid
validation), resumed with ``--resume`` after each kill, plus one SIGTERM (graceful stop), until it finishes. The
final metrics (every field but wall times and speeds) and the final weights (``last.pt``) are compared bit for bit.
Writes ``results/benchmarks/fault_injection.{json,md}`` (``fault_injection_cuda.*`` with ``--device cuda``: every run
meta-trains with ``--device``, i.e. ``run.device``; default cpu; no GPU index, pick the GPU with
``CUDA_VISIBLE_DEVICES``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, markdown_table, write_json
from tasks.devices import device_or_exit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "meta_train" / "configs" / "regression.toml"
TIMING_KEYS = {"inner_steps_per_s", "wall_s"}


def _cmd(out: Path, steps: int, estimator: str, resume: bool, device: str = "cpu") -> list[str]:
    cmd = [sys.executable, "-m", "meta_train", "train", "--config", str(CONFIG), "--out-dir", str(out),
           "--device", device,
           "--set", f"meta.outer_steps={steps}", "--set", f"meta.estimator={estimator}",
           "--set", "run.checkpoint_every=3", "--set", "run.validate_every=10",
           "--set", "run.validation_task=regression"]
    if estimator == "window":
        cmd += ["--set", "meta.window=5"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _weights(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["state_dict"]


def _finished(out: Path, steps: int) -> bool:
    return (out / "metrics.jsonl").exists() and any(r["step"] == steps for r in _metrics(out))


def run_one(estimator: str, steps: int, kills: int, scratch: Path, rng: random.Random, device: str = "cpu"
            ) -> dict:
    clean, faulty = scratch / f"{estimator}-clean", scratch / f"{estimator}-faulty"
    subprocess.run(_cmd(clean, steps, estimator, False, device) + ["--overwrite"], env=_env(), check=True, cwd=ROOT,
                   capture_output=True)
    t0 = time.time()
    proc = subprocess.run(_cmd(scratch / "timing", steps, estimator, False, device) + ["--overwrite"], env=_env(),
                          cwd=ROOT, capture_output=True)
    duration = time.time() - t0
    injected, survived, attempts = 0, 0, 0
    first = True
    while not _finished(faulty, steps) and attempts < 4 * kills + 10:
        attempts += 1
        cmd = _cmd(faulty, steps, estimator, not first, device) + (["--overwrite"] if first else [])
        p = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = False
        if injected < kills + 1:
            # a random moment within the run's expected length (startup included); the last fault is a SIGTERM
            time.sleep(rng.uniform(0.2, 0.5) * duration)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if injected == kills else signal.SIGKILL)
                injected += 1
        p.wait()
        survived += int(p.returncode in (0, -signal.SIGKILL, -signal.SIGTERM))
    same_metrics = _finished(faulty, steps) and _metrics(clean) == _metrics(faulty)
    a, b = _weights(clean), _weights(faulty)
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {"estimator": estimator, "outer_steps": steps, "faults_injected": injected, "starts": attempts,
            "runs_survived": survived, "finished": _finished(faulty, steps), "metrics_bit_identical": same_metrics,
            "weights_bit_identical": same_weights, "clean_run_s": round(duration, 1), "device": device, **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--estimators", nargs="*", default=["greedy", "window", "pes"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", type=Path, default=ROOT / "runs" / "fault-injection")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu",
                    help="cpu | cuda (default cpu): the runs' run.device; pick a GPU with CUDA_VISIBLE_DEVICES")
    args = ap.parse_args(argv)
    device = device_or_exit(ap, args.device)
    if device.index is not None:
        ap.exit(2, f"error: --device {args.device}: meta-training takes cpu or cuda; pick the GPU with "
                   f"CUDA_VISIBLE_DEVICES={device.index}\n")
    rng = random.Random(args.seed)
    records = [run_one(e, args.steps, args.kills, args.scratch, rng, device.type) for e in args.estimators]
    cols = ["estimator", "outer_steps", "faults_injected", "starts", "runs_survived", "finished",
            "metrics_bit_identical", "weights_bit_identical", "clean_run_s"]
    table = markdown_table(records, cols)
    print(table)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    write_json(f"fault_injection{suffix}.json", records, args.out)
    (args.out or RESULTS).joinpath(f"fault_injection{suffix}.md").write_text(
        "# Fault injection: killed meta-training runs resume exactly"
        + ("" if device.type == "cpu" else f" ({records[0]['cuda'] or device.type})") + "\n\nProduced by `python -m "
        "benchmarks.fault_injection" + ("" if device.type == "cpu" else f" --device {device.type}") + "`: per "
        "estimator, SIGKILLs at random moments plus one SIGTERM, each followed by `--resume`; the final metrics and "
        "weights compared with an uninterrupted run.\n\n" + table + "\n")
    if not all(r["metrics_bit_identical"] and r["weights_bit_identical"] for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
