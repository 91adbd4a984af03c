"""The webhook notification of flagged studies, end to end: the real app through its lifespan
(the loaded model shared; the database a SQLite file and a real PostgreSQL server) and a real
HTTP receiver on 127.0.0.1 that checks each call's HMAC-SHA256 signature and fails as told."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import create_engine, text

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from backend.app.main import create_app
from backend.app.services.notification import backoff_s, body_bytes, signature
from backend.app.worklist.models import NotificationState
from backend.app.worklist.store import WorklistStore
from ml_model.inference.core import InferenceCore
from testing.webhook_receiver import Receiver, running_receiver
from tests.backend.worklist.test_worklist_api import FRACTURE, NORMAL, submission

SECRET = "webhook-secret-for-tests"
WAIT_S = 20.0  # the longest a test waits for a delivery (they take well under a second)
QUIET_S = 0.5  # how long nothing more must arrive once the expected calls have


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(SECRET) as state:
        yield state


def webhook_settings(
    database_url: str, tmp_path: Path, receiver: Receiver, **more: Any
) -> Settings:
    """An app whose back-off is tiny, so retries take milliseconds."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "frontend_dist": tmp_path / "no-dist",
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "webhook_backoff_base_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_poll_s": 0.05,
        "webhook_timeout_s": 5.0,
        **more,
    }
    return Settings(**values)


@pytest.fixture
def serve(
    database_url: str, tmp_path: Path, receiver: Receiver, service: InferenceCore
) -> Callable[..., TestClient]:
    """A TestClient factory: the app with the webhook at ``receiver`` (enter it to start)."""

    def make(**more: Any) -> TestClient:
        settings = webhook_settings(database_url, tmp_path, receiver, **more)
        return TestClient(create_app(settings, inference=service))

    return make


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def settle() -> None:
    """Leave time for a call that should not come (a dozen poll and back-off rounds)."""
    time.sleep(QUIET_S)


def metric(api: TestClient, line_start: str) -> float:
    text_ = api.get("/metrics").text
    found = [line for line in text_.splitlines() if line.startswith(line_start)]
    assert len(found) == 1, f"{line_start!r} in /metrics: {found}"
    return float(found[0].rsplit(" ", 1)[1])


def test_one_signed_call_per_flagged_study_also_when_it_fails_twice_first(
    serve: Callable[..., TestClient], receiver: Receiver
) -> None:
    receiver.fail_first = 2
    with serve() as api:
        flagged = api.post("/worklist", json=submission(1, FRACTURE)).json()
        normal = api.post("/worklist", json=submission(2, NORMAL)).json()
        other = api.post("/worklist", json=submission(3, FRACTURE)).json()
        # The PACS worker's retry of the same entry (a failed STOW): no second notification.
        assert api.post("/worklist", json=submission(1, FRACTURE)).status_code == 200
        wait_for(lambda: len(receiver.accepted()) == 2, "two accepted calls")
        settle()
        assert api.post("/worklist", json=submission(1, FRACTURE)).status_code == 200
        settle()

        calls = receiver.all()
        assert all(call.signed for call in calls)
        accepted = receiver.accepted()
        assert sorted(call.body["worklist_id"] for call in accepted) == [flagged["id"], other["id"]]
        assert len(calls) == 6  # 500, 500, 204 for each flagged study; none for the normal one
        assert normal["id"] not in {call.body["worklist_id"] for call in calls}
        assert len({call.delivery for call in accepted}) == 2
        for delivery in {call.delivery for call in calls}:  # the same body on every attempt
            assert len({json.dumps(c.body) for c in calls if c.delivery == delivery}) == 1

        body = next(call.body for call in accepted if call.body["worklist_id"] == flagged["id"])
        sent = submission(1, FRACTURE)
        assert body == {
            "event": "study.flagged",
            "delivery_id": body["delivery_id"],
            "worklist_id": flagged["id"],
            "study_uid": sent["study_uid"],
            "series_uid": sent["series_uid"],
            "verdict": FRACTURE,
            "score": 0.9,
            "threshold": 0.5,
            "operating_point": "sensitive",
            "model": {"name": "cspine", "version": "2026.12.1"},
            "arrived_at": "2026-12-01T08:00:00Z",
            "analysed_at": body["analysed_at"],
            "link": f"/worklist/{flagged['id']}",
        }
        assert body["delivery_id"] in {call.delivery for call in accepted}

        # An update that turns the normal entry flagged: its one notification.
        assert api.post("/worklist", json=submission(2, FRACTURE)).status_code == 200
        wait_for(lambda: len(receiver.accepted()) == 3, "the re-flagged study's call")
        settle()
        assert len(receiver.accepted()) == 3
        assert receiver.accepted()[-1].body["worklist_id"] == normal["id"]
        # ... and back to normal and flagged again: still that one.
        api.post("/worklist", json=submission(2, NORMAL))
        api.post("/worklist", json=submission(2, FRACTURE))
        settle()
        assert len(receiver.accepted()) == 3

        delivered = 'triage_webhook_deliveries_total{outcome="delivered"}'
        assert metric(api, delivered) == 3
        assert metric(api, 'triage_webhook_deliveries_total{outcome="failed"}') == 6
        # arrived 2026-12-01: days before the call, so past every bucket but +Inf
        assert metric(api, "triage_time_to_notification_seconds_count") == 3
        assert metric(api, 'triage_time_to_notification_seconds_bucket{le="7200.0"}') == 0
        states = [row.state for row in api.app.state.worklist.notifications()]  # type: ignore[attr-defined]
        assert states == [NotificationState.delivered.value] * 3


