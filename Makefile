# `make demo` and `make test` set everything up themselves (idempotent): a .venv, torch 2.13.0
# only when no torch is importable there, and the package with its dev extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gpr-installed
PRESET ?= small
OUT ?= out/demo

.PHONY: setup demo test lint typecheck bench-world clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/gpr demo --preset $(PRESET) --out $(OUT) --overwrite

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

bench-world: setup
	$(PY) benchmarks/world.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
