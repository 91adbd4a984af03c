"""The worklist end to end in a browser, nothing mocked (issue 29's first acceptance item):
a real Orthanc receives two CT series (real neck slices: a fracture series and a normal one)
-> the PACS worker -> both in the API's worklist -> headless Chromium (Debian's) on the web
app the API serves: the flagged study first, opened, its top slice and heatmap shown from the
PACS (``GET /worklist/{id}/top-slices/...``, DICOMweb), Disagree (key D) -> Monitoring counts
it; the API restarted on the same database -> the entry and its read are still there. Run once
on a SQLite file and once on a real PostgreSQL server.

The browser's part is ``frontend/e2e/worklist-pacs.mjs`` (playwright-core); this module starts
the servers (the helpers of ``test_pacs_e2e.py``, ``testing/postgres.py``) and checks the
API's side. Skipped, saying why, where the shared data, Orthanc, PostgreSQL, Chromium, Node or
the built web app (``make frontend-build``) is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pacs.orthanc import free_port, start_orthanc
from testing.ct_series import base_slices, ct_series
from testing.pacs_stack import WorkerProcess, running_api, wait_for
from testing.postgres import PostgresServer
from tests.pacs.test_pacs_e2e import STABLE_S, series_of, state_rows, worklist_items

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
SCRIPT = FRONTEND / "e2e" / "worklist-pacs.mjs"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SLICES_PER_SERIES = 8
BROWSER_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def browser_ready() -> Path:
    """The built web app, Node with playwright-core and Debian's Chromium, else a skip."""
    dist = FRONTEND / "dist"
    if not (dist / "index.html").is_file():
        pytest.skip(f"the web app is not built ({dist}; make frontend-build)")
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    if not (FRONTEND / "node_modules" / "playwright-core").is_dir():
        pytest.skip("frontend/node_modules lacks playwright-core (cd frontend && npm ci)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return dist


@pytest.fixture(scope="module")
def two_series(shared_data: Path) -> dict[str, list[Dataset]]:
    """A fracture series and a normal series of real neck CT slices (the default model flags
    the first and calls the second normal: checked below, not assumed)."""
    return {
        label: ct_series(
            base_slices(shared_data, label, SLICES_PER_SERIES),
            patient_id=f"BROWSER-{label.upper()}",
            description=f"CT C-spine axial ({label} slices)",
        )
        for label in ("fracture", "normal")
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The API's worklist database: its SQLite file (running_api's default), or a fresh
    database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return {}
    server: PostgresServer = request.getfixturevalue("postgres")
    return {"DATABASE_URL": server.new_database()}


def browse(phase: str, base: str, ids: dict[str, int], out: Path, label: str) -> str:
    """One phase of the browser script; its output (a failure fails the test with it)."""
    arguments = {"base": base, "phase": phase, "out": str(out), "label": label, **ids}
    done = subprocess.run(
        ["node", str(SCRIPT), json.dumps(arguments)],
        cwd=FRONTEND, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
    )  # fmt: skip
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, f"the browser's {phase} phase failed:\n{output[-4000:]}"
    return output


def entry(api_url: str, study_id: int) -> dict[str, Any]:
    response = requests.get(f"{api_url}/worklist/{study_id}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def analysed_whole(state_db: Path, series: dict[str, list[Dataset]]) -> bool:
    """Whether the worker's state holds every series done with all its instances."""
    if not state_db.is_file():
        return False
    rows = state_rows(state_db)
    return all(
        (row := rows.get(str(datasets[0].SeriesInstanceUID))) is not None
        and row["status"] == "done"
        and row["instance_count"] == len(datasets)
        for datasets in series.values()
    )


def reviewed_count(api_url: str) -> int:
    response = requests.get(f"{api_url}/monitoring", timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["overall"]["reviewed"])


def test_pacs_studies_read_in_the_browser_survive_a_restart(
    orthanc_installed: None,
    browser_ready: Path,
    two_series: dict[str, list[Dataset]],
    database_env: dict[str, str],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    label = "postgresql" if database_env else "sqlite"
    out = REPO / "test-output" / "worklist-pacs"
    out.mkdir(parents=True, exist_ok=True)
    pacs = start_orthanc(tmp_path / "orthanc")
    api_env = {
        **database_env,
        "FRONTEND_DIST": str(browser_ready),
        "WORKLIST_PACS_URL": pacs.dicomweb_url,
    }
    api_log = tmp_path / "api" / "api.log"
    api_log.parent.mkdir()
    worker: WorkerProcess | None = None
    state_db = tmp_path / "state.sqlite3"
    try:
        with running_api(api_log, **api_env) as api_url:
            worker = WorkerProcess(
                {
                    **os.environ,
                    "PACS_URL": pacs.url,
                    "API_URL": api_url,
                    "PACS_STATE_DB": str(state_db),
                    "PACS_POLL_SECONDS": "1",
                    "PACS_STABLE_SECONDS": str(STABLE_S),
                    "PACS_METRICS_PORT": str(free_port()),
                },
                tmp_path / "worker.log",
            )
            client = DICOMwebClient(pacs.dicomweb_url)
            client.store_instances(two_series["normal"])  # the normal one arrives first
            client.store_instances(two_series["fracture"])
            studies = {key: str(series[0].StudyInstanceUID) for key, series in two_series.items()}
            # Done with every instance: a series analysed while still arriving is analysed
            # again when it grows, and its first SR would end the wait before the second.
            wait_for(
                "both series analysed whole and their results stored in the PACS",
                lambda: (
                    len(worklist_items(api_url)) == 2
                    and all(series_of(client, uid, "SR") for uid in studies.values())
                    and analysed_whole(state_db, two_series)
                ),
                timeout=120,
            )
            worker.stop()
            by_series = {item["series_uid"]: item for item in worklist_items(api_url)}
            ids = {}
            for key, series in two_series.items():
                item = by_series[str(series[0].SeriesInstanceUID)]
                assert item["source"] == "pacs" and item["study_uid"] == studies[key], item
                ids[key] = item["id"]
            verdicts = {key: by_series[str(s[0].SeriesInstanceUID)]["verdict"]
                        for key, s in two_series.items()}  # fmt: skip
            assert verdicts == {"fracture": "Potentially Fracture", "normal": "Normal"}, verdicts
            ids = {"flagged": ids["fracture"], "normal": ids["normal"]}
            print(f"{label}: worklist filled {time.monotonic() - started:.0f}s after the start")

            browse("read", api_url, ids, out, label)
            stored = entry(api_url, ids["flagged"])
            assert stored["status"] == "reviewed" and len(stored["reviews"]) == 1, stored
            assert stored["reviews"][0]["fracture"] is False  # disagrees with the flag
            assert reviewed_count(api_url) == 1
            before = worklist_items(api_url)

        # The API restarted on the same database: nothing lost, the browser sees it all again.
        with running_api(api_log.with_name("api-restarted.log"), **api_env) as api_url:
            after = worklist_items(api_url)
            assert after == before
            again = entry(api_url, ids["flagged"])
            assert again["reviews"] == stored["reviews"] and again["status"] == "reviewed"
            browse("restarted", api_url, ids, out, label)
            assert reviewed_count(api_url) == 1
        print(f"{label}: {time.monotonic() - started:.0f}s in all")
    except BaseException:
        if worker is not None:
            print("---- worker log ----\n" + worker.log()[-4000:])
        print("---- API log ----\n" + api_log.read_text(errors="replace")[-4000:])
        raise
    finally:
        if worker is not None:
            worker.stop()
        pacs.stop()
