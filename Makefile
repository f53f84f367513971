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
