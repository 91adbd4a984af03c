# The `proxy` service of the compose profile `scale`: stock nginx (Debian's `nginx` package)
# load-balancing over the `replica` API containers.
#
#   docker compose --profile scale build proxy          (build context: the repository root)
#
# Built FROM the same PYTHON_IMAGE base as the backend (python:3.11-slim-bookworm, or the
# local Debian stand-in from `make docker-base`): Debian's archive is all it needs, and the
# health check uses the base's Python (no curl). nginx.conf is a template filled at start by
# docker/proxy/entrypoint.sh (see its settings). Runs as uid 10001 on port 8080 (> 1024).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cervical-fracture-triage-proxy" \
      org.opencontainers.image.description="nginx load balancer for the API replicas"
# policy-rc.d: the package's postinst must not start nginx inside the build (which may run
# on the host's network). The Debian site config is dropped: the template is the only one.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/* \
    && nginx -v \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin app
COPY docker/proxy/nginx.conf.template /etc/cspine-proxy/nginx.conf.template
COPY docker/proxy/entrypoint.sh /usr/local/bin/cspine-proxy
RUN chmod 755 /usr/local/bin/cspine-proxy
USER 10001:10001
EXPOSE 8080
# Healthy = the proxy answers and at least one replica behind it is ready (nginx moves a
# GET /ready that gets 503 on to the next replica).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; h, _, p = os.environ.get('PROXY_LISTEN', '8080').rpartition(':'); h = h if h not in ('', '0.0.0.0', '*') else '127.0.0.1'; sys.exit(0 if urllib.request.urlopen(f'http://{h}:{p}/ready', timeout=4).status == 200 else 1)"]
# SIGQUIT: nginx's graceful stop (finishes the requests in flight).
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/local/bin/cspine-proxy"]
