# Set-up is part of every target: a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Data root: the shared torchvision-style folder when it exists, else whatever L2O_DATA says.
L2O_DATA ?= $(firstword $(wildcard ../shared/datasets) $(HOME)/.cache/l2o/data)
export L2O_DATA
TORCH_PIN := torch==2.13.0

.PHONY: run test test-all bench install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m meta_train demo --data-root "$(L2O_DATA)"

test: install
	$(PY) -m pytest -q -m "not slow"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/graph.py

clean:
	rm -rf $(VENV) .pytest_cache
