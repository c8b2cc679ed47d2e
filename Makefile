# Two commands on a fresh machine:
#   make test    the equivalence suite (CPU: Triton kernels run in the interpreter)
#   make bench   the benchmarks and the dashboard, on whatever device this machine has
VENV ?= .venv
PY := $(VENV)/bin/python
# Two workers: our CI machines have 2 cores, and the interpreter is CPU-bound.
PYTEST_WORKERS ?= 2

.PHONY: test bench venv clean

test:
	@bash scripts/bootstrap.sh test
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

bench:
	@bash scripts/bootstrap.sh test,bench
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks benchmarks/dashboard
