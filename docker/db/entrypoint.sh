#!/bin/sh
# Entry point of the db image (docker/db.Dockerfile): on an empty PGDATA (a new volume),
# creates the cluster (`initdb`: POSTGRES_USER as its superuser with POSTGRES_PASSWORD, SCRAM
# over TCP from any address, trust on the socket in /tmp that only this container sees) and
# the database POSTGRES_DB; then runs PostgreSQL in the foreground.
#
# Settings (environment; docker-compose.yml sets them):
#   POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB  required (read at the first start only)
#   DB_LISTEN_ADDRESSES   listen_addresses (default *; docker/compose.host-network.yml:
#                         127.0.0.1)
#   PGPORT                the port (default 5432)
set -eu

: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
: "${POSTGRES_DB:?set POSTGRES_DB}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    printf 'CREATE DATABASE "%s" OWNER "%s"\n' "$POSTGRES_DB" "$POSTGRES_USER" \
      | postgres --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres >/dev/null
  fi
  echo "db: cluster created in $PGDATA (database $POSTGRES_DB, user $POSTGRES_USER)"
fi
exec postgres -D "$PGDATA" -c listen_addresses="${DB_LISTEN_ADDRESSES:-*}" \
  -c unix_socket_directories=/tmp
