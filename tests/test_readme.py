"""The README is the front door: its commands must exist, the cheap ones must run, its example
answers are what the product returns, and its headline figures are the model card's.

The pages the README's operations text moved to (docs/) are held to the same checks.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.common import api_server_command, free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
# The README's operations, Docker, scaling, PACS and benchmark text lives in these pages.
MOVED_PAGES = ("operations", "docker", "scaling", "pacs", "benchmarks")
DOCS = README + "".join((REPO_ROOT / "docs" / f"{name}.md").read_text() for name in MOVED_PAGES)
CARD = json.loads((REPO_ROOT / "ml_model" / "models" / "default" / "model_card.json").read_text())


def test_the_readme_links_the_moved_pages() -> None:
    for name in MOVED_PAGES:
        assert f"(docs/{name}.md)" in README, name


def shell_lines(text: str = README) -> list[str]:
    """Every command in the text's bash blocks, continuation lines joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


COMMANDS = shell_lines()
PYTHON_COMMANDS = [c for c in shell_lines(DOCS) if " -m ml_model." in c]


def test_the_two_commands_are_there() -> None:
    assert "make run" in COMMANDS[0] and "make test" in COMMANDS[1]
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("target", sorted(set(re.findall(r"`make ([a-z-]+)", DOCS))))
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
        assert f"`{name.upper()}`" in DOCS, f"setting {name.upper()} missing from README/docs"


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


