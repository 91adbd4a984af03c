"""The PACS pipeline phase of `make test-docker` (scripts/test_docker.sh), from the host's
venv: stores CT series into the compose Orthanc over STOW-RS, optionally kills the worker
container that took the first one, and waits until every study has exactly one SR in the
PACS (QIDO-RS) and its series one entry in GET /worklist through the proxy.

    .venv/bin/python scripts/docker_pipeline_check.py --pacs URL --api URL --out uids.txt \
        [--series 2] [--kill-worker CONTAINER_ID ...] [--timeout 240]

The series: 4 scanner-like CT slices each from the shared data (testing/ct_series.py;
built in memory, never kept) when DATA has them, else pydicom's CT_small.dcm under new UIDs
(one slice: the API answers "CT outside the model's range", an SR all the same). Prints one
line per step with its time since the store; exits non-zero with the reason. Writes the
series UIDs, one a line, to --out (the shell checks them in PostgreSQL).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testing.ct_series import base_slices, ct_series  # noqa: E402

SLICES = 4


def say(message: str) -> None:
    print(f"[test-docker] {message}", flush=True)


def build_series(data: Path, count: int) -> tuple[list[list[Dataset]], str]:
    """``count`` one-series studies, and what they were made from."""
    try:
        sources = base_slices(data, "normal", SLICES)
    except (LookupError, OSError):
        sources = []
    if sources:
        studies = [
            ct_series(sources, patient_id=f"PIPE{i}", description=f"pipeline test {i}")
            for i in range(count)
        ]
        return studies, f"{SLICES} CT slices each from {data}"
    studies = []
    for _ in range(count):
        ds = dcmread(str(get_testdata_file("CT_small.dcm")))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        studies.append([ds])
    return studies, "pydicom's CT_small.dcm (no slices under DATA)"


def wait_for(what: str, check: Callable[[], bool], deadline: float) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(1)


def _logs(container: str) -> str:
    result = subprocess.run(
        ["docker", "logs", container], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


def kill_the_taker(containers: list[str], deadline: float) -> str:
    """SIGKILL the first worker container whose log shows a series taken."""
    while time.monotonic() < deadline:
        for cid in containers:
            if ": taken (attempt" in _logs(cid):
                subprocess.run(["docker", "kill", cid], capture_output=True, check=True)
                return cid
        time.sleep(0.3)
    raise SystemExit("no worker took a series")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pacs", required=True, help="Orthanc's URL (http://host:port)")
    parser.add_argument("--user", default="worker")
    parser.add_argument("--password", default="change-me")
    parser.add_argument("--api", required=True, help="the proxy's URL")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cervical-ct")
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--kill-worker", nargs="*", default=[], metavar="CONTAINER")
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    client = DICOMwebClient(
        f"{args.pacs.rstrip('/')}/dicom-web",
        session=create_session_from_user_pass(args.user, args.password),
    )
    studies, made_of = build_series(args.data, args.series)
    series_uids = [str(study[0].SeriesInstanceUID) for study in studies]
    study_uids = [str(study[0].StudyInstanceUID) for study in studies]
    args.out.write_text("".join(f"{uid}\n" for uid in series_uids))
    start = time.monotonic()
    deadline = start + args.timeout
    for study in studies:
        client.store_instances(study)
    say(f"pipeline: {len(studies)} series stored over STOW-RS ({made_of})")

    killed = ""
    if args.kill_worker:
        killed = kill_the_taker(args.kill_worker, deadline)
        say(f"pipeline: worker {killed[:12]} killed (SIGKILL) after it took a series, "
            f"{time.monotonic() - start:.1f} s after the store")  # fmt: skip

    def srs(study_uid: str) -> list[dict[str, Any]]:
        """The SR instances of a study, over every SR series in it."""
        found: list[dict[str, Any]] = []
        for series in client.search_for_series(
            study_instance_uid=study_uid, search_filters={"Modality": "SR"}
        ):
            found += client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=str(series["0020000E"]["Value"][0]),
            )
        return found

    wait_for("an SR in every study", lambda: all(srs(uid) for uid in study_uids), deadline)
    say(f"pipeline: an SR in each of the {len(studies)} studies after "
        f"{time.monotonic() - start:.1f} s")  # fmt: skip

    def listed() -> dict[str, int]:
        response = requests.get(f"{args.api}/worklist", params={"limit": 200}, timeout=30)
        response.raise_for_status()
        counts = dict.fromkeys(series_uids, 0)
        for item in response.json()["items"]:
            if item.get("series_uid") in counts:
                counts[item["series_uid"]] += 1
        return counts

    wait_for("every series in GET /worklist", lambda: all(listed().values()), deadline)
    say(f"pipeline: every series in GET /worklist through the proxy after "
        f"{time.monotonic() - start:.1f} s")  # fmt: skip

    # Settled: nothing more arrives (a job delivered again stores the same UIDs, lists once).
    time.sleep(5)
    sr_counts = {uid: len(srs(uid)) for uid in study_uids}
    if any(count != 1 for count in sr_counts.values()):
        raise SystemExit(f"not exactly one SR per study: {sr_counts}")
    counts = listed()
    if any(count != 1 for count in counts.values()):
        raise SystemExit(f"not exactly one worklist entry per series: {counts}")
    say("pipeline: exactly one SR per study and one worklist entry per series, 5 s later too")
    if args.kill_worker:
        again = sum(
            _logs(cid).count("delivered again") for cid in args.kill_worker if cid != killed
        )
        note = "" if again else " (the killed worker had finished its series already)"
        say(f"pipeline: {again} series delivered again to another worker after the kill{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
