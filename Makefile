# Both targets work on a fresh machine: they create .venv and install the
# project (with the PostgreSQL driver and the dev tools) when it is missing or
# pyproject.toml changed, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dendrite demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -c 'import langgraph, dask' 2>/dev/null || \
		$(BIN)/python -m pip install --quiet -e '.[dev,postgres,bench]'
	$(BIN)/python bench/store_bench.py --quick
	$(BIN)/python bench/engine_bench.py --quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
