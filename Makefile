# Two entry points (README "Quick start"): `make run` and `make test`.
# Each creates .venv and installs what it needs; torch==2.13.0 goes first so pip takes the CPU wheel
# on disk instead of a multi-GB CUDA build (docs/DESIGN.md, "torch").
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run ui test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q -e ".[dev,cpu]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/kalm run --offline

ui: $(STAMP)
	$(BIN)/kalm ui --offline

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_staging.py

clean:
	rm -rf data .pytest_cache
