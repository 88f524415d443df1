# `make report` and `make test` work on a fresh clone: each creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The torch release the project is tested with. Installed before the package, so that pip
# never resolves the bare `torch>=2.4` requirement to a newer multi-GB build. On this project's
# CPU machines pip finds a CPU build of it on local disk; elsewhere PyPI's default build.
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: report static test lint bench clean

# What the default run needs and no more; the tests add the dev extra (pytest, ruff, mypy and
# the peers fvcore and torchinfo, which the tests use as oracles).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

report: $(BIN)/.installed  ## the main job: profile the default models, write reports/latest/
	$(BIN)/python -m nin_profile $(ARGS)

static: $(BIN)/.installed  ## estimates only, no device used, into reports/latest-static/
	$(BIN)/python -m nin_profile --static $(ARGS)

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check nin_profile tests bench
	$(BIN)/ruff format --check nin_profile tests bench
	$(BIN)/mypy

test: lint  ## lint, type-check, then the test suite (CUDA tests run only where a GPU is)
	$(BIN)/python -m pytest $(ARGS)

bench: $(BIN)/.installed-dev
	$(BIN)/python bench/static_speed.py

clean:
	rm -rf $(VENV) reports/latest reports/latest-static .pytest_cache .mypy_cache .ruff_cache
