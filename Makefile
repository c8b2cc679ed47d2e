# Two commands on a fresh machine:
#   make test    the equivalence suite (CPU: Triton kernels run in the interpreter)
#   make bench   the benchmarks and the dashboard, on whatever device this machine has
# and, for the supported torch/triton range and a CUDA machine:
#   make test-floor   the same suite under the oldest supported triton (a second venv)
#   make gpu-check    on a CUDA box, with the torch/triton already there: tests, determinism, benchmarks
VENV ?= .venv
PY := $(VENV)/bin/python
# Two workers: our CI machines have 2 cores, and the interpreter is CPU-bound.
PYTEST_WORKERS ?= 2
# The supported triton range (pyproject.toml, README): floor and top, both tested by .ci/run.
TRITON_FLOOR := 3.6.0
TRITON_TOP := 3.9.0
FLOOR_VENV ?= .venv-floor

.PHONY: test test-floor bench gpu-check clean

test:
	@TRITON_VERSION=$(TRITON_TOP) bash scripts/bootstrap.sh test
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

test-floor:
	@VENV=$(FLOOR_VENV) TRITON_VERSION=$(TRITON_FLOOR) REQUIRE_TRITON=1 bash scripts/bootstrap.sh test
	$(FLOOR_VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) tests

bench:
	@TRITON_VERSION=$(TRITON_TOP) bash scripts/bootstrap.sh test,bench
	$(PY) -m benchmarks.run

# No pip, no venv: the python on PATH (PYTHON=...) with its own torch and triton, the repo on
# PYTHONPATH. Exit 0: all passed; 1: a part failed; 3: no CUDA (the CUDA tests were collected only).
PYTHON ?= python3
gpu-check:
	$(PYTHON) scripts/gpu_check.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .benchmarks benchmarks/dashboard
