#!/usr/bin/env bash
# Every CUDA check of the project in one script, sized for a short GPU lease (about 8 minutes on one H100/H200):
#   1. the device-parametrised tests (`pytest -k cuda`) and a few CLI commands with --device cuda;
#   2. benchmarks/step_overhead.py --device cuda (ResNet-18 and the memory column included), and
#      benchmarks/step_grids.py --device cuda (the NG-GNN step with dense blocks as grids against row chunks);
#   3. benchmarks/meta_train_throughput.py --tasks 1 4 16 64 --device cuda (inner steps/s against K).
# Everything it prints goes to $OUT/checks.log; the benchmark tables and every log are packed into
# $OUT/cuda_results.tar.gz (with the results/benchmarks/**/*_cuda.* that this run wrote). Each stage has its own
# time limit, so one that hangs or fails does not cost the others.
#
#   OUT=/tmp/out L2O_DATA=/path/with/FashionMNIST bash benchmarks/cuda_checks.sh
#
# Options (environment): FAMILIES / CHECKPOINTS (LABEL=PATH ...) narrow or extend the step-overhead stage and
# STEP_EXTRA passes it more arguments (e.g. "--eager-too --tasks cifar10-resnet18"); CLI=0 skips the CLI checks of
# stage 1, GRIDS=0 the grid comparison and THROUGHPUT=0 stage 3 (for a lease too short for all of them);
# TP_TASKS / TP_FAMILIES set stage 3's K values and recipes (default "1 4 16 64", all three; e.g. "1 64 256" to see
# whether the vmapped throughput still grows past 64) and TP_OUT its output folder (default results/benchmarks);
# LIMIT_TESTS, LIMIT_STEP, LIMIT_GRIDS, LIMIT_TP: each stage's time limit in seconds (240, 180, 120, 200).
#
# Needs only Fashion-MNIST under $L2O_DATA (the benchmarks use random batches; tests that need CIFAR-10 skip).
set -u
OUT=${OUT:?set OUT to a folder for the logs}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs" results/benchmarks
log() { echo "== $(date +%T) $*" | tee -a "$OUT/checks.log"; }
stage() {  # stage NAME SECONDS CMD...: run with a time limit, output to logs/NAME.log, status to checks.log
  local name=$1 limit=$2; shift 2
  log "start $name: $*"
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  log "end $name: rc=$rc"; tail -n 25 "$OUT/logs/$name.log" >> "$OUT/checks.log"
}
touch /tmp/cuda_checks.start
pack() {  # the logs, and the CUDA tables the benchmarks have written since the start
  local tables
  mapfile -t tables < <(find results/benchmarks -name '*_cuda.*' -newer /tmp/cuda_checks.start)
  tar czf "$OUT/cuda_results.tar.gz" -C "$OUT" logs ${tables[@]+-C "$PWD" "${tables[@]}"}
}

{ nvidia-smi; python3 -c "import torch, torch_geometric, accelerate; print(torch.__version__, torch.version.cuda,
torch.cuda.get_device_name(), torch_geometric.__version__, accelerate.__version__)"; nproc; } >> "$OUT/checks.log" 2>&1

# 1. correctness: the CUDA test cases (in parallel with the CLI checks; they are small)
stage tests_cuda "${LIMIT_TESTS:-240}" python3 -m pytest -q -k cuda -p no:cacheprovider tests &
tests_pid=$!
if [ "${CLI:-1}" != 0 ]; then
stage cli_quick 60 python3 -m meta_train train --config meta_train/configs/quick.toml --device cuda \
  --set meta.outer_steps=3 --set run.validate_every=0 --out-dir /tmp/cli_quick --overwrite
stage cli_reference 60 python3 -m meta_train train --config meta_train/configs/reference.toml --device cuda \
  --set meta.outer_steps=2 --set meta.truncation=10 --set run.validate_every=2 --set run.validation_steps=50 \
  --out-dir /tmp/cli_reference --overwrite
stage cli_evaluate 60 python3 -m meta_train evaluate --task fmnist-conv --optimizers adam relative-adam results/checkpoints/default.pt \
  --steps 50 --seeds 1 --eval-every 25 --tune-steps 20 --out /tmp/cli_eval --device cuda
fi
wait $tests_pid
pack

# 2. the optimizer step on real-size models, alone on the GPU
step_args=(--device cuda --repeats 10)
[ -n "${FAMILIES:-}" ] && step_args+=(--families $FAMILIES)
[ -n "${CHECKPOINTS:-}" ] && step_args+=(--checkpoints $CHECKPOINTS)
[ -n "${STEP_EXTRA:-}" ] && step_args+=($STEP_EXTRA)
stage step_overhead "${LIMIT_STEP:-180}" python3 -m benchmarks.step_overhead "${step_args[@]}"
pack
# 2b. the NG-GNN step's dense blocks as grids against plain row chunks (GRIDS=0 skips it)
[ "${GRIDS:-1}" != 0 ] && stage step_grids "${LIMIT_GRIDS:-120}" python3 -m benchmarks.step_grids --device cuda \
  --tasks cifar10-conv cifar10-conv-1M cifar10-resnet18
pack
[ "${THROUGHPUT:-1}" = 0 ] && { log done; exit 0; }

# 3. meta-training throughput against tasks per process, alone on the GPU
tp_out=${TP_OUT:-results/benchmarks}
mkdir -p "$tp_out"
stage throughput "${LIMIT_TP:-200}" python3 -m benchmarks.meta_train_throughput --tasks ${TP_TASKS:-1 4 16 64} \
  --vectorize on --device cuda --families ${TP_FAMILIES:-ng-gnn dng tensor-lstm} --outer-steps 3 --out "$tp_out"
pack
log done
