# Every target sets itself up on a fresh machine: a venv at .venv with pinned installs,
# and the web app's node_modules from package-lock.json.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
MODEL_DIR ?= ml_model/models/default
DATA ?= ../shared/data/cervical-ct

.PHONY: help venv test test-python test-frontend lint run serve bench frontend-build e2e clean

help:
	@echo "make run        start the product (API + web app) on http://$(HOST):$(PORT)"
	@echo "make test       run every test (Python, web app, browser end-to-end)"
	@echo "make serve      start only the API (PORT=NNNN)"
	@echo "make bench      run the benchmark suite (not part of make test)"
	@echo "make lint       ruff + mypy"

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(PY) -m ruff check ml_model backend tests bench
	$(PY) -m mypy

test-python: venv
	$(PY) -m pytest

test: lint test-python

run: venv
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)

serve: venv
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)

bench: venv
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
