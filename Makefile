# Set-up is part of every target: a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Data root: the shared torchvision-style folder when it exists, else whatever L2O_DATA says.
L2O_DATA ?= $(firstword $(wildcard ../shared/datasets) $(HOME)/.cache/l2o/data)
# Made absolute: a relative root would name another folder for code that changes directory (a test does).
override L2O_DATA := $(abspath $(L2O_DATA))
export L2O_DATA
TORCH_PIN := torch==2.13.0
# make run DEVICE=cuda (also results, weight-space, demo): where the commands train (cpu | cuda).
DEVICE ?= cpu

.PHONY: run demo test test-all bench results weight-space install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# make run MINUTES=60 STEPS=1000 SEEDS=5 for a longer version of the main job.
MINUTES ?= 10
STEPS   ?= 500
SEEDS   ?= 1
run: install
	$(PY) -m meta_train main-job --data-root "$(L2O_DATA)" --device $(DEVICE) --minutes $(MINUTES) --steps $(STEPS) --seeds $(SEEDS)

# The full Fashion-MNIST -> CIFAR-10 results (meta-train every shipped optimizer, 5-seed evaluation, width/depth
# sweep, results/transfer.json): hours on 2 cores; resumable, rerun to continue.
results: install
	$(PY) -m meta_train results --data-root "$(L2O_DATA)" --device $(DEVICE)

# Weight-space tasks (builds the INR and CNN zoos under $(L2O_DATA)/weight_space on first use, then every
# task x encoder x seed; about an hour on one core; resumable) -> results/weight_space.{md,json}, results/weight_space/
weight-space: install
	OMP_NUM_THREADS=1 $(PY) -m meta_train weight-space all --data-root "$(L2O_DATA)" --device $(DEVICE)

demo: install
	$(PY) -m meta_train demo --data-root "$(L2O_DATA)" --device $(DEVICE)

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks.graph
	$(PY) -m benchmarks.encoders
	$(PY) -m benchmarks.step_overhead
	$(PY) -m benchmarks.meta_train_throughput

clean:
	rm -rf $(VENV) .pytest_cache
