"""The web app's accepted formats (frontend/src/generated/formats.ts) are generated from the
server's table of input formats and kept in sync (``make lint`` runs the same check)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ml_model.imaging.formats import FORMATS
from tests.packaging.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gen_formats.py"
GENERATED = REPO_ROOT / "frontend" / "src" / "generated" / "formats.ts"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )


def _accept() -> list[str]:
    found = re.search(r'^export const ACCEPT = "([^"]*)";$', GENERATED.read_text(), re.M)
    assert found, "formats.ts has no ACCEPT"
    return found.group(1).split(",")


def test_generated_formats_ts_is_current() -> None:
    result = _run("--check")
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_web_app_accepts_every_extension_and_type_the_server_decodes() -> None:
    accept = _accept()
    for fmt in FORMATS:
        assert set(fmt.extensions + fmt.mime_types) <= set(accept), fmt.name
    assert {".bmp", ".tif", ".tiff", ".gif"} <= set(accept)  # left out before the table
    assert len(accept) == len(set(accept))


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "formats.ts"
    stale.write_text(GENERATED.read_text().replace(".gif,", "", 1))
    assert _run("--check", "--output", str(stale)).returncode == 1
    assert _run("--check", "--output", str(tmp_path / "missing.ts")).returncode == 1
    assert _run("--output", str(stale)).returncode == 0
    assert _run("--check", "--output", str(stale)).returncode == 0