def test_an_upload_saved_flagged_is_notified_once(
    serve: Callable[..., TestClient], receiver: Receiver, shared_data: Path
) -> None:
    """``POST /predict/study?save=true`` of a real cervical CT slice, flagged at THRESHOLD=0;
    the same upload again (no UIDs in a PNG: a new entry) is a second flagged entry."""
    path = sorted((shared_data / "val" / "fracture").glob("*.png"))[0]
    files = [("files", (path.name, path.read_bytes(), "image/png"))]
    with serve(threshold=0.0) as api:
        saved = api.post("/predict/study?save=true", files=files)
        assert saved.status_code == 200, saved.text
        answer = saved.json()
        assert answer["result"] == FRACTURE
        wait_for(lambda: len(receiver.accepted()) == 1, "the upload's call")
        [call] = receiver.accepted()
        assert call.body["worklist_id"] == answer["worklist_id"]
        assert call.body["study_uid"] is None and call.body["verdict"] == FRACTURE
        again = api.post("/predict/study?save=true", files=files).json()
        wait_for(lambda: len(receiver.accepted()) == 2, "the second upload's call")
        settle()
        ids = [call.body["worklist_id"] for call in receiver.accepted()]
        assert ids == [answer["worklist_id"], again["worklist_id"]]


def test_the_last_failed_attempt_is_dead_lettered(
    serve: Callable[..., TestClient], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail_always = True
    logger = logging.getLogger(LOGGER_NAME)
    with serve(webhook_max_attempts=3) as api:
        logger.addHandler(caplog.handler)  # the backend loggers do not propagate
        try:
            entry = api.post("/worklist", json=submission(1, FRACTURE)).json()
            store: WorklistStore = api.app.state.worklist  # type: ignore[attr-defined]
            wait_for(lambda: bool(store.dead_letters()), "a dead letter")
            settle()
        finally:
            logger.removeHandler(caplog.handler)
        assert [call.status for call in receiver.all()] == [500, 500, 500]
        [letter] = store.dead_letters()
        assert letter.study_id == entry["id"] and letter.attempts == 3
        assert letter.url == receiver.url and letter.last_error.startswith("HTTP 500")
        assert letter.body["worklist_id"] == entry["id"]
        assert letter.delivery_id == receiver.all()[0].delivery
        [row] = store.notifications()
        assert row.state == NotificationState.dead.value and row.next_attempt_at is None
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [r.getMessage() for r in errors] == ["webhook dead-lettered"]
        assert metric(api, 'triage_webhook_deliveries_total{outcome="dead_letter"}') == 1
        assert metric(api, 'triage_webhook_deliveries_total{outcome="failed"}') == 2
        assert metric(api, "triage_time_to_notification_seconds_count") == 0


OPERATOR_TOKEN = "operator-token-for-tests"


def test_an_operator_replays_a_dead_letter_once_delivered(
    serve: Callable[..., TestClient], receiver: Receiver
) -> None:
    """Dead letters through the API: listed to an ``operator`` token only (403 to a token
    without the role), replayed once the receiver is back: one more signed call under the same
    delivery id, accepted; the dead letter gone, the notification delivered."""
    receiver.fail_always = True
    operator = hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()
    other = hashlib.sha256(b"no-role-token").hexdigest()
    with serve(webhook_max_attempts=2, auth_token_hashes=f"{operator}:operator,{other}") as api:
        as_operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        no_role = {"Authorization": "Bearer no-role-token"}
        entry = api.post("/worklist", json=submission(1, FRACTURE), headers=no_role).json()
        store: WorklistStore = api.app.state.worklist  # type: ignore[attr-defined]
        wait_for(lambda: bool(store.dead_letters()), "a dead letter")
        assert api.get("/notifications/dead-letters", headers=no_role).status_code == 403
        assert api.get("/notifications/dead-letters").status_code == 401
        [letter] = api.get("/notifications/dead-letters", headers=as_operator).json()
        assert (letter["study_id"], letter["attempts"]) == (entry["id"], 2)
        assert letter["last_error"].startswith("HTTP 500") and letter["url"] == receiver.url
        first = receiver.all()[0].delivery
        assert letter["delivery_id"] == first

        receiver.fail_always = False
        replay = f"/notifications/dead-letters/{letter['id']}/replay"
        assert api.post(replay, headers=no_role).status_code == 403
        answer = api.post(replay, headers=as_operator)
        assert answer.status_code == 202, answer.text
        assert answer.json() == {"study_id": entry["id"], "delivery_id": first}
        wait_for(lambda: bool(receiver.accepted()), "the replayed delivery")
        settle()
        assert [(c.delivery, c.signed, c.status) for c in receiver.all()] == [
            (first, True, 500), (first, True, 500), (first, True, 204)
        ]  # fmt: skip
        assert api.get("/notifications/dead-letters", headers=as_operator).json() == []
        assert api.post(replay, headers=as_operator).status_code == 404
        [row] = store.notifications()
        assert row.state == NotificationState.delivered.value and row.attempts == 1


def test_a_restart_resumes_the_pending_delivery(
    serve: Callable[..., TestClient], receiver: Receiver
) -> None:
    receiver.fail_always = True
    with serve(webhook_backoff_base_s=0.3, webhook_backoff_max_s=0.3) as api:
        entry = api.post("/worklist", json=submission(1, FRACTURE)).json()
        store: WorklistStore = api.app.state.worklist  # type: ignore[attr-defined]
        wait_for(lambda: store.notifications()[0].last_error is not None, "a failed attempt")
    # Stopped with the notification pending; the receiver is fixed; nothing is posted again.
    receiver.fail_always = False
    with serve() as api:
        wait_for(lambda: len(receiver.accepted()) == 1, "the resumed call")
        settle()
        [call] = receiver.accepted()
        assert call.body["worklist_id"] == entry["id"] and call.signed
        assert {c.delivery for c in receiver.all()} == {call.delivery}
        assert metric(api, 'triage_webhook_deliveries_total{outcome="delivered"}') == 1


def test_without_a_webhook_nothing_is_queued(
    database_url: str, tmp_path: Path, service: InferenceCore
) -> None:
    settings = Settings(database_url=database_url, frontend_dist=tmp_path / "no-dist")
    with TestClient(create_app(settings, inference=service)) as api:
        assert api.post("/worklist", json=submission(1, FRACTURE)).status_code == 201
        assert api.app.state.worklist.notifications() == []  # type: ignore[attr-defined]


def test_replicas_never_claim_one_notification_twice(database_url: str) -> None:
    """Two stores on one database (two replicas): a claimed notification is not due for the
    other; on PostgreSQL a row another transaction holds is skipped, not waited for."""
    first, second = (WorklistStore(database_url, notify=True) for _ in range(2))
    first.migrate()
    try:
        ids = []
        for n in (1, 2):
            row, _ = first.record(_entry(n))
            ids.append(row.id)
        if first.engine.dialect.name == "postgresql":
            engine = create_engine(database_url)
            with engine.begin() as holder:  # another replica, mid-claim on the first row
                holder.execute(
                    text("SELECT id FROM worklist_notifications WHERE study_id = :id FOR UPDATE"),
                    {"id": ids[0]},
                )
                claimed = _claim_within(second, 10.0)
                assert [item.study_id for item in claimed] == [ids[1]]
            engine.dispose()
            claimed += first.claim_notifications(16, 60.0)
        else:
            claimed = first.claim_notifications(16, 60.0)
        assert sorted(item.study_id for item in claimed) == ids
        assert second.claim_notifications(16, 60.0) == []  # leased by the other
        assert first.claim_notifications(16, 60.0) == []
    finally:
        first.close()
        second.close()


def _claim_within(store: WorklistStore, seconds: float) -> list[Any]:
    """Claim in a thread; fail (instead of hanging) when the claim waits on a lock."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.extend(store.claim_notifications(16, 60.0)))
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the claim waited for a locked row instead of skipping it"
    return result


def _entry(n: int) -> Any:
    from backend.app.worklist.store import NewStudy, utcnow

    sent = submission(n, FRACTURE)
    return NewStudy(
        source="pacs",
        study_uid=sent["study_uid"],
        series_uid=sent["series_uid"],
        arrived_at=utcnow(),
        analysed_at=utcnow(),
        verdict=FRACTURE,
        score=0.9,
        threshold=0.5,
        operating_point="sensitive",
        top_slices=[],
        model_name="cspine",
        model_version="2026.12.1",
    )


def test_the_signature_is_the_hmac_of_the_raw_body() -> None:
    raw = body_bytes({"b": 1, "a": "é"})
    assert raw == b'{"a":"\\u00e9","b":1}'
    assert signature(b"key", raw) == ("sha256=" + hmac.new(b"key", raw, hashlib.sha256).hexdigest())


def test_backoff_doubles_up_to_its_maximum() -> None:
    assert [backoff_s(n, 2.0, 10.0) for n in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_webhook_without_a_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET"):
        Settings(webhook_url="https://hooks.example/triage")
    with pytest.raises(ValidationError, match="not both"):
        Settings.model_validate(
            {"webhook_url": "https://h.example", "webhook_secret": "a", "webhook_secret_file": "b"}
        )
    key = tmp_path / "key"
    key.write_text("from-a-file\n")
    settings = Settings(webhook_url="https://hooks.example/triage", webhook_secret_file=key)
    assert settings.webhook_key == b"from-a-file"
    off = Settings.model_validate({"webhook_url": "", "webhook_secret": ""})
    assert off.webhook_url is None  # empty: off (as compose passes an unset variable)
