"""The product's API under uvicorn, exactly as ``make serve`` starts it, plus a file that maps
its threads' native ids to their Python names, for the per-thread CPU accounting of
``bench.request_path`` (Linux names every Python thread "python"). Not part of the product.

    python -m bench.profiled_api --port 8300 --threads-file /tmp/threads.json
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from uvicorn.main import main as uvicorn_main

from bench.common import make_serve_flags


def _write_thread_names(path: Path, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        names = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id}
        path.with_suffix(".tmp").write_text(json.dumps(names))
        path.with_suffix(".tmp").replace(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads-file", type=Path, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(
        target=_write_thread_names,
        args=(args.threads_file, stop),
        name="bench-thread-names",
        daemon=True,
    ).start()
    command = ["backend.app.main:app", "--host", "127.0.0.1", "--port", str(args.port)]
    try:
        uvicorn_main.main(args=[*command, *make_serve_flags(), "--log-level", "warning"])
    finally:
        stop.set()


if __name__ == "__main__":
    main()
