#!/bin/bash
# Second lease: the autograd-path fix (SlotIndex.by_slot) against the committed code, K tasks per process, H200.
export L2O_DATA=$PWD/data_carry PYTHONPATH=. PYTHONUNBUFFERED=1
log=$OUT/gpu2.log
timeout 60 python3 -m pytest -q -k cuda -p no:cacheprovider tests/test_slot_features.py tests/test_vectorized_pool.py > $OUT/tests.log 2>&1; echo "tests rc=$?" >> $log; tail -2 $OUT/tests.log >> $log
mkdir -p $OUT/new $OUT/base
timeout 130 python3 -m benchmarks.meta_train_throughput --tasks 1 64 256 --vectorize on --device cuda --families ng-gnn --outer-steps 3 --out $OUT/new >> $log 2>&1; echo "new rc=$?" >> $log
rm -rf /tmp/base && mkdir /tmp/base && cp -r benchmarks meta_train l2o tasks pyproject.toml /tmp/base/ && cp data_carry/base/neural_graph.py /tmp/base/l2o/graph/ && cp data_carry/base/unroll.py data_carry/base/train.py /tmp/base/meta_train/
(cd /tmp/base && timeout 60 python3 -m benchmarks.meta_train_throughput --tasks 64 --vectorize on --device cuda --families ng-gnn --outer-steps 3 --out $OUT/base >> $log 2>&1; echo "base rc=$?" >> $log)
timeout 40 python3 -m benchmarks.meta_train_throughput --tasks 64 --vectorize on --device cuda --families dng --outer-steps 3 --out $OUT/new/dng >> $log 2>&1; echo "dng rc=$?" >> $log
