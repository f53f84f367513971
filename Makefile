# Every target sets up its own virtual environment, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): requirements/base.txt requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Fine-tune the bundled all-MiniLM-L6-v2 on the quickstart recipe, evaluate, print the report.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/hybridembed demo --recipe recipes/quickstart.yaml

## Run the test suite (unit tests on tiny random models + end-to-end tests on MiniLM).
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs outputs

## Check that a trained folder loads unchanged in sentence-transformers 5.x (its own venv, .venv-st5/)
## and gives the 6.x embeddings; tests/test_folder_compat.py fails instead of skipping here.
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

compat: $(STAMP) $(ST5_STAMP)
	HF_HUB_OFFLINE=1 HYBRIDEMBED_REQUIRE_COMPAT=1 HYBRIDEMBED_ST5_PYTHON=$(ST5_VENV)/bin/python \
		$(BIN)/python -m pytest -q tests/test_folder_compat.py
