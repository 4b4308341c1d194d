# Conveniences around the README's two commands. Each target needs only Python >= 3.11.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint typecheck ci

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
	$(BIN)/ruff check app tests deploy
	$(BIN)/ruff format --check app tests deploy
	$(BIN)/mypy

ci:               ## what CI runs
	bash .ci/run
