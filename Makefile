# `make train` and `make test` install what is missing into .venv/, then run.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMACPP_STAMP := $(VENV)/.installed-llamacpp
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

# The llamacpp extra: llama.cpp built from source (minutes, once), so the GGUF tests run in llama.cpp itself.
$(LLAMACPP_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[llamacpp]"
	touch $(LLAMACPP_STAMP)

train: install
	$(PY) -m sortednet.train $(ARGS)

# The suite without the tests marked slow (multi-process runs, torch.compile): what to run while working. Without
# the llamacpp extra its llama.cpp checks skip, saying so (-rs prints every skip reason).
test: install
	$(PY) -m pytest -m "not slow" -rs $(PYTEST_ARGS)

# Every test, the slow ones and the llama.cpp checks included (the llamacpp extra installed first): what CI runs.
test-all: install $(LLAMACPP_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) outputs multirun
