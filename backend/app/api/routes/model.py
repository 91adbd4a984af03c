"""The model card of the loaded bundle."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.api.deps import CoreDep
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import ErrorResponse
from ml_model.card import ModelCard

router = APIRouter(tags=["model"])


@router.get(
    "/model",
    response_model=ModelCard,
    response_model_exclude_unset=True,
    responses={503: {"model": ErrorResponse, "description": "Model not loaded yet."}},
    summary="Model card: metrics, thresholds, intended use, limitations",
)
@declare(RoutePolicy(auth=True))
async def model_card(core: CoreDep) -> ModelCard:
    """The loaded bundle's `model_card.json`, as validated at start-up
    (`ml_model.card.ModelCard`; sections it does not type are passed through)."""
    return core.bundle.card
