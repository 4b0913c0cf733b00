# One command each: run, test, lint. The venv is created and kept up to date on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format bench clean-venv

# llama-cpp-python compiles from source; the portable build avoids a segfault seen with
# the native (-march=native) build on some CPUs.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/persona serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check persona tests bench
	$(BIN)/ruff format --check persona tests bench
	$(BIN)/mypy persona
	$(BIN)/mypy --strict persona/pipeline persona/events

format: $(STAMP)
	$(BIN)/ruff format persona tests bench
	$(BIN)/ruff check --fix persona tests bench

bench: $(STAMP)
	$(BIN)/python bench/turn_overhead.py

clean-venv:
	rm -rf $(VENV)
