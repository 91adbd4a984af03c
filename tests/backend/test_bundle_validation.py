"""A bundle that cannot serve is refused at start-up, naming the file and the field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ml_model.bundle import CARD_FILE, GATE_FILE
from ml_model.card import CardError, load_card
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.inference.core import InferenceCore
from ml_model.inference.gate import GateFileError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _edit_card(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        card = json.loads((bundle / CARD_FILE).read_text())
        change(card)
        (bundle / CARD_FILE).write_text(json.dumps(card))

    return apply


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(card: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = card
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()

# (case, how the bundle is broken, the error, what the message must name)
BROKEN = [
    ("non-numeric threshold", _edit_card(_set("operating_points.sensitive.threshold", "high")),
     CardError, "operating_points.sensitive.threshold"),
    ("threshold out of range", _edit_card(_set("operating_points.specific.threshold", 1.5)),
     CardError, "operating_points.specific.threshold"),
    ("no temperature", _edit_card(_set("temperature", _DELETE)), CardError, "temperature"),
    ("zero window width", _edit_card(_set("input.window.width", 0)), CardError,
     "input.window.width"),
    ("no study top_k", _edit_card(_set("study.top_k", _DELETE)), CardError, "study.top_k"),
    ("gate threshold not a number", _edit_card(_set("gate.threshold", float("nan"))),
     CardError, "gate.threshold"),
    ("card not JSON", lambda b: (b / CARD_FILE).write_text("{not json"), CardError, CARD_FILE),
    ("no card", lambda b: (b / CARD_FILE).unlink(), CardError, CARD_FILE),
    ("no gate file", lambda b: (b / GATE_FILE).unlink(), GateFileError, GATE_FILE),
    ("gate file damaged", lambda b: (b / GATE_FILE).write_bytes(b"PK\x03\x04 broken"),
     GateFileError, GATE_FILE),
]  # fmt: skip


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    """The default bundle's card and gate, with links to its (large, unchanged) model files."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in DEFAULT_MODEL_DIR.iterdir():
        if item.name in (CARD_FILE, GATE_FILE):
            shutil.copy(item, bundle / item.name)
        else:
            (bundle / item.name).symlink_to(item)
    return bundle


def test_the_committed_bundles_are_valid() -> None:
    for bundle in (DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR.parent / "custom"):
        card = load_card(bundle)
        assert card.threshold("sensitive") < card.threshold("specific")


@pytest.mark.parametrize(("case", "breaks", "error", "named"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_bundle_is_refused_naming_what(
    bundle_copy: Path, case: str, breaks: Callable[[Path], None], error: type, named: str
) -> None:
    breaks(bundle_copy)
    with pytest.raises(error) as raised:
        InferenceCore(bundle_copy, forward=object())  # type: ignore[arg-type]
    assert str(bundle_copy) in str(raised.value) and named in str(raised.value), raised.value


@pytest.mark.parametrize(("case", "breaks", "named"), [
    ("non-numeric threshold", BROKEN[0][1], "operating_points.sensitive.threshold"),
    ("no gate file", BROKEN[8][1], GATE_FILE),
])  # fmt: skip
def test_make_serve_stops_at_start_up(
    bundle_copy: Path, case: str, breaks: Callable[[Path], None], named: str
) -> None:
    """What `make serve` runs (uvicorn on the app) exits non-zero and says what is wrong,
    instead of answering /ready and failing every request."""
    breaks(bundle_copy)
    env = os.environ | {"MODEL_DIR": str(bundle_copy), "FRONTEND_DIST": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "backend.app.main:app", "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert named in done.stderr and str(bundle_copy) in done.stderr, done.stderr[-2000:]
