"""The README is the front door: its commands must exist, and the cheap ones must run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import api_server_command, free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def shell_lines() -> list[str]:
    """Every command in the README's bash blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


COMMANDS = shell_lines()
PYTHON_COMMANDS = [c for c in COMMANDS if " -m ml_model." in c]


def test_the_two_commands_are_there() -> None:
    assert "make run" in COMMANDS[0] and "make test" in COMMANDS[1]
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("target", sorted(set(re.findall(r"`make ([a-z-]+)", README))))
def test_make_targets_exist(target: str) -> None:
    result = subprocess.run(["make", "-n", target], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", PYTHON_COMMANDS, ids=lambda c: c.split(" -m ")[1][:60])
def test_cli_flags_exist(command: str) -> None:
    """Every --flag the README uses is accepted by that module's argument parser."""
    argv = shlex.split(command)
    module = argv[argv.index("-m") + 1]
    help_text = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert flag in help_text, f"{module} has no {flag}"


def test_readme_documents_every_setting() -> None:
    from backend.app.core.config import Settings

    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in README, f"setting {name.upper()} missing from README"


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [c for c in PYTHON_COMMANDS if "ml_model.evaluate" in c or "ml_model.predict ../" in c],
)
def test_cheap_cli_commands_run(command: str, shared_data: Path, tmp_path: Path) -> None:
    # README arguments that are /tmp/ paths move to tmp_path first; then the interpreter is
    # this one (which may itself live under /tmp, in a clone there: it is not rewritten).
    argv = [
        f"{tmp_path}/{a[len('/tmp/') :]}" if a.startswith("/tmp/") else a
        for a in shlex.split(command)
    ]
    argv = [sys.executable if a.endswith("python") else a for a in argv]
    subprocess.run(argv, cwd=REPO_ROOT, check=True, capture_output=True, timeout=600)
    assert any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(api_server_command(port), f"{base}/ready"):
        yield base


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding samples/ as `make samples` writes it (the curl lines' cwd)."""
    cwd = tmp_path_factory.mktemp("readme-curl")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_samples.py"), "--out", "samples"],
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return cwd


def test_samples_are_committed_as_make_samples_writes_them(samples_dir: Path) -> None:
    for name in ("CT_small.dcm", "CT_small.png", "series.zip"):
        committed = REPO_ROOT / "samples" / name
        assert committed.is_file(), f"{committed}: run `make samples` and commit it"
        assert committed.read_bytes() == (samples_dir / "samples" / name).read_bytes(), name


CURL_COMMANDS = [c for c in COMMANDS if c.startswith("curl ")]


def test_curl_examples_use_the_samples() -> None:
    assert any("/report" in c for c in CURL_COMMANDS)
    for command in CURL_COMMANDS:
        for argument in shlex.split(command):
            if "=@" in argument:
                assert argument.split("=@", 1)[1].startswith("samples/"), command


@pytest.mark.parametrize("command", CURL_COMMANDS)
def test_curl_examples_work(command: str, server: str, samples_dir: Path) -> None:
    argv = [a.replace("localhost:8000", server) for a in shlex.split(command)]
    result = subprocess.run(
        [*argv, "--silent", "--show-error", "--fail-with-body"],
        cwd=samples_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if "-o" in argv:  # the report: a PDF
        written = samples_dir / argv[argv.index("-o") + 1]
        assert written.read_bytes().startswith(b"%PDF-")
    else:
        assert '"result"' in result.stdout or '"results"' in result.stdout
