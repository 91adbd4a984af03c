"""End to end, nothing mocked: a real Orthanc (Debian package), the real API with the bundled
model, and the worker as its own process.

Two CT series made from the shared PNG slices (one normal, one with fractures) go into
Orthanc by STOW-RS; Orthanc is killed right after the first and started again on the same
storage. Within a bounded time each study must hold exactly one SR whose verdict is the one
``/predict/study`` gives for the same files, and a heatmap Secondary Capture series. A
restarted worker (same state file) and a worker with an empty state file (the PACS alone
says what is done) must not process anything again. A CT series the model cannot judge
(pydicom's CT_small) gets an SR saying "CT outside the model's range" with its reason.

Skipped, saying why, where the shared data or Orthanc (``apt-get install orthanc
orthanc-dicomweb``, which ``.ci/run`` does) is absent.
"""

from __future__ import annotations

import io
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pacs import REFUSALS, VERDICTS
from pacs.dicom_out import SC_SERIES_DESCRIPTION, sr_text_values
from pacs.orthanc import OrthancServer, free_port, start_orthanc
from testing.ct_series import (
    SCANNER,
    SCANNER_MODEL,
    base_slices,
    ct_series,
)
from testing.pacs_stack import WorkerProcess, running_api, wait_for

pytestmark = pytest.mark.slow

SLICES_PER_SERIES = 8
DEADLINE_S = 150.0  # for both studies' results, from the first STOW
STABLE_S = 2.0  # PACS_STABLE_SECONDS of the module's worker


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The product's API, without authentication."""
    with running_api(tmp_path_factory.mktemp("api") / "api.log") as url:
        yield url


