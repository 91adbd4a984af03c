# The PACS worker (pacs/): follows a DICOMweb PACS, asks the API for study verdicts, stores
# an SR and heatmap Secondary Captures back. No TensorFlow: it talks HTTP to the API.
#
#   docker compose --profile pacs build pacs-worker      (build context: the repository root)
#
# PYTHON_IMAGE is a build argument, as in docker/backend.Dockerfile (`make docker-base`
# builds a local stand-in where Docker Hub cannot be reached).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
# Only the worker's packages, at the versions pinned in requirements.txt (one place).
COPY requirements.txt /tmp/requirements.txt
# (sqlalchemy and psycopg: the state on a SQLite file or, with PACS_STATE_URL, PostgreSQL.)
RUN grep -E '^(numpy|pillow|pydicom|pydantic-settings|prometheus-client|dicomweb-client|highdicom|requests|pika|sqlalchemy|psycopg\[binary\])==' \
        /tmp/requirements.txt > /tmp/requirements-pacs.txt \
    && test "$(wc -l < /tmp/requirements-pacs.txt)" -eq 11 \
    && /opt/venv/bin/pip install -r /tmp/requirements-pacs.txt

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cervical-fracture-triage-pacs-worker" \
      org.opencontainers.image.description="PACS worker: DICOMweb in, DICOM SR + heatmaps out"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    PACS_STATE_DB=/state/pacs-worker.sqlite3 \
    PACS_METRICS_HOST=0.0.0.0 \
    PACS_METRICS_PORT=9108
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --create-home --home-dir /home/app \
       --shell /usr/sbin/nologin app \
    && mkdir -p /state && chown 10001:10001 /state
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY pacs/ /app/pacs/
RUN python -m compileall -q /app/pacs
USER 10001:10001
VOLUME ["/state"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4).status == 200 else 1)"]
CMD ["python", "-m", "pacs"]
