"""environment.yml is generated from the pip pins and kept in sync."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.packaging.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gen_environment.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def _pins(path) -> list[str]:
    """Requirement lines of a requirements file, `-r` includes expanded in place."""
    result: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            result += _pins(path.parent / line[3:].strip())
        elif line:
            result.append(line)
    return result


def test_environment_yml_is_in_sync():
    result = _run("--check")
    assert result.returncode == 0, result.stderr + result.stdout


def test_environment_yml_holds_exactly_the_dev_pins():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert deps[:2] == ["python=3.11", "pip"]
    (pip_section,) = [d for d in deps if isinstance(d, dict)]
    assert pip_section["pip"] == _pins(REPO_ROOT / "requirements-dev.txt")


def test_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "environment.yml"
    stale.write_text((REPO_ROOT / "environment.yml").read_text().replace("==", ">=", 1))
    assert _run("--check", "--output", str(stale)).returncode == 1
    assert _run("--check", "--output", str(tmp_path / "missing.yml")).returncode == 1
    assert _run("--output", str(stale)).returncode == 0
    assert _run("--check", "--output", str(stale)).returncode == 0
