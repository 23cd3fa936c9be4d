# `make train` and `make test` install what is missing into .venv/, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The torch build installed when none is present (pip picks CUDA or CPU by platform; pin here, range in pyproject).
TORCH_VERSION ?= 2.13.0
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install train test test-all lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev,bnb]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) -m sortednet.train $(ARGS)

# The suite without the tests marked slow (multi-process runs, torch.compile): what to run while working.
test: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Every test, the slow ones included: what CI runs.
test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) outputs multirun
