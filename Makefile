# Every target sets up its own virtual environment, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo test install clean lint format typecheck check

.DEFAULT_GOAL := help

$(STAMP): requirements/base.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## Create .venv and install the pinned requirements (requirements/dev.txt) and hybridembed itself.
install: $(STAMP)

# tcmalloc when the machine has it (Debian: libtcmalloc-minimal4): our trainer ran 18-26% faster with it here (docs/performance.md).
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))

## Fine-tune the bundled all-MiniLM-L6-v2 on the quickstart recipe, evaluate, print the report.
demo: $(STAMP)
	LD_PRELOAD=$(TCMALLOC) HF_HUB_OFFLINE=1 $(BIN)/hybridembed demo --recipe recipes/quickstart.yaml

## Run the test suite (unit tests on tiny random models + end-to-end tests on MiniLM).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

## Remove .venv and run outputs.
clean:
	rm -rf $(VENV) runs outputs

LINT_PATHS := src tests benchmarks scripts

## List the targets with what they do.
help:
	@awk '/^## /{doc = doc (doc ? " " : "") substr($$0, 4); next} /^[a-zA-Z0-9_-]+:/{if (doc) printf "  %-10s %s\n", substr($$1, 1, length($$1) - 1), doc; doc = ""; next} {doc = ""}' $(MAKEFILE_LIST)

## Lint with ruff and check that every file is formatted (rules in pyproject.toml [tool.ruff]).
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

## Format with ruff format (rewrites files; `make lint` fails on any file it would change).
format: $(STAMP)
	$(BIN)/ruff format $(LINT_PATHS)

## Type-check src/hybridembed with mypy (settings in pyproject.toml [tool.mypy]).
typecheck: $(STAMP)
	$(BIN)/mypy

## Lint, type-check and check the import graph (no cycles, schemas import nothing heavy).
check: lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_import_graph.py

# compat: a second virtual environment with sentence-transformers 5.x, built once per set of pins.
ST5_VENV ?= .venv-st5
ST5_PINS ?= torch==2.13.0 sentence-transformers==5.1.2 transformers==4.57.6
ST5_STAMP := $(ST5_VENV)/.installed-$(subst ==,-,$(subst $() ,_,$(ST5_PINS)))

.PHONY: compat

$(ST5_STAMP):
	$(PYTHON) -m venv $(ST5_VENV)
	$(ST5_VENV)/bin/pip install --quiet --upgrade pip
	$(ST5_VENV)/bin/pip install --quiet $(ST5_PINS)
	rm -f $(ST5_VENV)/.installed-*
	touch $(ST5_STAMP)

## Check that a trained folder loads unchanged in sentence-transformers 5.x (its own venv, .venv-st5/)
## and gives the 6.x embeddings; tests/test_folder_compat.py fails instead of skipping here.
compat: $(STAMP) $(ST5_STAMP)
	HF_HUB_OFFLINE=1 HYBRIDEMBED_REQUIRE_COMPAT=1 HYBRIDEMBED_ST5_PYTHON=$(ST5_VENV)/bin/python \
		$(BIN)/python -m pytest -q tests/test_folder_compat.py
