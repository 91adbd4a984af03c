"""The PACS path under a hostile or merely imperfect hospital (issue 27), nothing of the worker
or the API mocked: a real Orthanc, the real API (bearer tokens on) and the worker as its own
process (``python -m pacs``).

Where Orthanc cannot misbehave in the way a case needs, a small server inside the test does:
``ApiGate`` stands between the worker and the real API and can answer 503 with
``Retry-After`` or 400 instead of passing a call on; ``OddPacs`` is a DICOMweb server with a
malformed QIDO entry, a series whose instances carry two patients, and a WADO answer that
drips one byte a second.

Each case: no series lost (transient failures never final), none analysed or filed under the
wrong patient, one current SR per series, deterministic failures visible within a minute.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client import REGISTRY
from pydicom.dataset import Dataset

from pacs.clients import PacsClient, dataset_bytes
from pacs.orthanc import OrthancServer, free_port, start_orthanc
from pacs.settings import WorkerSettings
from testing.ct_series import base_slices, ct_series
from testing.dicom_writers import patch_element
from testing.pacs_stack import REPO, WorkerProcess, running_api, stop_process, wait_for
from tests.pacs.test_pacs_e2e import series_of, state_rows, uid_of, worklist_items
from tests.pacs.test_worker_parts import tiny_ct

pytestmark = pytest.mark.slow

TOKEN = "pacs-worker-test-token-27"
SLICES = 4
VISIBLE_S = 60.0  # a deterministic failure must show within this


@pytest.fixture(scope="module")
def token_api(orthanc_installed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real API with bearer tokens on (``AUTH_TOKEN_HASHES``), as the README advises."""
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    with running_api(tmp_path_factory.mktemp("api") / "api.log", AUTH_TOKEN_HASHES=digest) as url:
        yield url


@pytest.fixture
def orthanc(orthanc_installed: None, tmp_path: Path) -> Iterator[OrthancServer]:
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


def worker_env(tmp: Path, pacs_url: str, api_url: str, **more: str) -> dict[str, str]:
    """A quick worker: polls each second, two attempts before an unexpected error is final."""
    import os

    return {
        **os.environ,
        "PACS_URL": pacs_url,
        "API_URL": api_url,
        "PACS_STATE_DB": str(tmp / "state.sqlite3"),
        "PACS_POLL_SECONDS": "1",
        "PACS_STABLE_SECONDS": "1",
        "PACS_BACKOFF_SECONDS": "0.5",
        "PACS_BACKOFF_MAX_SECONDS": "1",
        "PACS_ERROR_MAX_ATTEMPTS": "2",
        "PACS_METRICS_PORT": str(free_port()),
        "PACS_LOG_LEVEL": "INFO",
        **more,
    }


def row_of(env: dict[str, str], series_uid: str) -> dict[str, Any]:
    return state_rows(Path(env["PACS_STATE_DB"])).get(series_uid, {})


def wait_row(env: dict[str, str], series_uid: str, status: str, timeout: float) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        row = row_of(env, series_uid)
        return row if row.get("status") == status else None

    found: dict[str, Any] = wait_for(f"series {series_uid} {status}", reached, timeout)
    return found


def normal_series(shared_data: Path, patient_id: str, **kwargs: Any) -> list[Dataset]:
    return ct_series(
        base_slices(shared_data, "normal", SLICES), patient_id=patient_id,
        description="CT C-spine axial", **kwargs,
    )  # fmt: skip


