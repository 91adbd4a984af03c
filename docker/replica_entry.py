"""Entry point of a `replica` (compose profile `scale`) under docker/compose.host-network.yml.

With `network_mode: host` every replica shares the host's ports, so they cannot all listen
on one: this takes the image's uvicorn command line, treats its `--host H --port P` as the
first of REPLICA_PORT_COUNT ports (P, P+1, ...), binds and listens on the first free one,
then `exec`s uvicorn on that already-listening socket (`--fd N`, without --host/--port).
Binding here, before uvicorn loads the model, makes the choice atomic: two replicas starting
at once cannot both take a port, and no replica loads the model only to fail at bind().

It writes the replica's own URL to /tmp/replica-port (a tmpfs) for the health check, and
logs the port. The proxy (docker/proxy/) lists the same range as upstream servers and skips
the ones nobody listens on. IPv4 only. Not used in bridge mode, where every replica listens
on its own 0.0.0.0:8000 and Docker's DNS name `replica` lists them all.

    python /scale/replica_entry.py uvicorn backend.app.main:app --host 127.0.0.1 --port 8101 ...
"""

from __future__ import annotations

import os
import socket
import sys

# The health check (docker/compose.host-network.yml) reads it; overridable for the tests.
PORT_FILE = os.environ.get("REPLICA_PORT_FILE", "/tmp/replica-port")


def _take(args: list[str], flag: str) -> str:
    index = args.index(flag)
    value = args[index + 1]
    del args[index : index + 2]
    return value


def main(argv: list[str]) -> None:
    args = list(argv)
    try:
        host = _take(args, "--host")
        base = int(_take(args, "--port"))
    except (ValueError, IndexError):
        sys.exit("replica_entry: usage: replica_entry.py uvicorn APP --host H --port FIRST [...]")
    count = int(os.environ.get("REPLICA_PORT_COUNT", "8"))
    if not args or count < 1:
        sys.exit("replica_entry: no command, or REPLICA_PORT_COUNT < 1")

    listener = None
    for port in range(base, base + count):
        candidate = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR (as uvicorn sets): a port in TIME_WAIT after a restart is reusable;
        # a port another replica listens on still is not (that is what we rely on).
        candidate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            candidate.bind((host, port))
            candidate.listen(2048)
        except OSError:
            candidate.close()
            continue
        listener = candidate
        break
    if listener is None:
        sys.exit(
            f"replica_entry: no free port in {host}:{base}-{base + count - 1}; "
            "more replicas than REPLICA_PORT_COUNT, or the ports are taken"
        )

    listener.set_inheritable(True)
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else host
    with open(PORT_FILE, "w") as handle:
        handle.write(f"http://{connect}:{port}\n")
    print(f"replica_entry: listening on {host}:{port}, starting {args[0]}", flush=True)
    os.execvp(args[0], [*args, "--fd", str(listener.fileno())])


if __name__ == "__main__":
    main(sys.argv[1:])
