#!/bin/sh
# Entry point of the broker image (docker/broker.Dockerfile): writes rabbitmq.conf into
# /tmp/cspine-broker (a tmpfs; the root filesystem is read-only), then runs rabbitmq-server
# in the foreground (its own start script, not /usr/sbin's, which switches user).
#
# Settings (environment; docker-compose.yml sets them):
#   BROKER_USER, BROKER_PASSWORD  the one AMQP user (administrator of vhost /); required
#   RABBITMQ_NODE_IP_ADDRESS, RABBITMQ_NODE_PORT  the AMQP listener (default all addresses,
#                                 5672; docker/compose.host-network.yml: 127.0.0.1, BROKER_PORT)
#   RABBITMQ_DIST_PORT, ERL_EPMD_PORT  Erlang's distribution port and port mapper (loopback;
#                                 defaults 25672, 4369: set under host networking)
set -eu

: "${BROKER_USER:?set BROKER_USER}" "${BROKER_PASSWORD:?set BROKER_PASSWORD}"
DIR=/tmp/cspine-broker
mkdir -p "$DIR/log"
umask 077
cat >"$DIR/rabbitmq.conf" <<CONF
default_user = $BROKER_USER
default_pass = $BROKER_PASSWORD
default_vhost = /
log.console = true
log.console.level = info
log.file = false
CONF
printf '[].\n' >"$DIR/enabled_plugins"
: >"$DIR/rabbitmq-env.conf"
exec /usr/lib/rabbitmq/bin/rabbitmq-server
