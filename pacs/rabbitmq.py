"""A local development RabbitMQ (Debian's ``rabbitmq-server``) on loopback, for ``make broker``
and the tests: its own node name, ports, data and log folders, no plugins, the ``guest`` user
(which RabbitMQ admits from loopback only).

    python -m pacs.rabbitmq [--port 5672] [--storage DIR]   # prints the AMQP URL; Ctrl-C stops

Started again on the same storage and ports, it keeps its durable queues and the persistent
messages in them (how the tests restart the broker).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pacs.orthanc import free_port, wait_until_ready

SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


class RabbitUnavailable(RuntimeError):
    """rabbitmq-server is not installed, or it did not start."""


def find_rabbitmq() -> str:
    """The rabbitmq-server start script (not /usr/sbin's, which switches user), or
    RabbitUnavailable saying why."""
    override = os.environ.get("RABBITMQ_SERVER_BIN")
    for candidate in [override] if override else list(SERVER_CANDIDATES):
        if Path(candidate).is_file():
            return candidate
    raise RabbitUnavailable("RabbitMQ is not installed (apt-get install rabbitmq-server)")


@dataclass
class RabbitServer:
    """A running development broker (its own process group: the script and Erlang's VM)."""

    process: subprocess.Popen[bytes]
    storage: Path
    port: int
    dist_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL to the whole process group; waits for the end."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the VM may outlive the script
            os.killpg(self.process.pid, signal.SIGKILL)


def _answers(port: int) -> bool:
    """Whether an AMQP listener answers the protocol header on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(8).startswith(b"\x01")  # Connection.Start frame
    except OSError:
        return False


def start_rabbitmq(
    storage: Path, port: int = 0, dist_port: int = 0, timeout: float = 90.0
) -> RabbitServer:
    """Start a broker on 127.0.0.1:``port`` with its data in ``storage``; wait until AMQP
    answers."""
    script = find_rabbitmq()
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    dist_port = dist_port or free_port()
    config = storage / "rabbitmq.conf"
    config.write_text(
        f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users.guest = true\n"
        "log.console = false\nlog.file.level = info\n"
    )
    plugins = storage / "enabled_plugins"
    plugins.write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(storage),  # the Erlang cookie
        # One node name per port: unique among the brokers running here, and the same at
        # each start on that port (the data folder is per node name).
        "RABBITMQ_NODENAME": f"cspine{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_CONF_ENV_FILE": str(storage / "rabbitmq-env.conf"),  # not /etc's
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_MNESIA_BASE": str(storage / "mnesia"),
        "RABBITMQ_LOG_BASE": str(storage / "log"),
        "RABBITMQ_PID_FILE": str(storage / "rabbitmq.pid"),
        # Erlang's distribution and port mapper (epmd, which the node starts as a daemon
        # when none runs, and which outlives it) on loopback too.
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    log_path = storage / "rabbitmq.out"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [script], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=storage, start_new_session=True,
        )  # fmt: skip
    server = RabbitServer(process, storage, port, dist_port, log_path)
    try:
        wait_until_ready(
            process, lambda: _answers(port), timeout, "rabbitmq-server", log_path,
            RabbitUnavailable,
        )  # fmt: skip
    except RabbitUnavailable:
        server.stop(kill=True)
        raise
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, help="data folder (default: a temp dir)")
    parser.add_argument("--port", type=int, default=5672)
    args = parser.parse_args(argv)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="cspine-rabbitmq-"))
    try:
        server = start_rabbitmq(storage, args.port)
    except RabbitUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"BROKER_URL={server.url}")
    print(f"storage  {storage}  (logs {storage / 'log'})")
    print("Ctrl-C stops it.", flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if server.process.poll() is None:  # the wait below returns once it has stopped
            os.killpg(server.process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.process.wait()
    print(f"RabbitMQ stopped ({code}); storage kept in {storage}")
    return 0 if code in (0, -signal.SIGTERM, 130) else code


if __name__ == "__main__":
    sys.exit(main())
