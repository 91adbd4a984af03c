"""Series the PACS pipeline gave up on: ``POST /pipeline/failures`` (the PACS worker, or the
broker's poller, when a series fails for good: identity, permanent, error) and ``GET
/pipeline/failures``, shown beside the worklist until the series is analysed after all (its
``POST /worklist`` clears it). Counted in ``GET /monitoring`` and on ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, status

from backend.app.api.deps import WorklistDep
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import PipelineFailureIn, PipelineFailureOut

router = APIRouter(tags=["worklist"])


def _out(row: object) -> PipelineFailureOut:
    return PipelineFailureOut.model_validate(row, from_attributes=True)


@router.post(
    "/pipeline/failures",
    response_model=PipelineFailureOut,
    status_code=status.HTTP_201_CREATED,
    summary="Report a series the PACS pipeline gave up on",
)
@declare(RoutePolicy(auth=True))
def report_failure(failure: PipelineFailureIn, store: WorklistDep) -> PipelineFailureOut:
    """The same series again replaces its earlier report."""
    return _out(
        store.record_failure(
            failure.study_uid,
            failure.series_uid,
            failure.failure_class,
            failure.reason,
            failure.failed_at,
        )
    )


@router.get(
    "/pipeline/failures",
    response_model=list[PipelineFailureOut],
    summary="Series the PACS pipeline gave up on, the latest first",
)
@declare(RoutePolicy(auth=True))
def list_failures(store: WorklistDep) -> list[PipelineFailureOut]:
    """Each with its failure class and reason; an operator requeues them with `python -m
    pacs requeue` (docs/pacs.md) once the cause is mended."""
    return [_out(row) for row in store.failures()]
