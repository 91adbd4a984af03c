"""The model card of the loaded bundle."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.api.deps import InferenceDep
from backend.app.schemas import ErrorResponse, ModelCard

router = APIRouter(tags=["model"])


@router.get(
    "/model",
    response_model=ModelCard,
    response_model_exclude_unset=True,
    responses={503: {"model": ErrorResponse, "description": "Model not loaded yet."}},
    summary="Model card: metrics, thresholds, intended use, limitations",
)
async def model_card(service: InferenceDep) -> ModelCard:
    """The loaded bundle's `model_card.json`, unchanged."""
    return ModelCard.model_validate(service.card)
