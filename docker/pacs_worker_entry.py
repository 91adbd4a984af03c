"""Entry point of a `pacs-broker-worker` (compose profile `pipeline`) under
docker/compose.host-network.yml.

With `network_mode: host` every worker shares the host's ports, so they cannot all serve
/metrics on one: this starts the Prometheus endpoint (the default registry, which the
worker's metrics join) on the first free port of PACS_METRICS_HOST:
PACS_METRICS_PORT .. PACS_METRICS_PORT+PACS_METRICS_PORT_COUNT-1, in this process, so the
choice is atomic (bind either succeeds or the port is another worker's). It writes the URL
to /tmp/metrics-port (a tmpfs) for the health check, then runs `python -m pacs ARGS` in the
same process with PACS_METRICS_PORT=0 (the worker's own endpoint off: this one serves it).
Not used in bridge mode, where every worker has its own 0.0.0.0:9108.

    python /scale/pacs_worker_entry.py [ARGS of python -m pacs]     (cwd: the image's /app)
"""

from __future__ import annotations

import os
import runpy
import sys

from prometheus_client import start_http_server

# The health check (docker/compose.host-network.yml) reads it; overridable for the tests.
PORT_FILE = os.environ.get("PACS_METRICS_PORT_FILE", "/tmp/metrics-port")


def main(argv: list[str]) -> None:
    host = os.environ.get("PACS_METRICS_HOST", "127.0.0.1")
    base = int(os.environ.get("PACS_METRICS_PORT", "9108"))
    count = int(os.environ.get("PACS_METRICS_PORT_COUNT", "8"))
    chosen = None
    for port in range(base, base + count):
        try:
            start_http_server(port, addr=host)
        except OSError:
            continue
        chosen = port
        break
    if chosen is None:
        sys.exit(
            f"pacs_worker_entry: no free port in {host}:{base}-{base + count - 1}; "
            "more workers than PACS_METRICS_PORT_COUNT, or the ports are taken"
        )
    connect = "127.0.0.1" if host in ("", "0.0.0.0") else host
    with open(PORT_FILE, "w") as handle:
        handle.write(f"http://{connect}:{chosen}\n")
    print(f"pacs_worker_entry: metrics on {host}:{chosen}, starting python -m pacs", flush=True)
    os.environ["PACS_METRICS_PORT"] = "0"
    sys.path.insert(0, os.getcwd())  # as `python -m` would: the image's WORKDIR holds pacs/
    sys.argv = ["python -m pacs", *argv]
    runpy.run_module("pacs", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