# ---- a gate in front of the real API -----------------------------------------------------
def reply(
    handler: BaseHTTPRequestHandler, status: int, kind: str, body: bytes,
    headers: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """One whole answer of a test server."""
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A threaded loopback server on a free port, serving in the background; and its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class ApiGate:
    """Passes ``/predict/study`` on to the real API (``mode`` "pass"), or answers for it:
    "503" (with ``Retry-After: retry_after``), "400", or "slow" (a 503 after a minute, as a
    very busy API); ``worklist_mode``, when set, is the mode of ``/worklist`` calls instead.
    Records each call's time and mode; failure reports (``/pipeline/failures``) always pass,
    unrecorded."""

    def __init__(self, api_url: str, retry_after: int = 3) -> None:
        self.api_url = api_url
        self.mode = "pass"
        self.worklist_mode: str | None = None
        self.retry_after = retry_after
        self.hits: list[tuple[float, str]] = []
        self.closing = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = gate.mode
                if gate.worklist_mode is not None and self.path.startswith("/worklist"):
                    mode = gate.worklist_mode
                if self.path.startswith("/pipeline/"):
                    mode = "pass"  # failure reports: always through, not counted as hits
                else:
                    gate.hits.append((time.monotonic(), mode))
                if mode == "pass":
                    headers = {
                        name: value for name, value in self.headers.items()
                        if name.lower() in ("content-type", "authorization")
                    }  # fmt: skip
                    answer = requests.post(
                        gate.api_url + self.path, data=body, headers=headers, timeout=300
                    )
                    status, payload = answer.status_code, answer.content
                    extra: dict[str, str] = {}
                elif mode == "slow":
                    gate.closing.wait(60)
                    status, payload, extra = 503, b'{"detail": "busy"}', {}
                elif mode == "503":
                    status, payload = 503, b'{"detail": "redeploying"}'
                    extra = {"Retry-After": str(gate.retry_after)}
                else:
                    status, payload, extra = 400, b'{"detail": "no decodable slice"}', {}
                reply(self, status, "application/json", payload, extra)

        self.server, self.url = serve(Handler)

    def times(self, mode: str) -> list[float]:
        return [when for when, seen in self.hits if seen == mode]

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate(token_api: str) -> Iterator[ApiGate]:
    found = ApiGate(token_api)
    try:
        yield found
    finally:
        found.close()


def running_worker(env: dict[str, str], tmp: Path, name: str) -> WorkerProcess:
    return WorkerProcess(env, tmp / f"{name}.log")


def gated_worker(
    orthanc: OrthancServer, gate: ApiGate, shared_data: Path, tmp_path: Path, patient_id: str
) -> tuple[DICOMwebClient, list[Dataset], dict[str, str], WorkerProcess]:
    """A client of ``orthanc``, a series of ``patient_id`` (not stored yet), and a worker with
    the token calling the API through ``gate`` (its settings and process)."""
    series = normal_series(shared_data, patient_id)
    env = worker_env(tmp_path, orthanc.url, gate.url, PACS_API_TOKEN=TOKEN)
    worker = running_worker(env, tmp_path, "worker")
    return DICOMwebClient(orthanc.dicomweb_url), series, env, worker


@contextmanager
def logged(worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """Stops ``worker`` when the block ends; prints its log's tail when the block fails."""
    try:
        yield worker
    except BaseException:
        print(worker.log()[-5000:])
        raise
    finally:
        worker.stop()


# ---- failure classes ---------------------------------------------------------------------
def test_token_refused_is_a_configuration_failure_requeued_when_the_token_is_set(
    orthanc: OrthancServer, token_api: str, shared_data: Path, tmp_path: Path
) -> None:
    """No token: the series is ``blocked`` (401, with what to set), never skipped for good;
    the worker started with PACS_API_TOKEN_FILE re-queues it at once and files its SR."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    series = normal_series(shared_data, "REL-TOKEN")
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    client.store_instances(series)
    # A long back-off: only the configuration change can bring the series back in time.
    env = worker_env(tmp_path, orthanc.url, token_api, PACS_BACKOFF_MAX_SECONDS="600")
    worker = running_worker(env, tmp_path, "no-token")
    try:
        row = wait_row(env, series_uid, "blocked", VISIBLE_S)
        assert row["failure_class"] == "config"
        assert "401" in row["reason"] and "PACS_API_TOKEN" in row["reason"]
        assert worker.metric("pacs_series_failures_total", 'failure_class="config"') >= 1
        wait_for("the status gauge", lambda: worker.metric("pacs_series", 'status="blocked"'), 10)
    finally:
        worker.stop()
    assert series_of(client, study_uid, "SR") == []
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**env, "PACS_API_TOKEN_FILE": str(token_file)}
    worker = running_worker(env, tmp_path, "token")
    try:
        row = wait_row(env, series_uid, "done", 120)
        assert "configuration changed: 1 blocked series re-queued" in worker.log()
    finally:
        worker.stop()
    srs = series_of(client, study_uid, "SR")
    assert [uid_of(item) for item in srs] == [row["sr_series_uid"]]
    sr = client.retrieve_series(study_uid, uid_of(srs[0]))[0]
    assert sr.PatientID == "REL-TOKEN"


def test_refusal_is_final_until_requeued_and_an_api_away_is_never_final(
    orthanc: OrthancServer, gate: ApiGate, shared_data: Path, tmp_path: Path
) -> None:
    """A 400 from the API: ``failed`` (permanent) with the reason, within a minute. Re-queued
    by ``python -m pacs requeue`` while the API answers 503 with Retry-After 3: retried far
    beyond PACS_ERROR_MAX_ATTEMPTS, each try at least 3 s after the last, and still ``retry``; once
    the API is back, the SR is filed."""
    gate.mode = "400"
    client, series, env, worker = gated_worker(orthanc, gate, shared_data, tmp_path, "REL-AWAY")
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    with logged(worker):
        client.store_instances(series)
        row = wait_row(env, series_uid, "failed", VISIBLE_S)
        assert row["failure_class"] == "permanent" and "(400)" in row["reason"]
        time.sleep(3)
        assert len(gate.times("400")) == 1  # final: not tried again
        listed = subprocess.run(
            [sys.executable, "-m", "pacs", "list", "--status", "failed"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert series_uid in listed.stdout and "permanent" in listed.stdout

        gate.mode = "503"
        requeued = subprocess.run(
            [sys.executable, "-m", "pacs", "requeue", "--status", "failed"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert "1 series re-queued" in requeued.stdout
        wait_for("five tries against the 503", lambda: len(gate.times("503")) >= 5, 60)
        row = row_of(env, series_uid)
        assert row["status"] in ("retry", "processing") and row["attempts"] >= 4
        assert row_of(env, series_uid)["failure_class"] in ("transient", None)
        tries = gate.times("503")
        gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
        assert min(gaps) >= 2.9, gaps  # Retry-After honoured over the 0.5-1 s back-off
        assert worker.metric("pacs_series_failures_total", 'failure_class="transient"') >= 4

        gate.mode = "pass"
        row = wait_row(env, series_uid, "done", 120)
    assert [uid_of(item) for item in series_of(client, study_uid, "SR")] == [row["sr_series_uid"]]


def test_worklist_away_is_retried_before_any_sr_and_lists_the_series_once(
    orthanc: OrthancServer, gate: ApiGate, shared_data: Path, tmp_path: Path
) -> None:
    """``POST /worklist`` answering 503 while ``/predict/study`` answers: a transient failure,
    retried (never final), and no SR in the PACS meanwhile (the worklist comes before the
    STOW); once the worklist answers, one SR is filed and the worklist lists the series once."""
    gate.worklist_mode = "503"
    client, series, env, worker = gated_worker(orthanc, gate, shared_data, tmp_path, "REL-LIST")
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    with logged(worker):
        client.store_instances(series)
        wait_for("two tries against the worklist's 503", lambda: len(gate.times("503")) >= 2,
                 VISIBLE_S)  # fmt: skip
        assert row_of(env, series_uid)["status"] in ("retry", "processing")
        assert "(transient, TransientError: API answered 503" in worker.log()
        assert series_of(client, study_uid, "SR") == []
        gate.worklist_mode = None
        row = wait_row(env, series_uid, "done", 120)
    assert [uid_of(item) for item in series_of(client, study_uid, "SR")] == [row["sr_series_uid"]]
    listed = worklist_items(gate.api_url, {"Authorization": f"Bearer {TOKEN}"})
    mine = [item for item in listed if item["series_uid"] == series_uid]
    assert len(mine) == 1 and mine[0]["study_uid"] == study_uid, mine


def test_sigterm_during_a_long_api_call_stops_the_worker_and_loses_nothing(
    orthanc: OrthancServer, gate: ApiGate, shared_data: Path, tmp_path: Path
) -> None:
    """SIGTERM while an API call hangs: the worker exits within PACS_STOP_GRACE_SECONDS (plus
    a little), the series left ``processing``; the next start retries it and files its SR."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    series = normal_series(shared_data, "REL-STOP")
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    gate.mode = "slow"
    env = worker_env(
        tmp_path, orthanc.url, gate.url, PACS_API_TOKEN=TOKEN, PACS_STOP_GRACE_SECONDS="2"
    )
    worker = running_worker(env, tmp_path, "first")
    try:
        client.store_instances(series)
        wait_for("a call to the API", lambda: gate.times("slow"), VISIBLE_S)
        started = time.monotonic()
        worker.process.terminate()
        assert worker.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 12
        assert row_of(env, series_uid)["status"] == "processing"
        assert "left to the next start" in worker.log()
    finally:
        worker.stop()
    gate.mode = "pass"
    worker = running_worker(env, tmp_path, "second")
    try:
        row = wait_row(env, series_uid, "done", 120)
    finally:
        worker.stop()
    assert [uid_of(item) for item in series_of(client, study_uid, "SR")] == [row["sr_series_uid"]]


def test_an_unexpected_error_is_failed_with_its_reason_within_a_minute(
    orthanc: OrthancServer, token_api: str, shared_data: Path, tmp_path: Path
) -> None:
    """A deterministic bug: one slice of a series carries an FD element (Single Collimation
    Width) 6 bytes long, as a careless writer might; Orthanc stores and serves it, the API
    answers for the series, and the worker's SR writer meets an exception nobody planned for
    (pydicom's BytesLengthException). With the default back-off (2 s, doubling) and the
    default PACS_ERROR_MAX_ATTEMPTS (3), the series is ``failed``, class ``error``, with the
    reason, well within a minute of its arrival; while it is retried its row says why and
    how many attempts were made."""
    series = normal_series(shared_data, "REL-ERROR")
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    series[0].SingleCollimationWidth = 0.625
    files = [dataset_bytes(ds) for ds in series]
    files[0] = patch_element(files[0], "SingleCollimationWidth", bytes(6))  # 6: not 8 per FD
    env = worker_env(
        tmp_path, orthanc.url, token_api, PACS_API_TOKEN=TOKEN,
        PACS_BACKOFF_SECONDS="2", PACS_BACKOFF_MAX_SECONDS="300",
    )  # fmt: skip
    del env["PACS_ERROR_MAX_ATTEMPTS"]  # the default
    worker = running_worker(env, tmp_path, "worker")
    with logged(worker):
        for data in files:  # Orthanc's REST upload: a file exactly as written, no re-encoding
            requests.post(f"{orthanc.url}/instances", data=data, timeout=30).raise_for_status()
        arrived = time.monotonic()
        retrying = wait_row(env, series_uid, "retry", VISIBLE_S)
        assert retrying["failure_class"] == "error", retrying
        assert "BytesLengthException" in retrying["reason"] and retrying["attempts"] == 1
        row = wait_row(env, series_uid, "failed", VISIBLE_S)
        took = time.monotonic() - arrived
        print(f"time to failed (error, 3 attempts, default back-off): {took:.1f}s")
        assert took < VISIBLE_S
        assert row["failure_class"] == "error" and row["attempts"] == 3, row
        assert "BytesLengthException" in row["reason"] and row["errors"] == 3
        assert "(after 3 attempts, 3 errors)" in row["reason"]
        listed = subprocess.run(
            [sys.executable, "-m", "pacs", "list", "--status", "failed"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        line = next(line for line in listed.stdout.splitlines() if series_uid in line)
        assert "\terror\tattempts 3, errors 3\t" in line and "BytesLengthException" in line, line
        assert worker.metric("pacs_series_failures_total", 'failure_class="error"') == 3
        time.sleep(3)
        assert row_of(env, series_uid)["status"] == "failed"  # final: not tried again
        assert "Traceback" in worker.log()  # a bug: its traceback is logged once, at the end
    client = DICOMwebClient(orthanc.dicomweb_url)
    assert series_of(client, study_uid, "SR") == []


# ---- identity ----------------------------------------------------------------------------
def test_series_with_two_patients_or_two_studies_is_refused_never_analysed(
    orthanc: OrthancServer, gate: ApiGate, shared_data: Path, tmp_path: Path
) -> None:
    """A series whose slices carry two PatientIDs, and a series UID used in two studies:
    each refused (``failed``, class identity, the reason saying so), the API never asked,
    nothing written into either study."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    mixed = normal_series(shared_data, "REL-PATIENT-A")
    for ds in mixed[SLICES // 2 :]:
        ds.PatientID, ds.PatientName = "REL-PATIENT-B", "Other^B"
    first = normal_series(shared_data, "REL-SHARED")
    second = normal_series(shared_data, "REL-SHARED")
    for ds in second:
        ds.SeriesInstanceUID = first[0].SeriesInstanceUID
    env = worker_env(tmp_path, orthanc.url, gate.url, PACS_API_TOKEN=TOKEN)
    worker = running_worker(env, tmp_path, "worker")
    try:
        client.store_instances(mixed + first + second)
        for series in (mixed, first):
            row = wait_row(env, str(series[0].SeriesInstanceUID), "failed", VISIBLE_S)
            assert row["failure_class"] == "identity", row
            assert "identity" in row["reason"]
        time.sleep(3)
        assert worker.metric("pacs_series_failures_total", 'failure_class="identity"') >= 2
        assert worker.metric("pacs_failure_reports_total", 'outcome="sent"') >= 2
    finally:
        worker.stop()
    assert gate.hits == []
    # Shown beside the worklist (issue 30): the API lists both, class identity.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = requests.get(f"{gate.api_url}/pipeline/failures", headers=auth, timeout=10).json()
    shown = {f["series_uid"]: f["failure_class"] for f in listed}
    for series in (mixed, first):
        assert shown.get(str(series[0].SeriesInstanceUID)) == "identity", listed
    for series in (mixed, first, second):
        assert series_of(client, str(series[0].StudyInstanceUID), "SR") == []


# ---- paging ------------------------------------------------------------------------------
def test_qido_paging_against_orthanc_reads_every_page(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Pages of 2 from a real Orthanc holding 5 series: offset paging until the empty page
    sees all 5 (a PACS that caps each answer but honours offset: ``OddPacs`` below)."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    expected = set()
    for number in range(5):
        ds = tiny_ct(f"1.2.826.0.1.27.{number}", f"1.2.826.0.1.27.{number}.1", 1)
        ds.Modality = "MR"
        client.store_instances([ds])
        expected.add(str(ds.SeriesInstanceUID))
    settings = WorkerSettings(url=orthanc.url, page_size=2)
    assert {ref.series_uid for ref in PacsClient(settings).list_series()} == expected


def _capped_value(outcome: str) -> float:
    return REGISTRY.get_sample_value("pacs_qido_capped_total", {"outcome": outcome}) or 0.0


@pytest.mark.parametrize(
    ("studies", "found", "outcome"),
    [
        # (StudyDate, StudyTime) of each series; how many list_series sees; the count raised
        pytest.param(
            [
                ("20240105", "090000"),
                ("20240105", "170000"),
                ("20250310", "120000"),
                ("20250311", "120000"),
                ("20251201", "080000"),
                ("20260101", "235959"),
                ("19991231", "000001"),
            ],
            7,
            "read_by_range",
            id="dates-and-times-apart",
        ),
        pytest.param(
            [("20250310", "120000")] * 4 + [("20250101", "120000"), ("20251111", "")],
            5,
            "unsplittable",
            id="four-in-one-second",
        ),
    ],
)
def test_a_pacs_capping_answers_whatever_the_offset_is_read_range_by_range(
    orthanc_installed: None,
    tmp_path: Path,
    studies: list[tuple[str, str]],
    found: int,
    outcome: str,
) -> None:
    """A real Orthanc 1.10 with ``LimitFindResults`` 2 answers every series search with 3
    entries whatever the offset (the cap applies before it): paging alone sees 3 series and
    nothing says so. The worker's listing finds the cap by asking the StudyDate halves and
    reads it range by range (down to StudyTime within a day): all the series, counted
    ``read_by_range``. Four series of one study second cannot be split: the other two series
    found, 3 of those 4, and ``unsplittable`` counted (an error logged), so the loss shows."""
    server = start_orthanc(tmp_path / "orthanc", extra_config={"LimitFindResults": 2})
    try:
        client = DICOMwebClient(server.dicomweb_url)
        stored = set()
        for number, (study_date, study_time) in enumerate(studies):
            ds = tiny_ct(f"1.2.826.0.1.2727.{number}", f"1.2.826.0.1.2727.{number}.1", 1)
            ds.StudyDate, ds.StudyTime = study_date, study_time
            client.store_instances([ds])
            stored.add(str(ds.SeriesInstanceUID))
        plain = PacsClient(WorkerSettings(url=server.url, page_size=2, cap_check=False))
        assert len(plain.list_series()) == 3  # what paging alone sees: the cap
        before = _capped_value(outcome)
        listed = PacsClient(WorkerSettings(url=server.url, page_size=2)).list_series()
        uids = [ref.series_uid for ref in listed]
        assert len(uids) == len(set(uids)) == found and set(uids) <= stored
        assert _capped_value(outcome) == before + 1
    finally:
        server.stop()


def test_cap_check_asks_no_more_than_the_halves_of_an_uncapped_pacs(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Without a cap the check costs two searches (cut between the dates seen) and changes
    nothing."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    for number in range(3):
        ds = tiny_ct(f"1.2.826.0.1.2728.{number}", f"1.2.826.0.1.2728.{number}.1", 1)
        ds.StudyDate = f"2025010{number + 1}"
        client.store_instances([ds])
    searches: list[dict[str, Any]] = []

    class Counted(PacsClient):
        def _search(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            searches.append(params)
            return super()._search(path, params)

    before = _capped_value("read_by_range")
    assert len(Counted(WorkerSettings(url=orthanc.url, page_size=2)).list_series()) == 3
    assert _capped_value("read_by_range") == before
    dated = [params["StudyDate"] for params in searches if "StudyDate" in params]
    assert sorted(set(dated)) == ["19000101-20250102", "20250103-99981231"]


# ---- a misbehaving PACS ------------------------------------------------------------------
class OddPacs:
    """A DICOMweb server: QIDO answers at most ``CAP`` entries whatever the limit asked (and
    honours offset), and lists a malformed entry, a series whose instances carry two patients
    (as a PACS that groups by series UID alone serves it), a series whose WADO answer drips
    one byte a second, an MR series (on the second page), and two series whose WADO answers 404:
    one whose instances QIDO finds under two patients, one QIDO no longer finds."""

    CAP = 2
    STUDY = "1.2.826.0.1.27.100"
    MIXED = "1.2.826.0.1.27.100.1"
    DRIP = "1.2.826.0.1.27.100.2"
    MR = "1.2.826.0.1.27.100.3"
    SPLIT = "1.2.826.0.1.27.100.4"  # 404; its instances under two patients
    GONE = "1.2.826.0.1.27.100.5"  # 404; no instances any more

    def __init__(self) -> None:
        self.closing = threading.Event()
        mixed = [tiny_ct(self.STUDY, self.MIXED, number) for number in (1, 2)]
        mixed[1].PatientID = "SOMEONE-ELSE"
        boundary = "oddpacs"
        self.mixed_body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + dataset_bytes(ds) + b"\r\n"
            for ds in mixed
        ) + f"--{boundary}--\r\n".encode()  # fmt: skip
        self.content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'

        def entry(series_uid: str, count: object, modality: str = "CT") -> dict[str, Any]:
            return {
                "0020000D": {"vr": "UI", "Value": [self.STUDY]},
                "0020000E": {"vr": "UI", "Value": [series_uid]},
                "00080060": {"vr": "CS", "Value": [modality]},
                "00201209": {"vr": "IS", "Value": [count]},
            }

        listing = [entry("1.2.826.0.1.27.100.9", "many"), entry(self.MIXED, 2),
                   entry(self.DRIP, 3), entry(self.MR, 1, "MR"), entry(self.SPLIT, 2),
                   entry(self.GONE, 2)]  # fmt: skip

        def instance(patient_id: str) -> dict[str, Any]:
            return {"00100020": {"vr": "LO", "Value": [patient_id]},
                    "0020000D": {"vr": "UI", "Value": [self.STUDY]}}  # fmt: skip

        split_instances = [instance("PATIENT-1"), instance("PATIENT-2")]
        odd = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/dicom-web/series":
                    query = parse_qs(urlsplit(self.path).query)
                    offset = int(query.get("offset", ["0"])[0])
                    page = listing[offset : offset + odd.CAP]
                    self._send(200, "application/dicom+json", json.dumps(page).encode())
                elif path == "/dicom-web/instances":
                    found = split_instances if odd.SPLIT in self.path else []
                    self._send(200, "application/dicom+json", json.dumps(found).encode())
                elif path.endswith((f"/series/{odd.SPLIT}", f"/series/{odd.GONE}")):
                    self._send(404, "application/json", b"{}")
                elif path.endswith(f"/series/{odd.MIXED}"):
                    self._send(200, odd.content_type, odd.mixed_body)
                elif path.endswith(f"/series/{odd.DRIP}"):
                    self.send_response(200)
                    self.send_header("Content-Type", odd.content_type)
                    self.send_header("Content-Length", str(len(odd.mixed_body)))
                    self.end_headers()
                    for byte in odd.mixed_body:
                        if odd.closing.wait(1.0):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                else:
                    self._send(200, "application/dicom+json", b"[]")

            def _send(self, status: int, kind: str, body: bytes) -> None:
                reply(self, status, kind, body)

        self.server, self.url = serve(Handler)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def test_misbehaving_pacs_bad_entry_mixed_patients_and_a_dripping_download(
    tmp_path: Path,
) -> None:
    """Every page is read although each is shorter than asked (the series on later pages are
    seen); a WADO 404 is a clear state (identity when QIDO finds the series under two patients,
    skipped when gone), not a generic retry; one malformed QIDO entry is skipped and counted
    (polls go on); a series with two PatientIDs is refused after download, never sent to the
    API; a download that drips is cut at PACS_DOWNLOAD_DEADLINE_SECONDS and retried (not
    final); SIGTERM stops the worker in seconds although a drip is under way."""
    pacs = OddPacs()
    # The API: nothing listens there; the worker must never get as far as calling it.
    env = worker_env(
        tmp_path, pacs.url, f"http://127.0.0.1:{free_port()}", PACS_API_TOKEN=TOKEN,
        PACS_DOWNLOAD_DEADLINE_SECONDS="3", PACS_HTTP_TIMEOUT_SECONDS="30",
    )  # fmt: skip
    worker = running_worker(env, tmp_path, "worker")
    try:
        row = wait_row(env, OddPacs.MIXED, "failed", VISIBLE_S)
        assert row["failure_class"] == "identity" and "2 PatientID values" in row["reason"]
        row = wait_for(
            "the drip cut off by the deadline",
            lambda: "not finished within 3s" in (row_of(env, OddPacs.DRIP).get("reason") or ""),
            VISIBLE_S,
        )
        assert row_of(env, OddPacs.DRIP)["status"] in ("retry", "processing")
        assert "not CT" in wait_row(env, OddPacs.MR, "skipped", VISIBLE_S)["reason"]
        row = wait_row(env, OddPacs.SPLIT, "failed", VISIBLE_S)
        assert row["failure_class"] == "identity" and "WADO-RS 404" in row["reason"]
        assert "no longer" in wait_row(env, OddPacs.GONE, "skipped", VISIBLE_S)["reason"]
        assert worker.metric("pacs_qido_entries_malformed_total") >= 1
        assert worker.metric("pacs_polls_total", 'outcome="error"') == 0
        assert worker.metric("pacs_polls_total", 'outcome="ok"') >= 2
        wait_for("a drip under way", lambda: row_of(env, OddPacs.DRIP)["status"] == "processing",
                 30, every=0.2)  # fmt: skip
        started = time.monotonic()
        worker.process.terminate()
        assert worker.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
    except BaseException:
        print(worker.log()[-5000:])
        raise
    finally:
        stop_process(worker.process)
        pacs.close()


# ---- superseding, own output -------------------------------------------------------------
def test_grown_series_gets_one_current_sr_and_labels_do_not_make_an_output(
    orthanc: OrthancServer, token_api: str, shared_data: Path, tmp_path: Path
) -> None:
    """A CT series labelled like the worker's own output (SeriesDescription, Manufacturer) is
    still analysed. Analysed while still arriving, then grown: the new SR names the earlier
    one in its Predecessor Documents Sequence; the state keeps the new one as current and the
    earlier one as superseded."""
    client = DICOMwebClient(orthanc.dicomweb_url)
    series = ct_series(
        base_slices(shared_data, "normal", 2 * SLICES), patient_id="REL-GROWN",
        description="CSPINE-TRIAGE triage report (decision support)",
    )  # fmt: skip
    for ds in series:
        ds.Manufacturer = "cspine-triage"
    study_uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
    env = worker_env(tmp_path, orthanc.url, token_api, PACS_API_TOKEN=TOKEN)
    worker = running_worker(env, tmp_path, "worker")
    try:
        client.store_instances(series[:SLICES])
        first = wait_row(env, series_uid, "done", 120)
        client.store_instances(series[SLICES:])
        wait_for("a second SR", lambda: len(series_of(client, study_uid, "SR")) == 2, 120)
        current = wait_row(env, series_uid, "done", 30)
        assert current["instance_count"] == 2 * SLICES
        assert current["superseded"] == first["sr_uid"]
        assert worker.metric("pacs_series_superseded_total") == 1
    except BaseException:
        print(worker.log()[-5000:])
        raise
    finally:
        worker.stop()
    sr = client.retrieve_series(study_uid, current["sr_series_uid"])[0]
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.SeriesInstanceUID == first["sr_series_uid"]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first["sr_uid"]
    assert sr.PatientID == "REL-GROWN"
