# Every target sets itself up on a fresh machine: a venv at .venv with pinned installs,
# and the web app's node_modules from package-lock.json.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
MODEL_DIR ?= ml_model/models/default
DATA ?= ../shared/data/cervical-ct
ARCH ?= custom
TRAIN_ARGS ?=

.PHONY: help venv test test-python test-frontend lint run serve bench frontend-build e2e clean \
	environment default-model docker-build docker-up docker-train

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
	$(PY) -m ruff check ml_model backend tests bench scripts
	$(PY) scripts/gen_environment.py --check
	$(PY) -m mypy

test-python: venv frontend-build  # the SPA tests (headers, mount) need the built app
	$(PY) -m pytest

test: lint test-python test-frontend

run: venv frontend-build
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)

serve: venv
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)

# ---- web app (frontend/): node_modules from package-lock.json, dist rebuilt only when sources change
FRONTEND_SRC := $(shell find frontend/src frontend/public -type f 2>/dev/null) \
	frontend/index.html frontend/vite.config.ts frontend/tsconfig.json

frontend/node_modules/.installed: frontend/package.json frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

frontend/dist/index.html: frontend/node_modules/.installed $(FRONTEND_SRC)
	cd frontend && npm run build
	touch $@

frontend-build: frontend/dist/index.html

# Vitest (components + API schema drift), then headless Chromium against the real backend and model.
test-frontend: venv frontend-build
	cd frontend && npm test
	cd frontend && MODEL_DIR=$(abspath $(MODEL_DIR)) npm run test:e2e

e2e: venv frontend-build
	cd frontend && MODEL_DIR=$(abspath $(MODEL_DIR)) npm run test:e2e

bench: venv
	$(PY) -m bench.run

environment:
	$(PY) scripts/gen_environment.py

default-model: venv
	$(PY) -m ml_model.train --arch $(ARCH) --data $(DATA) --out $(MODEL_DIR) \
		--report-dir runs/default-report $(TRAIN_ARGS)

docker-build:
	docker compose build

docker-up:
	docker compose up -d

docker-train:
	mkdir -p runs && TRAIN_UID=$$(id -u) TRAIN_GID=$$(id -g) docker compose --profile train run --rm train

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
