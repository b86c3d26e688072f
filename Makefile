# The two commands the README opens with. Both use one virtual environment (.venv, created on first use with
# the CPU torch pinned first and the test, openvino, transformers and plot extras), unless one is already active.
VENV ?= .venv
ifdef VIRTUAL_ENV
PY ?= python
STAMP :=
else
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.segkd-installed
endif

.PHONY: demo test test-fast lint venv

venv: $(STAMP)

$(VENV)/.segkd-installed: pyproject.toml
	[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/python -m pip install -q "torch==2.13.0"
	$(VENV)/bin/python -m pip install -q -e ".[test,openvino,transformers,plot]"
	touch $@

demo: $(STAMP)
	VENV=$(VENV) bash scripts/demo.sh

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# The suite without the end-to-end runs marked slow: a quick check while editing. CI runs `make test`.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
