# The `broker` of the compose profile `pipeline` (docs/pacs-broker.md): Debian's
# rabbitmq-server, so it builds wherever Debian's archive is reachable (no Docker Hub).
#
#   docker compose --profile pipeline build broker     (build context: the repository root)
#
# One node named rabbit@localhost (its data folder on the volume keeps that name whatever the
# container's hostname), no plugins, one user from BROKER_USER / BROKER_PASSWORD (written into
# the config by docker/broker/entrypoint.sh at start; no `guest`). Erlang's port mapper and
# distribution port listen on loopback only (the CLI tools inside the container use them).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="cervical-fracture-triage-broker" \
      org.opencontainers.image.description="RabbitMQ (Debian package) for the PACS pipeline"
# policy-rc.d: the package's postinst must not start the broker inside the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /var/lib/rabbitmq/mnesia \
    && mkdir -p /var/lib/rabbitmq \
    && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
COPY docker/broker/entrypoint.sh /usr/local/bin/cspine-broker
ENV HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME=rabbit@localhost \
    RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia \
    RABBITMQ_CONFIG_FILE=/tmp/cspine-broker/rabbitmq.conf \
    RABBITMQ_CONF_ENV_FILE=/tmp/cspine-broker/rabbitmq-env.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=/tmp/cspine-broker/enabled_plugins \
    RABBITMQ_LOG_BASE=/tmp/cspine-broker/log \
    RABBITMQ_PID_FILE=/tmp/cspine-broker/rabbitmq.pid \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
USER rabbitmq
WORKDIR /var/lib/rabbitmq
VOLUME ["/var/lib/rabbitmq"]
EXPOSE 5672
# Healthy = the AMQP listener answers the protocol header with Connection.Start (the
# listeners open last, once the node has booted). No Erlang VM started per check.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket, sys; s = socket.create_connection(('127.0.0.1', int(os.environ.get('RABBITMQ_NODE_PORT') or 5672)), timeout=4); s.sendall(b'AMQP\\x00\\x00\\x09\\x01'); sys.exit(0 if s.recv(8).startswith(b'\\x01') else 1)"]
ENTRYPOINT ["/usr/local/bin/cspine-broker"]