def series_of(client: DICOMwebClient, study_uid: str, modality: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = client.search_for_series(
        study_instance_uid=study_uid, search_filters={"Modality": modality}
    )
    return result


def uid_of(item: dict[str, Any]) -> str:
    return str(item["0020000E"]["Value"][0])


def state_rows(path: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {row["series_uid"]: dict(row) for row in db.execute("SELECT * FROM series")}


def worklist_items(api_url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every entry of the API's worklist (``GET /worklist``), in the server's order."""
    response = requests.get(f"{api_url}/worklist", params={"limit": 200}, headers=headers,
                            timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert page["total"] == len(page["items"]), page["total"]  # one page holds them all
    items: list[dict[str, Any]] = page["items"]
    return items


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def assert_worklist_order(items: list[dict[str, Any]]) -> None:
    """The server's order rule: flagged (``Potentially Fracture``) first, then by arrival,
    the longest waiting first; ``flagged`` is the verdict's."""
    for item in items:
        assert item["flagged"] == (item["verdict"] == "Potentially Fracture"), item
    rule = sorted(items, key=lambda item: (not item["flagged"], when(item["arrived_at"])))
    assert [item["id"] for item in items] == [item["id"] for item in rule]


def reference_verdict(api_url: str, datasets: list[Dataset]) -> dict[str, Any]:
    """What ``/predict/study`` answers for these files, sent directly."""
    files = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        name = f"{ds.SOPInstanceUID}.dcm"
        files.append(("files", (name, buffer.getvalue(), "application/dicom")))
    response = requests.post(
        f"{api_url}/predict/study", params={"operating_point": "sensitive", "explain": "true"},
        files=files,
        timeout=300,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Scenario:
    """What the module's one run of the worker left behind, for the tests to check."""

    client: DICOMwebClient
    pacs: OrthancServer
    worker: WorkerProcess
    env: dict[str, str]
    state_db: Path
    tmp: Path
    studies: dict[str, tuple[str, str]]  # label -> (study UID, source series UID)
    expected: dict[str, dict[str, Any]]  # label -> /predict/study for the same files
    other_series: str  # a non-CT series the worker must skip
    stored_at: dict[str, float] = field(default_factory=dict)  # label -> time of its STOW

    def heatmaps_expected(self, label: str) -> int:
        tops = self.expected[label]["top_slices"]
        return sum(1 for top in tops if top.get("heatmap_png_base64"))

    def dump_logs(self) -> None:
        print("---- worker log ----\n" + self.worker.log()[-6000:])
        print("---- orthanc log ----\n" + self.pacs.log_path.read_text(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def scenario(
    orthanc_installed: None,
    shared_data: Path,
    api_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    """Orthanc + worker; the first series stored, Orthanc killed and started again on the same
    storage, the second series stored; returns once every expected result is in the PACS."""
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("pacs")
    normal = ct_series(
        base_slices(shared_data, "normal", SLICES_PER_SERIES),
        patient_id="PACS-E2E-NORMAL", description="CT C-spine axial (normal slices)",
    )  # fmt: skip
    fracture = ct_series(
        base_slices(shared_data, "fracture", SLICES_PER_SERIES),
        patient_id="PACS-E2E-FRACTURE", description="CT C-spine axial (fracture slices)",
    )  # fmt: skip
    # A non-CT series in the first study: the worker must skip it, saying why.
    other = ct_series(
        base_slices(shared_data, "normal", 1), patient_id="PACS-E2E-NORMAL",
        description="scout (not CT)", study_uid=str(normal[0].StudyInstanceUID),
    )  # fmt: skip
    other[0].Modality = "MR"
    studies = {
        "normal": (str(normal[0].StudyInstanceUID), str(normal[0].SeriesInstanceUID)),
        "fracture": (str(fracture[0].StudyInstanceUID), str(fracture[0].SeriesInstanceUID)),
    }
    expected = {"normal": reference_verdict(api_url, normal),
                "fracture": reference_verdict(api_url, fracture)}  # fmt: skip

    storage = tmp / "orthanc"
    pacs = start_orthanc(storage)
    env = {
        **os.environ,
        "PACS_URL": pacs.url,
        "API_URL": api_url,
        "PACS_STATE_DB": str(tmp / "state.sqlite3"),
        "PACS_POLL_SECONDS": "1",
        "PACS_STABLE_SECONDS": str(STABLE_S),
        "PACS_BACKOFF_SECONDS": "1",
        "PACS_BACKOFF_MAX_SECONDS": "4",
        "PACS_METRICS_PORT": str(free_port()),
        "PACS_LOG_LEVEL": "INFO",
    }
    worker = WorkerProcess(env, tmp / "worker.log")
    run = Scenario(
        client=DICOMwebClient(pacs.dicomweb_url), pacs=pacs, worker=worker, env=env,
        state_db=tmp / "state.sqlite3", tmp=tmp, studies=studies, expected=expected,
        other_series=str(other[0].SeriesInstanceUID),
    )  # fmt: skip
    try:
        # The first series, then the PACS dies at once and comes back on the same storage.
        run.stored_at["normal"] = time.time()
        run.client.store_instances(normal + other)
        pacs.stop(kill=True)
        time.sleep(3)  # the worker finds the PACS down meanwhile
        run.pacs = start_orthanc(storage, pacs.http_port, pacs.dicom_port)
        run.stored_at["fracture"] = time.time()
        run.client.store_instances(fracture)

        def results_stored() -> bool:
            for label, (study_uid, _) in studies.items():
                if not series_of(run.client, study_uid, "SR"):
                    return False
                if run.heatmaps_expected(label) and not series_of(run.client, study_uid, "OT"):
                    return False
            return True

        wait_for("an SR (and heatmap series) in both studies", results_stored,
                 timeout=DEADLINE_S - (time.monotonic() - started), every=1.0)  # fmt: skip
        print(f"PACS worker: results stored {time.monotonic() - started:.0f}s after the start")
        yield run
    except BaseException:
        run.dump_logs()
        raise
    finally:
        run.worker.stop()
        run.pacs.stop()


def test_sr_holds_the_api_verdict(scenario: Scenario) -> None:
    """One SR per study, whose content is what /predict/study says for the same files."""
    client = scenario.client
    for label, (study_uid, _) in scenario.studies.items():
        expected = scenario.expected[label]
        srs = series_of(client, study_uid, "SR")
        assert len(srs) == 1, f"{label}: {len(srs)} SR series"
        sr = client.retrieve_series(study_uid, uid_of(srs[0]))
        assert len(sr) == 1
        values = sr_text_values(sr[0])
        assert values["Finding"] == [expected["result"]], (label, values, expected["result"])
        assert values["Finding"][0] in VERDICTS
        if expected["result"] in REFUSALS:  # no call, no score (a reason if outside the range)
            assert "Study fracture score" not in values
            reason = expected.get("outside_reason")
            assert values.get("Reason outside the model's range") == ([reason] if reason else None)
        else:
            assert float(values["Study fracture score"][0]) == pytest.approx(
                expected["prediction"], abs=1e-4
            )
        assert float(values["Decision threshold"][0]) == pytest.approx(
            expected["threshold"], abs=1e-6
        )
        assert values["Operating point"] == ["sensitive"]
        assert values["Algorithm Name"] == [expected["model"]["name"]]
        assert values["Algorithm Version"] == [expected["model"]["version"]]
        assert values["Intended use"] == ["Decision support — not a diagnosis"]
        top = {str(item["name"]).removesuffix(".dcm") for item in expected["top_slices"]}
        assert set(values.get("Most suspicious slice", [])) == top
        assert str(sr[0].StudyInstanceUID) == study_uid
        assert str(sr[0].Manufacturer) == "cspine-triage"
        assert sr[0].VerificationFlag == "UNVERIFIED"


def test_heatmap_secondary_capture(scenario: Scenario) -> None:
    """A derived, not-for-diagnosis SC series with one heatmap per top slice."""
    client = scenario.client
    if not any(scenario.heatmaps_expected(label) for label in scenario.studies):
        results = [answer["result"] for answer in scenario.expected.values()]
        pytest.skip(
            f"the API returned no top slices (verdicts {results}), so there is no heatmap "
            "to write: the model's CT gate refused every slice"
        )
    for label, (study_uid, _) in scenario.studies.items():
        scs = series_of(client, study_uid, "OT")
        sr = client.retrieve_series(study_uid, uid_of(series_of(client, study_uid, "SR")[0]))
        values = sr_text_values(sr[0])
        if not scenario.heatmaps_expected(label):  # "Not a CT slice": nothing to show
            assert scs == [] and "Heatmap series" not in values
            continue
        assert len(scs) == 1, f"{label}: {len(scs)} heatmap series"
        assert values["Heatmap series"] == [uid_of(scs[0])]
        heatmaps = client.retrieve_series(study_uid, uid_of(scs[0]))
        assert len(heatmaps) == scenario.heatmaps_expected(label)
        top = set(values["Most suspicious slice"])
        for image in heatmaps:
            assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert image.SeriesDescription == SC_SERIES_DESCRIPTION
            assert "NOT FOR DIAGNOSIS" in image.ImageComments
            assert str(image.SourceImageSequence[0].ReferencedSOPInstanceUID) in top
            assert image.PhotometricInterpretation == "RGB"


def test_pacs_outage_loses_nothing_and_skips_non_ct(scenario: Scenario) -> None:
    """Orthanc was killed mid-way: both series done once, sources untouched, non-CT skipped."""
    assert "PACS not reachable" in scenario.worker.log()
    rows = state_rows(scenario.state_db)
    for label, (study_uid, series_uid) in scenario.studies.items():
        assert len(scenario.client.search_for_instances(study_uid, series_uid)) == (
            SLICES_PER_SERIES
        )
        srs = series_of(scenario.client, study_uid, "SR")
        assert len(srs) == 1
        row = rows[series_uid]
        assert row["status"] == "done", row
        assert row["result"] == scenario.expected[label]["result"]
        assert row["sr_series_uid"] == uid_of(srs[0])
    skipped = rows[scenario.other_series]
    assert skipped["status"] == "skipped" and "not CT" in skipped["reason"]
    assert scenario.worker.metric("pacs_series_processed_total") == 2
    assert scenario.worker.metric("pacs_series_latency_seconds_count") == 2


def test_worklist_lists_both_series_flagged_first(scenario: Scenario, api_url: str) -> None:
    """Each analysed series is in the API's worklist (``GET /worklist``): its study and series
    UIDs, the scanner from its DICOM headers, the API's verdict and score, and its arrival as
    the poller saw it (after its STOW began, at least PACS_STABLE_SECONDS before its
    analysis: not the time of the call); flagged first, then the longest waiting; the
    time-to-worklist histogram counted them."""
    items = worklist_items(api_url)
    by_series = {item["series_uid"]: item for item in items}
    assert sorted(by_series) == sorted(uid for _, uid in scenario.studies.values()), items
    for label, (study_uid, series_uid) in scenario.studies.items():
        item, expected = by_series[series_uid], scenario.expected[label]
        assert item["study_uid"] == study_uid and item["source"] == "pacs", item
        assert (item["manufacturer"], item["manufacturer_model"]) == (SCANNER, SCANNER_MODEL)
        assert item["verdict"] == expected["result"], (label, item["verdict"])
        assert item["score"] == pytest.approx(expected["prediction"], abs=1e-4)
        assert item["model"] == {key: expected["model"][key] for key in ("name", "version")}
        assert item["status"] == "new"
        arrived, analysed = when(item["arrived_at"]), when(item["analysed_at"])
        assert arrived.timestamp() >= scenario.stored_at[label] - 0.5, (label, arrived)
        assert (analysed - arrived).total_seconds() >= STABLE_S - 0.1, (label, item)
    normal = by_series[scenario.studies["normal"][1]]
    fracture = by_series[scenario.studies["fracture"][1]]
    assert when(normal["arrived_at"]) <= when(fracture["arrived_at"])  # stored first
    assert_worklist_order(items)
    if fracture["flagged"] and not normal["flagged"]:  # what the data gives: shown first
        assert items[0]["series_uid"] == fracture["series_uid"]
    # One observation per answered POST /worklist (a retried STOW posts once more).
    assert scenario.worker.metric("pacs_time_to_worklist_seconds_count") >= 2
    assert scenario.worker.metric("pacs_time_to_worklist_seconds_sum") >= 2 * STABLE_S


def test_restart_does_not_process_again(scenario: Scenario) -> None:
    """A restarted worker (same state file), then one with an empty state file, add nothing."""
    scenario.worker.stop()
    scenario.worker = WorkerProcess(scenario.env, scenario.tmp / "worker2.log")
    worker = scenario.worker
    wait_for(
        "a few polls by the restarted worker",
        lambda: worker.metric("pacs_polls_total", 'outcome="ok"') >= 5,
        timeout=60,
    )
    assert worker.metric("pacs_series_processed_total") == 0
    for _, series_uid in scenario.studies.values():
        assert state_rows(scenario.state_db)[series_uid]["status"] == "done"
    worker.stop()

    # An empty state file: the PACS itself shows these series are done.
    fresh_db = scenario.tmp / "fresh.sqlite3"
    scenario.worker = WorkerProcess(
        {**scenario.env, "PACS_STATE_DB": str(fresh_db)}, scenario.tmp / "worker3.log"
    )

    def recognised() -> bool:
        rows = state_rows(fresh_db)
        return all(
            rows.get(series_uid, {}).get("status") == "done"
            for _, series_uid in scenario.studies.values()
        )

    wait_for("the fresh worker to find the results in the PACS", recognised, timeout=60)
    assert scenario.worker.metric("pacs_series_processed_total") == 0
    outputs = 0
    for label, (study_uid, _) in scenario.studies.items():
        assert len(series_of(scenario.client, study_uid, "SR")) == 1, label
        heatmap_series = int(bool(scenario.heatmaps_expected(label)))
        assert len(series_of(scenario.client, study_uid, "OT")) == heatmap_series, label
        outputs += 1 + heatmap_series
    fresh = state_rows(fresh_db)
    assert sum(1 for row in fresh.values() if row["own_output"]) == outputs, fresh


def test_ct_outside_the_models_range_gets_its_sr(
    orthanc_installed: None, api_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real CT series the model cannot judge (pydicom's CT_small: a CT slice, not a neck):
    the API answers "CT outside the model's range" (reason region), and the SR the worker
    stores says so with its reason, no fracture or normal finding, no score, no heatmaps."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    source = dcmread(str(get_testdata_file("CT_small.dcm")))
    expected = reference_verdict(api_url, [source])
    assert (expected["result"], expected["outside_reason"]) == (
        "CT outside the model's range",
        "region",
    )
    tmp = tmp_path_factory.mktemp("pacs-outside")
    pacs = start_orthanc(tmp / "orthanc")
    env = {
        **os.environ, "PACS_URL": pacs.url, "API_URL": api_url,
        "PACS_STATE_DB": str(tmp / "state.sqlite3"), "PACS_POLL_SECONDS": "1",
        "PACS_STABLE_SECONDS": str(STABLE_S), "PACS_METRICS_PORT": str(free_port()),
        "PACS_LOG_LEVEL": "INFO",
    }  # fmt: skip
    worker = WorkerProcess(env, tmp / "worker.log")
    client = DICOMwebClient(pacs.dicomweb_url)
    study_uid = str(source.StudyInstanceUID)
    try:
        client.store_instances([source])
        srs = wait_for(
            "the SR of the CT_small study",
            lambda: series_of(client, study_uid, "SR"),
            timeout=DEADLINE_S,
        )
        assert len(srs) == 1
        (sr,) = client.retrieve_series(study_uid, uid_of(srs[0]))
        values = sr_text_values(sr)
        assert values["Finding"] == ["CT outside the model's range"]
        assert values["Reason outside the model's range"] == ["region"]
        assert "Study fracture score" not in values and "Most suspicious slice" not in values
        assert values["Decision threshold"] and values["Intended use"]
        assert series_of(client, study_uid, "OT") == []  # no top slice, no heatmap
        assert (
            worker.metric("pacs_series_processed_total", 'result="CT outside the model\'s range"')
            == 1
        )
    except BaseException:
        print("---- worker log ----\n" + worker.log()[-6000:])
        raise
    finally:
        worker.stop()
        pacs.stop()
