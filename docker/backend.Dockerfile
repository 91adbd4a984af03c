# The product image: FastAPI API + the built web app + the bundled model, on CPU.
#
#   docker compose build backend        (build context: the repository root)
#   docker build --network host -f docker/backend.Dockerfile -t cspine-triage/backend .
#
# Stages: `frontend` (node: npm ci && npm run build -> frontend/dist), `builder` (a venv
# from requirements.txt only, without TensorFlow: the API serves with ONNX Runtime, Grad-CAM
# included; no test/lint tooling), `runtime` (python slim, non-root).
#
# Base images are build arguments. The defaults are the public images; where Docker Hub
# cannot be reached, `make docker-base` builds local stand-ins from Debian packages and PyPI
# (docker/local-base.sh) and `make docker-build-local` passes them here:
#   --build-arg PYTHON_IMAGE=cspine-local/python:3.11-bookworm
#   --build-arg NODE_IMAGE=cspine-local/node:22-bookworm
# No `# syntax=` line: BuildKit's built-in frontend is enough, and it needs no pull.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# --- web app -----------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS frontend
WORKDIR /src/frontend
# The lock file alone first, so the npm layer is cached until dependencies change.
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build && test -f dist/index.html

# --- Python dependencies -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Runtime pins only (requirements.txt: no TensorFlow or Keras, which training and
# INFERENCE_BACKEND=local need: the training pins); requirements-dev.txt never enters the
# image. INFERENCE_BACKEND=onnx (the default) and tfserving never import TensorFlow.
COPY requirements.txt /tmp/requirements.txt
RUN ! grep -qiE '^(tensorflow|keras)' /tmp/requirements.txt \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- runtime -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cervical-fracture-triage-backend" \
      org.opencontainers.image.description="Cervical-spine CT fracture triage: API + web app"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MODEL_DIR=/models/default \
    FRONTEND_DIST=/app/frontend/dist \
    WORKLIST_SQLITE_PATH=/data/worklist.sqlite3

RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --create-home --home-dir /home/app \
       --shell /usr/sbin/nologin app \
    && mkdir -p /data && chown 10001:10001 /data

WORKDIR /app
# Code and assets stay owned by root: the server process can read but not change them.
# Small layers first, the venv (the largest layer) last (every later layer would copy it again on
# copy-based storage drivers such as vfs).
COPY ml_model/ /app/ml_model/
COPY backend/ /app/backend/

# Model fallback: /models/default is the bundle baked into the image (a link, no second
# copy). Mounting a folder over /models (compose does, read-only) replaces it entirely.
# compileall runs on the base image's Python, the venv's own interpreter.
RUN mkdir -p /models \
    && ln -s /app/ml_model/models/default /models/default \
    && test -f /models/default/model_card.json \
    && python -m compileall -q /app/ml_model /app/backend

COPY --from=frontend /src/frontend/dist/ /app/frontend/dist/
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
# The worklist's SQLite file (unless DATABASE_URL names a PostgreSQL server): the one thing
# the server writes, on a volume of its own (the rest of the container is read-only).
VOLUME ["/data"]
EXPOSE 8000

# /ready is 200 only once the model is loaded and warmed up (503 before). No curl in slim.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4).status == 200 else 1)"]

# The Makefile's `serve` flags: header/body read deadlines (backend/app/core/http.py) and a
# bound on graceful shutdown (compose's stop_grace_period is longer).
CMD ["uvicorn", "backend.app.main:app", "--host", "0.0.0.0", "--port", "8000", "--http", "backend.app.core.http:BoundedHttpProtocol", "--timeout-keep-alive", "5", "--timeout-graceful-shutdown", "20"]
