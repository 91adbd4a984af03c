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


@pytest.fixture
def upload_files(tmp_path: Path) -> Path:
    """slice.png / slice.dcm / a.png / b.dcm / series.zip as the README's curl lines name them."""
    import io
    import zipfile

    from PIL import Image

    from tests.conftest import gray_to_export_window_dicom, synthetic_slice

    for index, name in enumerate(("slice.png", "a.png")):
        Image.fromarray(synthetic_slice(index % 2, index, size=224)).save(tmp_path / name)
    for name in ("slice.dcm", "b.dcm"):
        (tmp_path / name).write_bytes(gray_to_export_window_dicom(synthetic_slice(1, 5, size=224)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for z in range(4):
            data = gray_to_export_window_dicom(
                synthetic_slice(z % 2, z, size=224),
                z=float(z),
                instance=z + 1,
                series_uid="1.2.3.4",
            )
            archive.writestr(f"series/{z:03d}.dcm", data)
    (tmp_path / "series.zip").write_bytes(buffer.getvalue())
    return tmp_path


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("curl ")])
def test_curl_examples_work(command: str, server: str, upload_files: Path) -> None:
    argv = [a.replace("localhost:8000", server) for a in shlex.split(command)]
    result = subprocess.run(
        [*argv, "--silent", "--show-error", "--fail-with-body"],
        cwd=upload_files,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"result"' in result.stdout or '"results"' in result.stdout
