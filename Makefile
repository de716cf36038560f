# Quick start on a fresh clone (Python >= 3.10 and pip): `make train`, `make test`.
# Every target installs what is missing first: `pip install -e ".[dev]"` into the current interpreter,
# skipped when this interpreter already has it for the current pyproject.toml (a stamp file per interpreter).

PYTHON ?= python
PYTEST_ARGS ?=
STAMP_DIR := build/make
STAMP := $(STAMP_DIR)/install-$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.md5(sys.executable.encode()).hexdigest()[:10])").stamp

.PHONY: help install train test test-slow test-all lint clean

help:
	@echo "make train      install if needed, then python train.py (ARGS='loss=ohem ...' adds overrides)"
	@echo "make test       install if needed, then the fast tests (pytest -m 'not slow')"
	@echo "make test-slow  the slow end-to-end tests (training, multirun, DDP on CPU, entry points)"
	@echo "make test-all   both"
	@echo "make lint       ruff check"
	@echo "make clean      remove logs/ and the install stamp"

install: $(STAMP)

# Re-installs when pyproject.toml changes or when the package is not importable from this interpreter
# (e.g. the stamp was copied from another environment).
$(STAMP): pyproject.toml
	@if [ -f $@ ] && $(PYTHON) -c "import importlib.metadata as m; m.version('seg_template')" 2>/dev/null; then \
		touch $@; \
	else \
		$(PYTHON) -m pip install -e ".[dev]" && mkdir -p $(STAMP_DIR) && touch $@; \
	fi

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
