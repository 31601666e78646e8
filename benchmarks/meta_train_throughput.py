"""Meta-training throughput: inner steps per second on ``fmnist-conv`` for each optimizer family, 1 and 2 processes.

Runs the real CLI (``python -m meta_train train``, ``--num-processes 2`` for gloo workers) for a few outer steps of
the published protocol's shape (greedy one-step meta-gradients, 10-step truncations for a quick measurement) and
reads ``inner_steps_per_s`` from its metrics (median over outer steps after the first, which loads data). Also the
projected wall time of the published protocol (1000 x 100 inner steps), target: <= 2 hours on this 2-core CPU.

    python -m benchmarks.meta_train_throughput [--families ng-gnn dng] [--processes 1 2] [--outer-steps 6]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from benchmarks.common import RESULTS, machine, markdown_table, write_json
from l2o.optim import LEARNED_FAMILIES

PROTOCOL_INNER_STEPS = 1000 * 100


def measure(family: str, processes: int, outer_steps: int, meta_loss: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "meta_train", "train", "--config", str(ROOT / "meta_train/configs/paper.toml"),
               "--set", f"optimizer.family='{family}'", "--set", f"meta.outer_steps={outer_steps}",
               "--set", "meta.truncation=10", "--set", f"meta.meta_loss='{meta_loss}'",
               "--set", "run.validate_every=0", "--set", "run.checkpoint_every=100000", "--out-dir", out]
        if family == "dng":
            cmd += ["--set", "optimizer.encoder_options.bidirectional=true"]
        if processes > 1:
            cmd += ["--num-processes", str(processes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{family} x{processes} failed:\n{run.stderr[-2000:]}")
        rates = [json.loads(line)["inner_steps_per_s"] for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    rate = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    return {"optimizer": family, "task": "fmnist-conv", "processes": processes, "meta_loss": meta_loss,
            "inner_steps_per_s": rate, "protocol_hours": PROTOCOL_INNER_STEPS / rate / 3600, **machine()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=list(LEARNED_FAMILIES))
    ap.add_argument("--processes", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--outer-steps", type=int, default=6)
    ap.add_argument("--meta-loss", nargs="*", default=["train"], help="train (default protocol) and/or same")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    records = []
    for fam in args.families:
        for n in args.processes:
            for ml in args.meta_loss:
                records.append(measure(fam, n, args.outer_steps, ml))
                print(f"{fam} x{n} ({ml}): {records[-1]['inner_steps_per_s']:.1f} inner steps/s", file=sys.stderr)
    table = markdown_table(records, ["optimizer", "task", "processes", "meta_loss", "inner_steps_per_s",
                                     "protocol_hours"])
    print(table)
    write_json("meta_train.json", records, args.out)
    (args.out or RESULTS).joinpath("meta_train.md").write_text(
        "# Meta-training throughput (fmnist-conv, greedy one-step estimator)\n\n"
        "Produced by `python -m benchmarks.meta_train_throughput`. `protocol_hours`: projected wall time of the "
        "published protocol (1000 outer x 100 inner steps); target <= 2 h on the 2-core CPU.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