def test_make_samples_copies_one_original_slice_per_class(tmp_path: Path) -> None:
    """With the shared data present: one un-augmented val slice per class, into local/."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from make_samples import copy_local_slices

    for name in ("B1 (2).png", "B1 (1)-rotated1.png", "B1 (3)-sharpened.png"):
        (tmp_path / "data" / "val" / "fracture").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "val" / "fracture" / name).write_bytes(name.encode())
    written = copy_local_slices(tmp_path / "out", tmp_path / "data")
    assert written == [tmp_path / "out" / "local" / "fracture" / "B1 (2).png"]
    assert copy_local_slices(tmp_path / "out", tmp_path / "absent") == []
    assert "/samples/local/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_samples_are_committed_as_make_samples_writes_them(samples_dir: Path) -> None:
    for name in ("CT_small.dcm", "CT_small.png", "series.zip"):
        committed = REPO_ROOT / "samples" / name
        assert committed.is_file(), f"{committed}: run `make samples` and commit it"
        assert committed.read_bytes() == (samples_dir / "samples" / name).read_bytes(), name


CURL_COMMANDS = [c for c in shell_lines(DOCS) if c.startswith("curl ")]


def run_curl(command: str, server: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A README curl line against the test server, from the folder that holds samples/."""
    argv = [a.replace("localhost:8000", server) for a in shlex.split(command)]
    return subprocess.run(
        [*argv, "--silent", "--show-error", "--fail-with-body"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_curl_examples_use_the_samples() -> None:
    assert any("/report" in c for c in CURL_COMMANDS)
    for command in CURL_COMMANDS:
        for argument in shlex.split(command):
            if "=@" in argument:
                assert argument.split("=@", 1)[1].startswith("samples/"), command


@pytest.mark.parametrize("command", CURL_COMMANDS)
def test_curl_examples_work(command: str, server: str, samples_dir: Path) -> None:
    result = run_curl(command, server, samples_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    argv = shlex.split(command)
    if "-o" in argv:  # the report: a PDF
        written = samples_dir / argv[argv.index("-o") + 1]
        assert written.read_bytes().startswith(b"%PDF-")
    else:
        assert '"result"' in result.stdout or '"results"' in result.stdout


# ---- example answers: each ```json block right after a ```bash block of one curl line is
# that call's answer, as the running product gives it.
EXAMPLE_ANSWERS = re.findall(r"```bash\n(curl [^\n]*)\n```\n+```json\n(.*?)```", README, re.S)
# Differs on every call: only its presence and type are checked.
VOLATILE = {"latency_ms"}


def same_answer(documented: Any, returned: Any, where: str = "") -> list[str]:
    """Where the documented answer differs from the returned one (floats to 1e-6 relative)."""
    if isinstance(documented, dict) and isinstance(returned, dict):
        if documented.keys() != returned.keys():
            return [f"{where or '.'}: keys {sorted(documented)} vs {sorted(returned)}"]
        return [
            difference
            for key in documented
            if key not in VOLATILE
            for difference in same_answer(documented[key], returned[key], f"{where}.{key}")
        ]
    if isinstance(documented, list) and isinstance(returned, list):
        if len(documented) != len(returned):
            return [f"{where}: {len(documented)} items vs {len(returned)}"]
        return [
            d
            for i, pair in enumerate(zip(documented, returned, strict=True))
            for d in same_answer(*pair, f"{where}[{i}]")
        ]
    if isinstance(documented, float) and isinstance(returned, float):
        return (
            []
            if math.isclose(documented, returned, rel_tol=1e-6)
            else [f"{where}: {documented} vs {returned}"]
        )
    return [] if documented == returned else [f"{where}: {documented!r} vs {returned!r}"]


def test_the_readme_shows_example_answers() -> None:
    assert len(EXAMPLE_ANSWERS) >= 2
    assert all("localhost:8000/" in command for command, _ in EXAMPLE_ANSWERS)


@pytest.mark.parametrize(
    ("command", "documented"), EXAMPLE_ANSWERS, ids=[c for c, _ in EXAMPLE_ANSWERS]
)
def test_example_answers_are_what_the_product_returns(
    command: str, documented: str, server: str, samples_dir: Path
) -> None:
    result = run_curl(command, server, samples_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    returned = json.loads(result.stdout)
    differences = same_answer(json.loads(documented), returned)
    assert not differences, (
        f"the README's answer to `{command}` is stale: {differences}; the product returns\n"
        + json.dumps(returned, indent=1)
    )
    for key in VOLATILE & returned.keys():
        assert isinstance(returned[key], float | int)


# ---- the headline figures: the tables under "How it does on a new patient", from the card.
def _with_interval(value: float, interval: list[float]) -> str:
    low, high = interval
    return f"{value:.3f}" if low == high else f"{value:.3f} [{low:.2f}, {high:.2f}]"


def new_patient_rows(card: dict[str, Any]) -> list[str]:
    """Each held-out series as the card's `leave_one_series_out` says it."""
    rows = []
    for series, fold in card["leave_one_series_out"].items():
        model, ci, product = fold["model"], fold["intervals_95"], fold["product"]
        cells = [
            series,
            f"{fold['base_slices']['fracture']} / {fold['base_slices']['normal']}",
            _with_interval(model["auc"], ci["auc"]),
            _with_interval(model["recall"], ci["recall"]),
            _with_interval(model["specificity"], ci["specificity"]),
            f"{product['recall']:.3f} / {product['specificity']:.3f}",
            str(fold["refused"]),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def operating_point_rows(card: dict[str, Any]) -> list[str]:
    """Each shipped operating point: its slice threshold and out-of-fold figures, and the
    study's (`operating_points`, `study.operating_points`)."""
    rows = []
    for name, point in card["operating_points"].items():
        study = card["study"]["operating_points"][name]
        label = f"`{name}`" + (" (the default)" if name == card["default_operating_point"] else "")
        cells = [
            label,
            f"{point['threshold']:.3f}",
            f"{point['recall']:.3f} / {point['specificity']:.3f}",
            f"{study['threshold']:.3f}",
            f"{study['recall']:.3f} / {study['specificity']:.3f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def table_rows(header: str) -> list[str]:
    """The body rows of the README table whose header row starts with `header`."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_the_new_patient_table_is_the_cards() -> None:
    assert table_rows("| held-out series |") == new_patient_rows(CARD)


def test_the_shipped_thresholds_table_is_the_cards() -> None:
    assert table_rows("| operating point |") == operating_point_rows(CARD)
    specific = CARD["operating_points"]["specific"]["recall"]
    assert f"{100 * specific:.1f} %" in README, "the `specific` point's recall, in words"


def test_the_tables_follow_the_card() -> None:
    """A changed card figure changes the expected rows (so a stale README fails)."""
    changed = json.loads(json.dumps(CARD))
    changed["leave_one_series_out"]["CSFDV1B11"]["model"]["auc"] += 0.01
    changed["operating_points"]["sensitive"]["specificity"] += 0.01
    assert new_patient_rows(changed) != new_patient_rows(CARD)
    assert operating_point_rows(changed) != operating_point_rows(CARD)
