# Conveniences around the README's two commands. Each target needs only Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint typecheck ci compiled test-compiled

$(BIN)/audiohook-gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(BIN)/audiohook-gateway

run: install      ## the gateway on its embedded Redis with the demo integration
	$(BIN)/audiohook-gateway serve --env-file .env.example

test: install     ## the whole test suite
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check app tests deploy setup.py
	$(BIN)/ruff format --check app tests deploy setup.py
	$(BIN)/mypy

compiled: install  ## the per-frame modules compiled with mypyc, in .venv-compiled (needs a C compiler)
	bash .ci/compiled --build-only

test-compiled: install  ## the tests that start gateways, with those gateways on the compiled build
	bash .ci/compiled

ci:               ## what CI runs
	bash .ci/run
