"""Write a generated file, or (``--check``, as ``make lint`` runs it) say whether it is
current: shared by the ``scripts/gen_*.py`` generators. Standard library only."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, expected: str, check: bool, script: str) -> int:
    """With ``check``: 0 when ``path`` holds ``expected``, else 1 (saying to run ``script``).
    Otherwise write ``expected`` to ``path``. Returns the exit status."""
    if check:
        current = path.read_text() if path.exists() else None
        if current != expected:
            print(f"{path} is stale: run `python {script}`", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(expected)
    print(f"wrote {path}")
    return 0
