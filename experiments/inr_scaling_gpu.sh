#!/usr/bin/env bash
# INR classification at 50,000 MNIST INRs on one GPU (issue 19): fit the 50k / 1k / 2k zoo on the GPU, then DNG h64 d2
# for 10 epochs, plain and INR2JLS (--jls), seeds 0-2: six processes at once (each is launch-bound on its own CPU
# core, so they share one GPU well), stopped at a deadline; then everything is packed into one file.
#
#   OUT=/tmp/out L2O_DATA=/path/with/MNIST bash experiments/inr_scaling_gpu.sh [DEADLINE_S]
#
# $OUT/records.tgz holds r/<variant>-s<seed>/ (each run's record and report) and logs/ (one log per process and the
# zoo's PSNR table). The records' names contain '+', which a lease's file transfer refuses alone: hence one archive.
# Unpack it and point `python -m experiments.inr_scaling report --out` (or `meta_train weight-space report
# --also-records`) at a folder holding the records. Measured on an H200 on 2026-11-28: the zoo in 19 s, all six runs
# in 420-460 s (40 s per epoch plain, 44 s with --jls; `results/weight_space/h200_mnist_50k/`).
# DEVICE=cpu tries the script here (slowly: about 4 min per epoch and run on one core).
set -u
OUT=${OUT:?set OUT to a folder for the packed records}
DEVICE=${DEVICE:-cuda}
deadline=${1:-540}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 L2O_ZOO_DIR=${L2O_ZOO_DIR:-/tmp/zoo}
work=$(mktemp -d)
mkdir -p "$OUT" "$work/r" "$work/logs"
t0=$(date +%s)
python3 -m tasks.weight_space.inr_zoo --dataset mnist --n-train 50000 --n-val 1000 --n-test 2000 --micro-batch 1024 \
  --device "$DEVICE" > "$work/logs/zoo.log" 2>&1 || { cat "$work/logs/zoo.log"; exit 1; }
tail -6 "$work/logs/zoo.log"
common="--dataset mnist --encoders dng --sizes 50000 --hidden 64 --depth 2 --epochs 10 --device $DEVICE --no-carry"
for seed in 0 1 2; do
  for variant in plain jls; do
    extra=""; [ "$variant" = jls ] && extra="--jls"
    python3 -m experiments.inr_scaling $common $extra --seeds "$seed" --out "$work/r/$variant-s$seed" \
      --results "$work/r/$variant-s$seed/res" > "$work/logs/$variant-s$seed.log" 2>&1 < /dev/null &
  done
done
while [ $(( $(date +%s) - t0 )) -lt "$deadline" ] && [ -n "$(jobs -rp)" ]; do sleep 10; done
kill $(jobs -rp) 2> /dev/null
echo "stopped waiting at $(( $(date +%s) - t0 )) s"
for f in "$work"/logs/*-s*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep "test accuracy" | tail -1; done
tar czf "$OUT/records.tgz" -C "$work" r logs
