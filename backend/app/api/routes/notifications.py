"""The webhook's dead letters (``docs/worklist.md``, "Notification"): ``GET
/notifications/dead-letters`` lists the notifications every attempt failed to deliver, ``POST
/notifications/dead-letters/{id}/replay`` sends one again (an ``operator`` token when tokens
are configured). The delivery itself is ``services/notification.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from backend.app.api.deps import WorklistDep
from backend.app.api.responses import error_response
from backend.app.core.config import OPERATOR_ROLE
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import MAX_ID, DeadLetterOut, ReplayedOut

router = APIRouter(tags=["worklist"])

OPERATOR_ONLY = RoutePolicy(auth=True, role=OPERATOR_ROLE)
FORBIDDEN = error_response(
    "Tokens are configured and this one lacks the `operator` role.",
    "this needs a token with the operator role",
)
LetterId = Annotated[int, Path(ge=1, le=MAX_ID, description="The dead letter's id.")]


@router.get(
    "/notifications/dead-letters",
    response_model=list[DeadLetterOut],
    responses={403: FORBIDDEN},
    summary="Webhook notifications never delivered",
)
@declare(OPERATOR_ONLY)
def dead_letters(store: WorklistDep) -> list[DeadLetterOut]:
    """Every dead letter, oldest first: what was sent, where, how often, and the last
    error."""
    return [
        DeadLetterOut.model_validate(letter, from_attributes=True)
        for letter in store.dead_letters()
    ]


@router.post(
    "/notifications/dead-letters/{letter_id}/replay",
    response_model=ReplayedOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: FORBIDDEN,
        404: error_response("No dead letter has this id.", "no dead letter 7"),
    },
    summary="Send a dead letter again",
)
@declare(OPERATOR_ONLY)
def replay_dead_letter(letter_id: LetterId, store: WorklistDep) -> ReplayedOut:
    """The notification is due again now, its attempts counted from zero, under the same
    delivery id; the dead letter is gone (a new one appears should every attempt fail
    again)."""
    letter = store.replay_dead_letter(letter_id)
    if letter is None:
        raise HTTPException(status_code=404, detail=f"no dead letter {letter_id}")
    return ReplayedOut(study_id=letter.study_id, delivery_id=letter.delivery_id)
