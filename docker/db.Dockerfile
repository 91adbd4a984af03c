# The `db` of the compose profile `pipeline`: Debian's PostgreSQL 15 for the API's worklist
# (DATABASE_URL=postgresql+psycopg://...), so it builds wherever Debian's archive is reachable.
#
#   docker compose --profile pipeline build db         (build context: the repository root)
#
# The cluster is created on the volume at first start by docker/db/entrypoint.sh (user,
# password and database from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB; SCRAM
# passwords over TCP, trust on the container's own socket only). Runs as `postgres`.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="cervical-fracture-triage-db" \
      org.opencontainers.image.description="PostgreSQL (Debian package) for the worklist"
# No `main` cluster in the image (postgresql-common would create one at install): the
# entrypoint creates it on the volume. policy-rc.d: nothing is started during the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod 755 /usr/sbin/policy-rc.d \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/cspine.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/lib/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY docker/db/entrypoint.sh /usr/local/bin/cspine-db
ENV PATH=/usr/lib/postgresql/15/bin:${PATH} \
    PGDATA=/var/lib/postgresql/data \
    PGHOST=/tmp
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# PGPORT (default 5432) is the server's port and pg_isready's alike.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\""]
# SIGINT: PostgreSQL's fast shutdown (SIGTERM's smart shutdown waits for every client).
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/cspine-db"]
