"""POST /report: the same upload as /predict/study (a series, a zip, or one slice) -> a PDF.

The answer is ``/predict/study``'s own (:func:`backend.app.api.studies.analyse_study` with
``explain`` so the top slices come with their heatmaps), rendered by
:mod:`backend.app.report_pdf`; errors are that route's too (400 not one series, 413 too
large, 503 not ready).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import Response

from backend.app.api.deps import CoreDep, MetricsDep, SettingsDep
from backend.app.api.studies import STUDY_FILES_DESCRIPTION, analyse_study
from backend.app.core.policy import RoutePolicy, Upload, declare
from backend.app.schemas import ErrorResponse, OperatingPoint

REPORT_PATH = "/report"
REPORT_FILENAME = "fracture-triage-report.pdf"

router = APIRouter(tags=["report"])


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


@router.post(
    REPORT_PATH,
    response_class=Response,
    responses={
        200: {
            "content": {"application/pdf": {}},
            "description": "The report: verdict and score (a refused slice or series: no "
            'score; "CT outside the model\'s range" with its reason in plain words and what '
            "to send instead), operating point and threshold, the top slices with Grad-CAM "
            "heatmaps, model name and version, intended use and known limits; one slice is "
            "reported as a slice, "
            "a series as a study. The exam's study/series UID, accession number and study date "
            "when the DICOM holds them (REPORT_IDENTIFIERS=false: none). Never the patient's "
            "name, ID or birth date, never a file name.",
        },
        400: _error("Not one orderable series (as for /predict/study)."),
        413: _error("Too many slices or too large (as for /predict/study)."),
        503: _error("The model is not loaded yet, or the model server is unreachable."),
    },
    summary="A PDF report of a series (or one slice) to take away",
)
@declare(RoutePolicy(auth=True, upload=Upload.study, study_slot=True))
def report_route(
    files: Annotated[list[UploadFile], File(description=STUDY_FILES_DESCRIPTION)],
    core: CoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: Annotated[
        OperatingPoint,
        Query(description="`sensitive` (default) or `specific`: which study threshold."),
    ] = OperatingPoint.sensitive,
) -> Response:
    """Analyses the upload exactly as `POST /predict/study?explain=true` does and returns the
    answer as `application/pdf` (an attachment). Decision support — not a diagnosis.

    One file is one slice (or one zip): its name needs no slice number."""
    if len(files) == 1:
        # Series order needs a number in a PNG/JPEG name; one slice has no order. The report
        # shows no file name, so this one is renamed rather than refused.
        files[0].filename = "slice (1)" + PurePosixPath(files[0].filename or "").suffix
    study, exam = analyse_study(
        files, core, settings, metrics, operating_point, True,
        identifiers=settings.report_identifiers,
    )  # fmt: skip
    # fpdf2 is imported on the first report, not at start-up (~0.5 s of the cold start).
    from backend.app.report_pdf import render_report

    pdf = render_report(study, core.bundle.card.model_dump(), exam=exam, window=core.bundle.window)
    return Response(
        content=pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{REPORT_FILENAME}"',
            "Cache-Control": "no-store",
        },
    )
