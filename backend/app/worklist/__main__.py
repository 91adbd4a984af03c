"""``python -m backend.app.worklist upgrade|current|revision -m MESSAGE [--autogenerate]``:
Alembic's commands on the database the Settings name (DATABASE_URL, else
WORKLIST_SQLITE_PATH). The API upgrades to head at start-up by itself; ``upgrade`` is for
doing it ahead of a rollout, ``revision --autogenerate`` for writing the next migration."""

from __future__ import annotations

import argparse

from alembic import command

from backend.app.core.config import Settings
from backend.app.worklist.store import WorklistStore, alembic_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.app.worklist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", help="upgrade the schema to head")
    sub.add_parser("current", help="print the schema's revision")
    revision = sub.add_parser("revision", help="write a new migration")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true")
    args = parser.parse_args(argv)
    url = Settings().worklist_database_url
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


if __name__ == "__main__":
    raise SystemExit(main())
