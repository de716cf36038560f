# Quick start on a fresh clone (Python >= 3.10 and pip): `make train`, `make test`.
#
# The interpreter: the active virtual environment's (or conda environment's) when there is one; otherwise a
# project environment in .venv/, created on first use from $(BASE_PYTHON). PYTHON=/path/to/python picks one.
# Every target installs what is missing first: `pip install -e ".[dev]"` into that interpreter, skipped when it
# already has it for the current pyproject.toml (a stamp file per interpreter under build/make/).

PROJECT_VENV := .venv
BASE_PYTHON ?= python3
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else ifdef CONDA_PREFIX
PYTHON ?= $(CONDA_PREFIX)/bin/python
else
PYTHON ?= $(PROJECT_VENV)/bin/python
endif
PYTEST_ARGS ?=

# The stamp is named after the interpreter's absolute path (which need not exist yet).
PYTHON_PATH := $(abspath $(or $(shell command -v $(PYTHON) 2>/dev/null),$(PYTHON)))
STAMP_DIR := build/make
STAMP := $(STAMP_DIR)/install-$(shell printf '%s' '$(PYTHON_PATH)' | cksum | cut -d' ' -f1).stamp

# A stamp is stale when its interpreter no longer has the package (a recreated venv, a pip uninstall).
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(PYTHON) -c "import importlib.metadata as m; m.version('seg_template')" 2>/dev/null && echo ok),ok)
$(shell rm -f $(STAMP))
endif
endif

# Only the project environment is created here; any other interpreter must already exist.
ifeq ($(PYTHON_PATH),$(abspath $(PROJECT_VENV)/bin/python))
NEEDS_VENV := $(PROJECT_VENV)/bin/python
endif

.PHONY: help install train test test-slow test-all lint clean

help:
	@echo "make train      install if needed, then python train.py (ARGS='loss=ohem ...' adds overrides)"
	@echo "make test       install if needed, then the fast tests (pytest -m 'not slow')"
	@echo "make test-slow  the slow end-to-end tests (training, multirun, DDP on CPU, entry points)"
	@echo "make test-all   both"
	@echo "make lint       ruff check"
	@echo "make clean      remove logs/ and the install stamps (not .venv/)"
	@echo "interpreter:    $(PYTHON)"

install: $(STAMP)

$(PROJECT_VENV)/bin/python:
	$(BASE_PYTHON) -m venv $(PROJECT_VENV)

$(STAMP): pyproject.toml | $(NEEDS_VENV)
	$(PYTHON) -m pip install -e ".[dev]"
	@mkdir -p $(STAMP_DIR) && touch $@
ifdef NEEDS_VENV
	@echo "Installed into $(PROJECT_VENV)/. To run python train.py ... directly: source $(PROJECT_VENV)/bin/activate"
endif

train: install
	$(PYTHON) train.py $(ARGS)

test: install
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

# pytest exits 5 when no test is selected; that is not a failure here.
test-slow: install
	$(PYTHON) -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: test test-slow

lint: install
	$(PYTHON) -m ruff check .

clean:
	rm -rf logs $(STAMP_DIR)
