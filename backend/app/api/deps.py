"""Dependencies as ``Annotated`` aliases: routes declare what they need, app state provides it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.applications import Starlette

from backend.app.core.auth import verified_token_id
from backend.app.core.config import Settings
from backend.app.core.metrics import AppMetrics
from backend.app.services.pacs_images import PacsImages
from backend.app.worklist.store import WorklistStore
from ml_model.card import ModelCard
from ml_model.inference.core import InferenceCore

NOT_READY_DETAIL = "the model is not loaded yet; retry when GET /ready answers 200"
NOT_READY_RETRY_AFTER_S = 2


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def not_ready_detail(request: Request) -> str:
    """Why the model cannot answer yet: the start-up stage (or the load's failure)."""
    loading = getattr(request.app.state, "loading", None)
    if loading is None or not getattr(request.app.state, "lifespans", 0):
        return NOT_READY_DETAIL  # no lifespan running (not started, or shut down)
    return f"the model is not loaded yet: {loading.reason()}; retry when GET /ready answers 200"


async def get_core(request: Request) -> InferenceCore:
    """The loaded, warmed-up inference core; 503 (with the reason and ``Retry-After``) until
    the lifespan has finished loading it."""
    core: InferenceCore | None = request.app.state.inference
    if core is None or not request.app.state.ready:
        raise HTTPException(
            status_code=503,
            detail=not_ready_detail(request),
            headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)},
        )
    return core


def loaded_card(app: Starlette) -> ModelCard | None:
    """The loaded, warmed-up bundle's card; None while the model loads."""
    core: InferenceCore | None = app.state.inference
    return core.bundle.card if core is not None and app.state.ready else None


async def get_loaded_card(request: Request) -> ModelCard | None:
    return loaded_card(request.app)


async def get_metrics(request: Request) -> AppMetrics:
    metrics: AppMetrics = request.app.state.metrics
    return metrics


async def get_worklist(request: Request) -> WorklistStore:
    """The worklist's store, opened by the lifespan; 503 outside one."""
    store: WorklistStore | None = getattr(request.app.state, "worklist", None)
    if store is None:
        raise HTTPException(status_code=503, detail="the worklist is not open")
    return store


async def get_pacs_images(request: Request) -> PacsImages | None:
    """The worklist viewer's DICOMweb reader (None: WORKLIST_PACS_URL is unset)."""
    images: PacsImages | None = getattr(request.app.state, "pacs_images", None)
    return images


async def get_token_id(request: Request) -> str | None:
    """Who asks: the accepted bearer token's id (None when the server runs without tokens)."""
    return verified_token_id(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
CoreDep = Annotated[InferenceCore, Depends(get_core)]
MetricsDep = Annotated[AppMetrics, Depends(get_metrics)]
WorklistDep = Annotated[WorklistStore, Depends(get_worklist)]
LoadedCardDep = Annotated[ModelCard | None, Depends(get_loaded_card)]
TokenIdDep = Annotated[str | None, Depends(get_token_id)]
PacsImagesDep = Annotated[PacsImages | None, Depends(get_pacs_images)]
