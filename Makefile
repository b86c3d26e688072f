# The two commands the README opens with.
PY ?= python

.PHONY: demo test lint

demo:
	bash scripts/demo.sh

test:
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
