"""The FastAPI app: ``uvicorn backend.app.main:app``.

``create_app`` builds an app from :class:`Settings`; the lifespan loads the model
once (in a worker thread), runs one warm-up inference, then marks the app ready.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.formparsers import MultiPartParser

import ml_model
from backend.app.api.errors import register_error_handlers
from backend.app.api.main import api_router
from backend.app.api.routes import docs
from backend.app.api.routes.report import REPORT_PATH
from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME, configure_logging
from backend.app.core.memory import limit_malloc_arenas
from backend.app.core.metrics import instrument
from backend.app.core.middleware import AccessLogMiddleware, BodyLimit, BodySizeLimitMiddleware
from backend.app.core.security import SecurityHeadersMiddleware
from backend.app.services.inference import configure, create_core, warm_up
from ml_model.inference.core import InferenceCore

BATCH_PATH = "/predict/batch"
STUDY_PATH = "/predict/study"

logger = logging.getLogger(LOGGER_NAME)


def _keep_uploads_in_memory(settings: Settings) -> None:
    """Never let Starlette spool an uploaded part to a temporary file on disk.

    ``UploadFile`` is a ``SpooledTemporaryFile`` that rolls over to disk past
    ``MultiPartParser.spool_max_size`` (1 MiB by default). The body-size middleware
    caps every request below this value, so no part can ever reach the rollover.
    The attribute is process-wide: only ever raise it.
    """
    needed = (
        max(settings.max_batch_bytes, settings.max_single_request_bytes, settings.max_study_bytes)
        + 1
    )
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, needed)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    started = anyio.current_time()
    core: InferenceCore | None = app.state.inference
    owned = core is None  # built here, so closed here (a core passed in is shared)
    if core is None:
        core = await anyio.to_thread.run_sync(create_core, settings)
    else:
        core = configure(core, settings)  # a shared core, with this app's settings
    await anyio.to_thread.run_sync(warm_up, core, settings)
    app.state.inference = core
    app.state.ready = True
    app.state.metrics.model_ready.set(1)
    logger.info(
        "model ready",
        extra={
            "model_name": core.name,
            "model_version": core.version,
            "inference_backend": settings.inference_backend,
            "startup_s": round(anyio.current_time() - started, 2),
        },
    )
    # Lifespans can nest (a test harness entering an app that is already running): only
    # the last one out marks the app not ready.
    app.state.lifespans = getattr(app.state, "lifespans", 0) + 1
    try:
        yield
    finally:
        app.state.lifespans -= 1
        if app.state.lifespans == 0:
            app.state.ready = False
            app.state.metrics.model_ready.set(0)
        if owned:
            app.state.inference = None  # a restarted lifespan builds a fresh one
            await anyio.to_thread.run_sync(core.close)  # drains the micro-batcher


def create_app(settings: Settings | None = None, inference: InferenceCore | None = None) -> FastAPI:
    """Build the app. ``inference`` reuses an already loaded model (tests); by default
    the lifespan loads the one ``settings`` point at."""
    settings = settings or Settings()
    configure_logging(settings.log_level)
    limit_malloc_arenas()  # before the threadpool starts: RSS stays flat under load
    _keep_uploads_in_memory(settings)

    app = FastAPI(
        title="Cervical-spine CT fracture triage API",
        version=ml_model.__version__,
        description=(
            "Classifies axial cervical-spine CT slices as `Potentially Fracture` or `Normal` "
            "to prioritise reading. A triage aid, not a diagnosis."
        ),
        lifespan=lifespan,
        docs_url=None,  # served offline by api/routes/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.inference = inference
    app.state.ready = False

    batch_limit = BodyLimit(
        settings.max_batch_bytes,
        f"the batch upload is larger than the limit of {settings.max_batch_mb:g} MiB",
    )
    single_limit = BodyLimit(
        settings.max_single_request_bytes,
        f"the upload is larger than the limit of {settings.max_upload_mb:g} MiB per file",
    )

    study_limit = BodyLimit(
        settings.max_study_bytes,
        f"the study upload is larger than the limit of {settings.max_study_mb:g} MiB",
    )

    def body_limit(path: str) -> BodyLimit:
        if path in (STUDY_PATH, REPORT_PATH):
            return study_limit
        return batch_limit if path == BATCH_PATH else single_limit

    # Added innermost first: security headers -> CORS -> access log -> metrics -> body limit
    # -> routes.
    app.add_middleware(BodySizeLimitMiddleware, limit_for_path=body_limit)
    app.state.metrics = instrument(app)
    app.add_middleware(AccessLogMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: every response, CORS's too

    register_error_handlers(app)
    app.include_router(api_router)
    app.include_router(docs.router)
    # The built web app, same-origin with the API. Frontend routes have the lowest
    # priority: every API route above always wins.
    dist = settings.frontend_dist
    if dist.is_dir():
        has_index = (dist / "index.html").is_file()
        app.frontend("/", directory=dist, fallback="index.html" if has_index else None)
    return app


app = create_app()
