#!/bin/sh
# Entry point of the proxy image (docker/proxy.Dockerfile): writes nginx.conf from
# /etc/cspine-proxy/nginx.conf.template into /tmp/cspine-proxy (a tmpfs; the root filesystem
# is read-only), checks it with `nginx -t`, then runs nginx in the foreground.
#
# Settings (environment; docker-compose.yml sets them):
#   PROXY_LISTEN          nginx `listen`: PORT or ADDRESS:PORT (default 8080)
#   PROXY_UPSTREAM_MODE   dns: REPLICA_HOST:REPLICA_PORT through Docker's DNS (127.0.0.11),
#                         re-resolved every 5 s, so `--scale replica=N` is followed (bridge
#                         networks, the default);
#                         ports: 127.0.0.1:REPLICA_PORT_BASE .. +REPLICA_PORT_COUNT-1 as an
#                         upstream group (docker/compose.host-network.yml: replicas share the
#                         host's ports, docker/replica_entry.py); ports nobody listens on are
#                         refused at once and skipped for 5 s (max_fails=1 fail_timeout=5s).
#                         A replica's 503 also counts as a failure there (nginx counts every
#                         proxy_next_upstream case): it gets no new requests for 5 s, and
#                         with every replica left out the proxy answers 503 + Retry-After
#   REPLICA_HOST, REPLICA_PORT            dns mode (default replica, 8000)
#   REPLICA_PORT_BASE, REPLICA_PORT_COUNT ports mode (default 8101, 8)
#   MAX_UPLOAD_MB, MAX_BATCH_MB, MAX_STUDY_MB  the API's limits (defaults: the API's, 20,
#                         100, 512); nginx enforces exactly the API's body limits (see
#                         nginx.conf.template) and answers over-limit uploads with a JSON 413
set -eu

DIR=/tmp/cspine-proxy
mkdir -p "$DIR"

bytes() {  # the API's body limit in bytes: int(MiB * 1048576) + extra (backend/app/core/config.py)
  awk -v x="$1" -v extra="$3" 'BEGIN { if (x !~ /^[0-9]+(\.[0-9]+)?$/ || x <= 0) exit 1; printf "%d\n", int(x * 1048576) + extra }' \
    || { echo "proxy: $2=$1 is not a positive number of MiB" >&2; exit 1; }
}
# MULTIPART_OVERHEAD_BYTES (64 KiB) on top of one file, as the API allows.
upload=$(bytes "${MAX_UPLOAD_MB:-20}" MAX_UPLOAD_MB 65536)
batch=$(bytes "${MAX_BATCH_MB:-100}" MAX_BATCH_MB 0)
study=$(bytes "${MAX_STUDY_MB:-512}" MAX_STUDY_MB 0)

case "${PROXY_UPSTREAM_MODE:-dns}" in
  dns)
    # ipv6=off: Docker's DNS answers A records for containers; valid=5s: scaled-up or
    # restarted replicas (new addresses) are picked up within 5 s.
    http_block="resolver 127.0.0.11 valid=5s ipv6=off; resolver_timeout 5s;"
    upstream="${REPLICA_HOST:-replica}:${REPLICA_PORT:-8000}"
    ;;
  ports)
    base=${REPLICA_PORT_BASE:-8101}
    count=${REPLICA_PORT_COUNT:-8}
    http_block="upstream replicas {"
    port=$base
    while [ "$port" -lt $((base + count)) ]; do
      http_block="$http_block server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"
      port=$((port + 1))
    done
    http_block="$http_block }"
    upstream=replicas
    ;;
  *)
    echo "proxy: PROXY_UPSTREAM_MODE must be dns or ports" >&2
    exit 1
    ;;
esac

sed -e "s|@LISTEN@|${PROXY_LISTEN:-8080}|" \
    -e "s|@UPSTREAM_HTTP@|$http_block|" \
    -e "s|@UPSTREAM@|$upstream|" \
    -e "s|@MAX_UPLOAD_BYTES@|$upload|" \
    -e "s|@MAX_BATCH_BYTES@|$batch|" \
    -e "s|@MAX_STUDY_BYTES@|$study|" \
    /etc/cspine-proxy/nginx.conf.template >"$DIR/nginx.conf"
if grep -n '@[A-Z_]*@' "$DIR/nginx.conf" | grep -v '^ *[0-9]*: *#'; then
  echo "proxy: unfilled fields in nginx.conf" >&2
  exit 1
fi
echo "proxy: listen ${PROXY_LISTEN:-8080}, upstream (${PROXY_UPSTREAM_MODE:-dns}) $upstream; body limits (bytes) ${upload} / batch ${batch} / study ${study}"
nginx -e stderr -c "$DIR/nginx.conf" -t -q
exec nginx -e stderr -c "$DIR/nginx.conf" -g 'daemon off;'
