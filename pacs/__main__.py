"""``python -m pacs``: run the PACS worker until SIGTERM / Ctrl-C.

Settings come from the environment (see ``pacs.settings.WorkerSettings``), e.g.

    PACS_URL=http://127.0.0.1:8042 API_URL=http://127.0.0.1:8000 python -m pacs
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from prometheus_client import start_http_server

from pacs.settings import WorkerSettings
from pacs.state import StateDB
from pacs.worker import Worker


def main() -> int:
    settings = WorkerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("dicomweb_client", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("pacs")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    state = StateDB(settings.state_db)
    worker = Worker(settings, state)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the series under way, then stopping", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
