"""The worklist's routes through the real app and its lifespan (the loaded model shared, the
database a SQLite file or a real PostgreSQL server: every test that takes ``database_url``
runs on both)."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.main import create_app
from ml_model.card import ModelCard, ScoreHistogram, score_histogram
from ml_model.inference.core import InferenceCore
from pacs.orthanc import free_port
from tests.conftest import make_dicom

READER_TOKEN, WORKER_TOKEN = "reader-token-for-tests", "worker-token-for-tests"
READER_DIGEST = hashlib.sha256(READER_TOKEN.encode()).hexdigest()
WORKER_DIGEST = hashlib.sha256(WORKER_TOKEN.encode()).hexdigest()
AS_READER = {"Authorization": f"Bearer {READER_TOKEN}"}
AS_WORKER = {"Authorization": f"Bearer {WORKER_TOKEN}"}
FRACTURE, NORMAL, NOT_CT = "Potentially Fracture", "Normal", "Not a CT slice"


def study_answer(result: str, score: float = 0.8) -> dict[str, Any]:
    """A `POST /predict/study` answer as the PACS worker holds it (extra fields included)."""
    return {
        "result": result,
        "prediction": score,
        "threshold": 0.5,
        "operating_point": "sensitive",
        "aggregation": "top2_mean",
        "slice_count": 40,
        "slices": [],
        "top_slices": [{"index": 12, "name": "1.2.3.dcm", "position": -36.0, "prediction": score}],
        "errors": [],
        "position_unit": "mm",
        "warnings": [],
        "vertebrae": None,
        "model": {"name": "cspine", "version": "2026.12.1"},
        "latency_ms": 900.0,
    }


def submission(
    n: int, result: str = NORMAL, arrived: str = "2026-12-01T08:00:00Z", **more: Any
) -> dict[str, Any]:
    return {
        "study_uid": f"1.2.826.0.1.3680043.9.{n}",
        "series_uid": f"1.2.826.0.1.3680043.9.{n}.2",
        "arrived_at": arrived,
        "manufacturer": "GE MEDICAL SYSTEMS",
        "manufacturer_model": "Revolution CT",
        "study": study_answer(result, 0.9 if result == FRACTURE else 0.1),
        **more,
    }


def post_json(client: TestClient, url: str, body: dict[str, Any]) -> int:
    """POST ``body`` as ASCII JSON (escapes, so that lone surrogates get through); the status."""
    content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return client.post(url, content=content, headers=headers).status_code


@pytest.fixture
def app_settings(database_url: str, tmp_path: Path) -> dict[str, Any]:
    return {"database_url": database_url, "frontend_dist": tmp_path / "no-dist"}


@pytest.fixture
def api(app_settings: dict[str, Any], service: InferenceCore) -> Iterator[TestClient]:
    """The app over ``database_url``, no tokens."""
    with TestClient(create_app(Settings(**app_settings), inference=service)) as client:
        yield client


@pytest.fixture
def guarded_api(app_settings: dict[str, Any], service: InferenceCore) -> Iterator[TestClient]:
    """The app with two tokens: the PACS worker's (no role) and a radiologist's (reader)."""
    hashes = f"{WORKER_DIGEST},{READER_DIGEST}:reader"
    settings = Settings(**app_settings, auth_token_hashes=hashes)
    with TestClient(create_app(settings, inference=service)) as client:
        yield client


def test_post_lists_flagged_first_then_by_arrival(api: TestClient) -> None:
    posted = [
        api.post("/worklist", json=submission(1, NORMAL, "2026-12-01T07:00:00Z")),
        api.post("/worklist", json=submission(2, FRACTURE, "2026-12-01T09:00:00Z")),
        api.post("/worklist", json=submission(3, FRACTURE, "2026-12-01T08:00:00+01:00")),
        api.post("/worklist", json=submission(4, NOT_CT, "2026-12-01T06:00:00Z")),
    ]
    assert [r.status_code for r in posted] == [201] * 4
    ids = [r.json()["id"] for r in posted]
    page = api.get("/worklist").json()
    assert [item["id"] for item in page["items"]] == [ids[2], ids[1], ids[3], ids[0]]
    assert page["total"] == 4
    first = page["items"][0]
    assert first["flagged"] and first["status"] == "new" and first["verdict"] == FRACTURE
    assert first["arrived_at"].startswith("2026-12-01T07:00:00")  # stored in UTC
    assert first["model"] == {"name": "cspine", "version": "2026.12.1"}
    assert first["manufacturer_model"] == "Revolution CT"
    assert first["top_slices"] == [
        {"index": 12, "name": "1.2.3.dcm", "position": -36.0, "prediction": 0.9}
    ]
    assert first["source"] == "pacs" and first["identifiers"] is None


def test_the_same_series_again_updates_it(api: TestClient) -> None:
    first = api.post("/worklist", json=submission(1, NORMAL))
    again = api.post("/worklist", json=submission(1, FRACTURE))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["flagged"]
    assert api.get("/worklist").json()["total"] == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [2, 1, 3]),
        ("?verdict=Potentially%20Fracture", [2]),
        ("?status=opened", [1]),
        ("?status=new&status=opened", [2, 1]),
        ("?arrived_from=2026-12-01T08:30:00Z", [2, 3]),
        ("?arrived_to=2026-12-01T08:30:00Z", [1]),
        ("?limit=1&offset=1", [1]),
    ],
)
def test_filters_and_pages(api: TestClient, query: str, expected: list[int]) -> None:
    ids = {}
    for n, result, arrived in [
        (1, NORMAL, "2026-12-01T08:00:00Z"),
        (2, FRACTURE, "2026-12-01T09:00:00Z"),
        (3, NORMAL, "2026-12-01T10:00:00Z"),
    ]:
        ids[n] = api.post("/worklist", json=submission(n, result, arrived)).json()["id"]
    api.get(f"/worklist/{ids[1]}")
    api.post(f"/worklist/{ids[3]}/review", json={"fracture": False})
    page = api.get(f"/worklist{query}").json()
    assert [item["id"] for item in page["items"]] == [ids[n] for n in expected]


@pytest.mark.parametrize(
    "query",
    ["?status=closed", "?verdict=Maybe", "?limit=0", "?limit=201", "?offset=-1",
     "?arrived_from=2026-12-01T08:00:00"],  # a time without a zone
)  # fmt: skip
def test_bad_filters_are_422(api: TestClient, query: str) -> None:
    assert api.get(f"/worklist{query}").status_code == 422


def test_opening_marks_it_opened(api: TestClient) -> None:
    study_id = api.post("/worklist", json=submission(1, FRACTURE)).json()["id"]
    opened = api.get(f"/worklist/{study_id}")
    assert opened.status_code == 200
    assert opened.json()["status"] == "opened" and opened.json()["opened_at"] is not None
    assert api.get("/worklist/999999").status_code == 404
    assert api.get(f"/worklist/{2**31}").status_code == 422  # past the id column
    assert api.post("/worklist/999999/review", json={"fracture": True}).status_code == 404


def test_reads_are_kept_as_history(api: TestClient) -> None:
    study_id = api.post("/worklist", json=submission(1, FRACTURE)).json()["id"]
    first = api.post(
        f"/worklist/{study_id}/review",
        json={"fracture": True, "levels": ["C2", "C6"], "note": "type II dens"},
    )
    second = api.post(f"/worklist/{study_id}/review", json={"fracture": False})
    assert (first.status_code, second.status_code) == (201, 201)
    body = api.get(f"/worklist/{study_id}").json()
    assert body["status"] == "reviewed"
    assert [(r["fracture"], r["levels"], r["note"], r["reader"]) for r in body["reviews"]] == [
        (True, ["C2", "C6"], "type II dens", None),  # no tokens: no reader id
        (False, [], None, None),
    ]
    assert body["reviews"][0]["reviewed_at"] <= body["reviews"][1]["reviewed_at"]


@pytest.mark.parametrize(
    "read",
    [
        {},
        {"fracture": "perhaps"},
        {"fracture": False, "levels": ["C2"]},
        {"fracture": True, "levels": ["C8"]},
        {"fracture": True, "levels": ["C1", "C1"]},
        {"fracture": True, "note": "x" * 2001},
        {"fracture": True, "note": "a\x00b"},
        {"fracture": True, "note": "\ud800"},
    ],
    ids=[
        "empty",
        "not a bool",
        "levels without fracture",
        "C8",
        "twice",
        "long note",
        "NUL",
        "lone surrogate",
    ],
)
def test_bad_reads_are_422(api: TestClient, read: dict[str, Any]) -> None:
    study_id = api.post("/worklist", json=submission(1)).json()["id"]
    assert post_json(api, f"/worklist/{study_id}/review", read) == 422
    assert api.get(f"/worklist/{study_id}").json()["reviews"] == []


@pytest.mark.parametrize(
    "change",
    [
        {"study_uid": "1.2.abc"},
        {"series_uid": "1." * 40},
        {"arrived_at": "2026-12-01T08:00:00"},
        {"study": {"result": "Maybe"}},
        {"manufacturer": "x" * 65},
        {"manufacturer": "GE\x00"},
        {"manufacturer_model": "\udc80"},
        {"arrived_at": "9999-12-31T23:00:00-05:00"},
        {"study": {**study_answer(NORMAL), "model": {"name": "m" * 129, "version": "1"}}},
        {
            "study": {
                **study_answer(NORMAL),
                "top_slices": [{"index": 0, "name": "a", "position": "NaN", "prediction": 0.5}],
            }
        },
    ],
    ids=[
        "uid letters",
        "uid too long",
        "time without zone",
        "bad study",
        "long manufacturer",
        "NUL",
        "lone surrogate",
        "no UTC year",
        "long model name",
        "NaN position",
    ],
)
def test_bad_submissions_are_422(api: TestClient, change: dict[str, Any]) -> None:
    assert post_json(api, "/worklist", {**submission(1), **change}) == 422


def test_only_configured_identifiers_are_kept(
    app_settings: dict[str, Any], service: InferenceCore
) -> None:
    sent = {"accession_number": "ACC1", "patient_id": "P123"}
    for configured, kept in [("", None), ("accession_number", {"accession_number": "ACC1"})]:
        settings = Settings(**app_settings, worklist_identifiers=configured)
        with TestClient(create_app(settings, inference=service)) as client:
            n = 1 if configured else 2
            body = client.post("/worklist", json=submission(n, identifiers=sent)).json()
            assert body["identifiers"] == kept


def test_tokens_and_the_reader_role(guarded_api: TestClient) -> None:
    assert guarded_api.post("/worklist", json=submission(1)).status_code == 401
    study_id = guarded_api.post("/worklist", json=submission(1), headers=AS_WORKER).json()["id"]
    for path in ("/worklist", f"/worklist/{study_id}", "/monitoring"):
        assert guarded_api.get(path).status_code == 401
        assert guarded_api.get(path, headers=AS_WORKER).status_code == 200
    url = f"/worklist/{study_id}/review"
    assert guarded_api.post(url, json={"fracture": True}).status_code == 401
    refused = guarded_api.post(url, json={"fracture": True}, headers=AS_WORKER)
    assert refused.status_code == 403 and "reader" in refused.json()["detail"]
    accepted = guarded_api.post(url, json={"fracture": True}, headers=AS_READER)
    assert accepted.status_code == 201
    assert [r["reader"] for r in accepted.json()["reviews"]] == [READER_DIGEST[:8]]


def test_two_readers_at_once_both_kept(guarded_api: TestClient) -> None:
    study_id = guarded_api.post("/worklist", json=submission(1, FRACTURE), headers=AS_WORKER)
    url = f"/worklist/{study_id.json()['id']}/review"
    reads = [{"fracture": k % 2 == 0, "note": f"read {k}"} for k in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda read: guarded_api.post(url, json=read, headers=AS_READER), reads)
        )
    assert [a.status_code for a in answers] == [201] * 6
    kept = guarded_api.get(url.removesuffix("/review"), headers=AS_READER).json()["reviews"]
    assert sorted(r["note"] for r in kept) == [f"read {k}" for k in range(6)]


def test_a_restart_loses_nothing(app_settings: dict[str, Any], service: InferenceCore) -> None:
    settings = Settings(**app_settings)
    with TestClient(create_app(settings, inference=service)) as first:
        study_id = first.post("/worklist", json=submission(1, FRACTURE)).json()["id"]
        first.post("/worklist", json=submission(2, NORMAL))
        first.post(f"/worklist/{study_id}/review", json={"fracture": True, "levels": ["C3"]})
        before = first.get("/worklist").json()
        monitored = first.get("/monitoring").json()
    app = create_app(settings, inference=service)
    for _ in range(2):  # a new app, then the same app's lifespan started again
        with TestClient(app) as again:
            assert again.get("/worklist").json() == before
            assert again.get("/monitoring").json() == monitored
    assert before["total"] == 2 and before["items"][0]["reviews"][0]["levels"] == ["C3"]


def test_monitoring_and_its_gauges(api: TestClient) -> None:
    # 3 true positives, 1 false positive, 2 true negatives, 1 false negative, 1 no call.
    cases = [(FRACTURE, True)] * 3 + [(FRACTURE, False)] + [(NORMAL, False)] * 2
    cases += [(NORMAL, True), (NOT_CT, True)]
    for n, (result, fracture) in enumerate(cases):
        study_id = api.post("/worklist", json=submission(n, result)).json()["id"]
        api.post(f"/worklist/{study_id}/review", json={"fracture": fracture})
    api.post("/worklist", json=submission(99, FRACTURE))  # not reviewed: not counted
    body = api.get("/monitoring").json()
    overall = body["overall"]
    assert (overall["reviewed"], overall["no_call"]) == (8, 1)
    counts = ("true_positive", "false_positive", "true_negative", "false_negative")
    assert [overall[k] for k in counts] == [3, 1, 2, 1]
    assert overall["sensitivity"]["estimate"] == pytest.approx(0.75)
    assert overall["specificity"]["estimate"] == pytest.approx(2 / 3)
    assert overall["ppv"]["estimate"] == pytest.approx(0.75)
    assert overall["npv"]["estimate"] == pytest.approx(2 / 3)
    lower, upper = overall["sensitivity"]["lower"], overall["sensitivity"]["upper"]
    assert lower == pytest.approx(0.3006, abs=1e-4) and upper == pytest.approx(0.9544, abs=1e-4)
    assert set(body["by_model_version"]) == {"cspine 2026.12.1"}
    assert set(body["by_scanner"]) == {"GE MEDICAL SYSTEMS / Revolution CT"}
    assert set(body["by_week"]) == {"2026-W49"}

    metrics = api.get("/metrics").text
    assert (
        'triage_monitoring_ratio{bound="estimate",group="all",grouping="overall",'
        'measure="sensitivity"} 0.75' in metrics
    )
    assert 'triage_monitoring_ratio{bound="lower",group="2026-W49",grouping="week"' in metrics
    assert 'triage_monitoring_reviewed_studies{group="all",grouping="overall"} 8.0' in metrics


def _series_with_identity(count: int = 4) -> list[tuple[str, tuple[str, bytes]]]:
    files = []
    for index in range(count):
        stored = np.full((64, 64), 1000 + 40 * index, dtype=np.uint16)
        data = make_dicom(stored, z=-3.0 * index, instance=index + 1, series_uid="1.2.3.4.5")
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.StudyInstanceUID = "1.2.3.4"
        dataset.Manufacturer = "SIEMENS"
        dataset.ManufacturerModelName = "SOMATOM Force"
        dataset.PatientName = "Doe^Jane"  # never stored
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(("files", (f"IM{index}.dcm", buffer.getvalue())))
    return files


def failure(n: int, failure_class: str, reason: str = "identity: two PatientIDs") -> dict[str, Any]:
    """A series the PACS pipeline gave up on (the worker's report), of ``submission(n)``."""
    uids = submission(n, NORMAL)
    return {
        "study_uid": uids["study_uid"],
        "series_uid": uids["series_uid"],
        "failure_class": failure_class,
        "reason": reason,
        "failed_at": "2026-12-05T08:00:00Z",
    }


def test_series_the_pipeline_gave_up_on_show_until_analysed(api: TestClient) -> None:
    """Reported failures are listed (the latest first; one per series, replaced when
    reported again), counted in /monitoring and on /metrics, and gone once the series is
    analysed after all (its POST /worklist)."""
    assert api.post("/pipeline/failures", json=failure(1, "identity")).status_code == 201
    assert api.post("/pipeline/failures", json=failure(2, "error", "boom")).status_code == 201
    later = {**failure(2, "permanent", "API refused it"), "failed_at": "2026-12-05T09:00:00Z"}
    assert api.post("/pipeline/failures", json=later).status_code == 201
    listed = api.get("/pipeline/failures").json()
    assert [(f["series_uid"], f["failure_class"], f["reason"]) for f in listed] == [
        (later["series_uid"], "permanent", "API refused it"),
        (failure(1, "identity")["series_uid"], "identity", "identity: two PatientIDs"),
    ]
    assert api.get("/monitoring").json()["pipeline_failures"] == {"identity": 1, "permanent": 1}
    metrics = api.get("/metrics").text
    assert 'triage_pipeline_failures{failure_class="permanent"} 1.0' in metrics

    assert api.post("/worklist", json=submission(2, NORMAL)).status_code == 201
    assert [f["failure_class"] for f in api.get("/pipeline/failures").json()] == ["identity"]
    assert api.get("/monitoring").json()["pipeline_failures"] == {"identity": 1}


@pytest.mark.parametrize(
    "change",
    [{"failure_class": "transient"}, {"series_uid": "1.2.x"}, {"reason": ""},
     {"failed_at": "2026-12-05T08:00:00"}],
    ids=["not-final", "bad-uid", "no-reason", "no-zone"],
)  # fmt: skip
def test_bad_failure_reports_are_422(api: TestClient, change: dict[str, Any]) -> None:
    assert api.post("/pipeline/failures", json={**failure(1, "error"), **change}).status_code == 422


def test_a_study_upload_can_be_saved(api: TestClient) -> None:
    plain = api.post("/predict/study", files=_series_with_identity())
    assert plain.status_code == 200 and "worklist_id" not in plain.json()
    assert api.get("/worklist").json()["total"] == 0
    saved = api.post("/predict/study?save=true", files=_series_with_identity())
    assert saved.status_code == 200
    answer = saved.json()
    entry = api.get(f"/worklist/{answer['worklist_id']}").json()
    assert entry["source"] == "upload"
    assert (entry["study_uid"], entry["series_uid"]) == ("1.2.3.4", "1.2.3.4.5")
    assert (entry["manufacturer"], entry["manufacturer_model"]) == ("SIEMENS", "SOMATOM Force")
    assert (entry["verdict"], entry["score"]) == (answer["result"], answer["prediction"])
    assert entry["threshold"] == answer["threshold"] and entry["model"] == answer["model"]
    assert "Doe" not in str(entry)


@pytest.mark.parametrize(
    ("configured", "digests", "roles"),
    [
        ("", [], {}),
        (READER_DIGEST, [READER_DIGEST], {READER_DIGEST: frozenset()}),
        (f"{READER_DIGEST.upper()}:reader", [READER_DIGEST], {READER_DIGEST: {"reader"}}),
        (
            f"{WORKER_DIGEST}, {READER_DIGEST}:reader+reader",
            [WORKER_DIGEST, READER_DIGEST],
            {WORKER_DIGEST: frozenset(), READER_DIGEST: {"reader"}},
        ),
    ],
    ids=["none", "plain digest (as before)", "reader", "two tokens"],
)
def test_token_roles_in_the_configuration(
    monkeypatch: pytest.MonkeyPatch,
    configured: str,
    digests: list[str],
    roles: dict[str, set[str]],
) -> None:
    monkeypatch.setenv("AUTH_TOKEN_HASHES", configured)
    settings = Settings()
    assert settings.token_digests == digests
    assert settings.token_roles == roles


@pytest.mark.parametrize("configured", [f"{READER_DIGEST}:admin", f"{READER_DIGEST[:10]}:reader"])
def test_a_bad_token_entry_stops_the_settings(
    monkeypatch: pytest.MonkeyPatch, configured: str
) -> None:
    monkeypatch.setenv("AUTH_TOKEN_HASHES", configured)
    with pytest.raises(ValueError, match="AUTH_TOKEN_HASHES"):
        Settings()


def submission_by(
    n: int, card: ModelCard, result: str, score: float, arrived: datetime
) -> dict[str, Any]:
    """A submission of the loaded model (``card``) with its score, arrived at ``arrived``."""
    body = submission(n, result, arrived=arrived.isoformat())
    body["study"] = study_answer(result, score) | {
        "model": {"name": card.name, "version": card.version}
    }
    return body


def with_reference(service: InferenceCore, histogram: ScoreHistogram | None) -> InferenceCore:
    """The loaded model with its card's drift reference replaced by ``histogram``."""
    card = service.bundle.card
    study = card.study.model_copy(update={"score_histogram": histogram})
    return service.with_bundle(
        replace(service.bundle, card=card.model_copy(update={"study": study}))
    )


def test_drift_without_a_reference_histogram(
    app_settings: dict[str, Any], service: InferenceCore
) -> None:
    """A card that keeps no out-of-fold score distribution (trained with ``--cv none``):
    PSI is left out with the reason; the refusal shares (every analysed study, reviewed or
    not) are there."""
    core = with_reference(service, None)
    now = datetime.now(UTC)
    with TestClient(create_app(Settings(**app_settings), inference=core)) as api:
        for n, result in enumerate([NORMAL, NORMAL, FRACTURE, NOT_CT]):
            api.post("/worklist", json=submission_by(n, core.bundle.card, result, 0.3, now))
        drift = api.get("/monitoring").json()["drift"]
        metrics = api.get("/metrics").text
    assert drift["psi_unavailable"] == "the card has no out-of-fold score distribution"
    assert drift["reference"] is None and drift["recent"] is None and drift["psi_by_week"] == {}
    (week,) = drift["refusals_by_week"].values()
    assert week[NOT_CT]["successes"] == 1 and week[NOT_CT]["total"] == 4
    assert week[NOT_CT]["warning"] is True  # 0.25 > MONITORING_NOT_CT_WARN's 0.2
    assert week["CT outside the model's range"]["estimate"] == 0.0
    assert "triage_monitoring_psi{" not in metrics
    assert 'triage_monitoring_refusal_share{answer="Not a CT slice",bound="estimate"' in metrics


def test_the_shipped_card_is_a_drift_reference(api: TestClient, service: InferenceCore) -> None:
    """The default bundle's card holds the out-of-fold study-score distribution of its re-run
    folds (``ml_model.training.score_reference``): live scores are compared with it."""
    reference = service.bundle.card.study.score_histogram
    assert reference is not None and reference.n == 400
    assert "re-run" in reference.source and "score_reference" in reference.source
    now = datetime.now(UTC)
    for n, score in enumerate([0.2, 0.4, 0.7, 0.9]):
        result = FRACTURE if score >= 0.5 else NORMAL
        api.post("/worklist", json=submission_by(n, service.bundle.card, result, score, now))
    drift = api.get("/monitoring").json()["drift"]
    assert drift["psi_unavailable"] is None
    assert drift["reference"]["edges"] == reference.edges
    assert drift["recent"]["n"] == 4 and drift["recent"]["psi"] > 0


def test_drift_against_the_cards_histogram(
    app_settings: dict[str, Any], service: InferenceCore
) -> None:
    """The loaded model with a card that holds a reference (deciles of beta(2, 5) scores):
    live scores from it give a small PSI, scores shifted up give one past the bound."""
    card = service.bundle.card
    rng = np.random.default_rng(3)
    core = with_reference(service, score_histogram(rng.beta(2, 5, 4000), "test: beta(2, 5)"))
    settings = Settings(**app_settings, monitoring_psi_warn=0.25)
    now = datetime.now(UTC)
    last_week, this_week = now - timedelta(days=7), now
    with TestClient(create_app(settings, inference=core)) as client:
        same = rng.beta(2, 5, 300)
        shifted = np.clip(rng.beta(2, 5, 300) + 0.3, 0, 1)
        for n, (score, arrived) in enumerate(
            [(s, last_week) for s in same] + [(s, this_week) for s in shifted]
        ):
            result = FRACTURE if score >= 0.5 else NORMAL
            body = submission_by(n, card, result, score, arrived)
            assert post_json(client, "/worklist", body) == 201
        client.post("/worklist", json=submission(999, NOT_CT))  # a refusal: no PSI
        drift = client.get("/monitoring").json()["drift"]
        assert drift["psi_unavailable"] is None and drift["psi_warn"] == 0.25
        assert drift["reference"]["fractions"] == pytest.approx([0.1] * 10)
        weeks = drift["psi_by_week"]
        old, new = weeks[iso_week(last_week)], weeks[iso_week(this_week)]
        assert (old["n"], new["n"]) == (300, 300) and sum(new["counts"]) == 300
        assert old["psi"] < 0.1 and old["warning"] is False
        assert new["psi"] > 0.25 and new["warning"] is True
        assert drift["recent"]["n"] == 600 and drift["recent_days"] == 28
        metrics = client.get("/metrics").text
    assert f'triage_monitoring_psi{{window="{iso_week(this_week)}"}} {new["psi"]}' in metrics
    assert 'triage_monitoring_psi{window="last_28d"}' in metrics


def iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def test_top_slice_images_say_why_they_cannot_be_shown(
    app_settings: dict[str, Any], service: InferenceCore
) -> None:
    """GET /worklist/{id}/top-slices/{rank}?layer=... without a PACS (404, naming the setting),
    with a PACS that does not answer (502), for an upload (404: not from the PACS), a rank past
    the entry's top slices (404) and an unknown layer (422). The images themselves, from a real
    Orthanc, are checked in tests/pacs/test_worklist_browser.py."""
    with TestClient(create_app(Settings(**app_settings), inference=service)) as client:
        pacs_id = client.post("/worklist", json=submission(1, FRACTURE)).json()["id"]
        answer = client.get(f"/worklist/{pacs_id}/top-slices/1")
        assert answer.status_code == 404 and "WORKLIST_PACS_URL" in answer.json()["detail"]
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    settings = Settings(**app_settings, worklist_pacs_url=closed, worklist_pacs_timeout_s=5)
    with TestClient(create_app(settings, inference=service)) as client:
        upload = client.post("/predict/study?save=true", files=_series_with_identity())
        upload_id = upload.json()["worklist_id"]
        for layer in ("slice", "heatmap"):
            started = time.monotonic()
            answer = client.get(f"/worklist/{pacs_id}/top-slices/1?layer={layer}")
            assert time.monotonic() - started < 5  # one try, no back-off
            assert answer.status_code == 502, answer.text
            assert "the PACS did not answer" in answer.json()["detail"]
        answer = client.get(f"/worklist/{upload_id}/top-slices/1")
        assert answer.status_code == 404 and "did not come from the PACS" in answer.json()["detail"]
        answer = client.get(f"/worklist/{pacs_id}/top-slices/2")
        assert answer.status_code == 404 and "has 1 top slice" in answer.json()["detail"]
        assert client.get(f"/worklist/{pacs_id}/top-slices/1?layer=overlay").status_code == 422
        assert client.get(f"/worklist/{pacs_id + 99}/top-slices/1").status_code == 404
        listed = client.get("/worklist").json()["items"]
        assert [item["status"] for item in listed if item["id"] == pacs_id] == ["new"]
