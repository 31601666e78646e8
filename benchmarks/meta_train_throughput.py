"""Meta-training throughput: inner steps per second on ``fmnist-conv``.

Runs the real CLI (``python -m meta_train train``, ``--num-processes 2`` for gloo workers) for a few outer steps of
the published protocol's shape (greedy one-step meta-gradients, 10-step truncations for a quick measurement) and
reads ``inner_steps_per_s`` from its metrics (median over outer steps after the first, which loads data; it counts
the inner steps of every task of every process). Two sweeps:

* processes (the default): each optimizer family on ``paper.toml``, 1 and 2 processes, with the projected wall time
  of the published protocol (1000 x 100 inner steps), target: <= 2 hours on this 2-core CPU ->
  ``meta_train.{json,md}``.

      python -m benchmarks.meta_train_throughput [--families ng-gnn dng] [--processes 1 2] [--outer-steps 6]

* tasks (``--tasks``, alone for K = 1 4 16 64): K tasks per process (``meta.tasks_per_process``), their optimizee
  losses and gradients in one vmapped call (``meta.vectorize = true``) or task after task (``false``), for the
  recipes ``ng-gnn`` (``reference.toml``), ``dng`` (``paper.toml`` with family dng) and ``tensor-lstm``
  (``reference-tensor-lstm.toml``), each as shipped but for 10-step truncations and no validation or checkpoints;
  the ratios are to K = 1 with the loop (K = 1 never vmaps: a lone task takes the loop either way) ->
  ``meta_train_tasks.{json,md}`` (``meta_train_tasks_cuda.*`` with ``--device cuda``).

      python -m benchmarks.meta_train_throughput --tasks [1 4 16 64] [--vectorize on|off|both] [--device cpu|cuda]
          [--families ng-gnn dng tensor-lstm] [--outer-steps 6] [--threads N]
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

import torch

ROOT = Path(__file__).resolve().parent.parent
from benchmarks.common import RESULTS, machine, markdown_table, write_json
from l2o.optim import LEARNED_FAMILIES

PROTOCOL_INNER_STEPS = 1000 * 100
CONFIGS = ROOT / "meta_train" / "configs"
# tasks sweep: recipe name -> (config file, extra overrides)
RECIPES = {"ng-gnn": ("reference.toml", []),
           "dng": ("paper.toml", ["optimizer.family='dng'", "optimizer.encoder_options.bidirectional=true"]),
           "tensor-lstm": ("reference-tensor-lstm.toml", [])}
# the recipes' runs shortened to a measurement: 10-step truncations, no validation, no checkpoint before the end
MEASUREMENT = ["meta.truncation=10", "run.validate_every=0", "run.checkpoint_every=100000"]


def run_cli(config: Path, overrides: list[str], outer_steps: int, processes: int = 1, threads: int | None = None
            ) -> list[float]:
    """``inner_steps_per_s`` of each outer step of a fresh ``python -m meta_train train`` run (in a temporary
    folder)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "meta_train", "train", "--config", str(config),
               "--set", f"meta.outer_steps={outer_steps}", "--out-dir", out]
        for item in overrides:
            cmd += ["--set", item]
        if processes > 1:
            cmd += ["--num-processes", str(processes)]
        threads = threads or max(1, (os.cpu_count() or 1) // processes)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        return [json.loads(line)["inner_steps_per_s"] for line in Path(out, "metrics.jsonl").read_text().splitlines()]


def steady_rate(rates: list[float]) -> float:
    """The median rate over the outer steps after the first (which loads the data and builds the graphs)."""
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def measure(family: str, processes: int, outer_steps: int, meta_loss: str) -> dict:
    overrides = [f"optimizer.family='{family}'", f"meta.meta_loss='{meta_loss}'", *MEASUREMENT]
    if family == "dng":
        overrides.append("optimizer.encoder_options.bidirectional=true")
    rate = steady_rate(run_cli(CONFIGS / "paper.toml", overrides, outer_steps, processes))
    return {"optimizer": family, "task": "fmnist-conv", "processes": processes, "meta_loss": meta_loss,
            "inner_steps_per_s": rate, "protocol_hours": PROTOCOL_INNER_STEPS / rate / 3600, **machine()}


def measure_tasks(recipe: str, tasks: int, vectorize: bool, device: str, outer_steps: int, threads: int | None
                  ) -> dict:
    """One point of the tasks sweep: ``recipe`` with ``tasks`` tasks per process, vectorised or looped."""
    config, extra = RECIPES[recipe]
    overrides = [*extra, *MEASUREMENT, f"meta.tasks_per_process={tasks}", f"meta.vectorize={str(vectorize).lower()}",
                 f"run.device='{device}'"]
    rate = steady_rate(run_cli(CONFIGS / config, overrides, outer_steps, threads=threads))
    return {"recipe": recipe, "config": config, "task": "fmnist-conv", "tasks_per_process": tasks,
            "vectorize": vectorize, "device": device, "inner_steps_per_s": rate, **machine(),
            "threads": threads or os.cpu_count()}  # the run's OMP_NUM_THREADS, not this process's


def with_ratios(records: list[dict]) -> list[dict]:
    """Each record's rate over its recipe's K = 1 loop rate (``speedup_vs_k1_loop``; the K = 1 vectorised run
    stands in when the loop was not measured: a lone task takes the loop anyway), None without a K = 1 run."""
    for r in records:
        base = [b for b in records if b["recipe"] == r["recipe"] and b["tasks_per_process"] == 1]
        base.sort(key=lambda b: b["vectorize"])  # the loop first
        r["speedup_vs_k1_loop"] = r["inner_steps_per_s"] / base[0]["inner_steps_per_s"] if base else None
    return records


def tasks_table(records: list[dict]) -> str:
    """One row per recipe and K: steps/s of the loop and of vmap, their ratios to the K = 1 loop, vmap / loop."""
    rows = []
    for recipe in dict.fromkeys(r["recipe"] for r in records):
        for k in sorted({r["tasks_per_process"] for r in records if r["recipe"] == recipe}):
            mode = {r["vectorize"]: r for r in records if r["recipe"] == recipe and r["tasks_per_process"] == k}
            row = {"recipe": recipe, "K": k}
            for v, name in ((False, "loop"), (True, "vmap")):
                if v in mode:
                    row[f"{name} steps/s"] = mode[v]["inner_steps_per_s"]
                    row[f"{name} / K=1 loop"] = mode[v]["speedup_vs_k1_loop"]
            if len(mode) == 2:
                row["vmap / loop"] = mode[True]["inner_steps_per_s"] / mode[False]["inner_steps_per_s"]
            rows.append(row)
    columns = ["recipe", "K"] + [c for c in ("loop steps/s", "vmap steps/s", "loop / K=1 loop", "vmap / K=1 loop",
                                             "vmap / loop") if any(c in row for row in rows)]
    return markdown_table(rows, columns)


def tasks_sweep(args) -> None:
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.vectorize]
    recipes = args.families or list(RECIPES)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"--tasks sweeps the recipes {sorted(RECIPES)}, not {unknown}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU on this machine")
    records = []
    for recipe in recipes:
        for k in args.tasks or [1, 4, 16, 64]:
            for v in modes:
                records.append(measure_tasks(recipe, k, v, args.device, args.outer_steps, args.threads))
                print(f"{recipe} K={k} vectorize={v}: {records[-1]['inner_steps_per_s']:.1f} inner steps/s",
                      file=sys.stderr)
    table = tasks_table(with_ratios(records))
    print(table)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    write_json(f"meta_train_tasks{suffix}.json", records, args.out)
    (args.out or RESULTS).joinpath(f"meta_train_tasks{suffix}.md").write_text(
        f"# Meta-training throughput against tasks per process ({records[0]['cuda'] or 'CPU'})\n\n"
        "Produced by `python -m benchmarks.meta_train_throughput --tasks`. Inner steps/s of all K tasks together "
        "(fmnist-conv, greedy one-step estimator, 10-step truncations, recipes as shipped otherwise); `loop`: "
        "`meta.vectorize = false` (optimizee forward/backward task after task), `vmap`: `true` (one vmapped call "
        f"for the K tasks); ratios to K = 1 with the loop. {args.outer_steps} outer steps, median after the "
        f"first, {records[0]['threads']} threads.\n\n" + table + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=None,
                    help=f"processes sweep: optimizer families (default all learned ones); tasks sweep: recipes "
                         f"{list(RECIPES)} (default all)")
    ap.add_argument("--processes", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--outer-steps", type=int, default=6)
    ap.add_argument("--meta-loss", nargs="*", default=["train"], help="train (default protocol) and/or same")
    ap.add_argument("--tasks", nargs="*", type=int, default=None,
                    help="run the tasks sweep over these tasks per process (alone: 1 4 16 64)")
    ap.add_argument("--vectorize", choices=("on", "off", "both"), default="both", help="tasks sweep: meta.vectorize")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="tasks sweep: run.device")
    ap.add_argument("--threads", type=int, default=None, help="tasks sweep: OMP_NUM_THREADS (default: every core)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.tasks is not None:
        tasks_sweep(args)
        return
    args.families = args.families or list(LEARNED_FAMILIES)
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
