#!/usr/bin/env bash
# Meta-train reference-recipe runs (experiments/reference_recipe.py RUNS) on one GPU, all at once, for a fixed time,
# and pack each run so that it continues on another machine (a CPU one too: `train --only NAME` resumes it there).
# Sized for a short GPU lease: several K=1 runs share one GPU well (each is launch-bound on its own CPU core).
#
#   OUT=/tmp/out MINUTES=6 L2O_DATA=/path/with/FashionMNIST bash experiments/reference_recipe_gpu.sh NAME [NAME ...]
#
# $OUT gets, per run: NAME.log, NAME-checkpoint.tar (config, metrics, the newest checkpoint folder: what --resume
# needs) and NAME-weights.tar (the validated weights, when there are any; best.pt is the one of them at the
# checkpoint's meta.pt "best" step, left out to stay under a lease's 16 MiB per file). Unpack both in the run's
# out_dir (`run_dir` in experiments/reference_recipe.py) and copy validated/step_<best>.pt to best.pt (a run that
# finds no best.pt writes its newest weights there). DEVICE=cpu tries the script here.
set -u
OUT=${OUT:?set OUT to a folder for the packed runs}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
pids=()
for name in "$@"; do
  python3 -m experiments.reference_recipe train --only "$name" --device "$DEVICE" --max-minutes "$MINUTES" \
    > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for name in "$@"; do
  dir=$(python3 -c "from experiments.reference_recipe import run_dir; print(run_dir('$name'))")
  [ -f "$dir/checkpoints/latest" ] || { echo "$name: no checkpoint in $dir" | tee -a "$OUT/$name.log"; status=1; continue; }
  latest=$(cat "$dir/checkpoints/latest")
  tar cf "$OUT/$name-checkpoint.tar" -C "$dir" config.json metrics.jsonl checkpoints/latest "checkpoints/$latest"
  [ -d "$dir/validated" ] && tar cf "$OUT/$name-weights.tar" -C "$dir" validated
  tail -n 3 "$OUT/$name.log"
done
ls -l "$OUT"
exit $status
