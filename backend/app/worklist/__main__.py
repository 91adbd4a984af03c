"""``python -m backend.app.worklist upgrade|current|revision -m MESSAGE [--autogenerate]``:
Alembic's commands on the database the Settings name (DATABASE_URL, else
WORKLIST_SQLITE_PATH). The API upgrades to head at start-up by itself; ``upgrade`` is for
doing it ahead of a rollout, ``revision --autogenerate`` for writing the next migration.

``python -m backend.app.worklist export OUT [--since DATE] [--pacs-url URL]``: the reviewed
studies as a labelled set in the RSNA 2022 layout (``export.py``)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from alembic import command

from backend.app.core.config import Settings
from backend.app.worklist.export import export_reviewed
from backend.app.worklist.store import WorklistStore, alembic_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.app.worklist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="upgrade the schema to head")
    sub.add_parser("current", help="print the schema's revision")
    revision = sub.add_parser("revision", help="write a new migration")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true")
    export = sub.add_parser("export", help="reviewed studies as an RSNA 2022 labelled set")
    export.add_argument("out", type=Path, help="the folder to write (train.csv, ...)")
    export.add_argument(
        "--since", type=since_date, help="only studies whose latest read is at or after this "
        "ISO date or time (UTC when no zone is given)",
    )  # fmt: skip
    export.add_argument(
        "--pacs-url", help="DICOMweb root to fetch each series from by WADO-RS, e.g. "
        "http://orthanc:8042/dicom-web (user:password@ in the URL for basic auth)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    url = Settings().worklist_database_url
    if args.command == "export":
        return export_command(url, args.out, args.since, args.pacs_url)
    if args.command == "upgrade":
        store = WorklistStore(url)
        try:
            store.migrate()
        finally:
            store.close()
    elif args.command == "current":
        command.current(alembic_config(url))
    else:
        command.revision(alembic_config(url), message=args.message, autogenerate=args.autogenerate)
    return 0


def since_date(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def export_command(url: str, out: Path, since: datetime | None, pacs_url: str | None) -> int:
    store = WorklistStore(url)
    try:
        report = export_reviewed(store, out, since=since, pacs_url=pacs_url)
    finally:
        store.close()
    print(f"{out}: {report.summary()}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
