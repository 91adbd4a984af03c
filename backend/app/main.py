"""The FastAPI app: ``uvicorn backend.app.main:app`` (with the flags of the Makefile's
``serve``: header and body timeouts, a graceful-shutdown bound).

``create_app`` builds an app from :class:`Settings`. The lifespan reads the bundle once
(``Bundle.load``: card, gate, study head; an invalid bundle stops the server before its port
opens), then builds the model from it in the background (a worker thread) while the port is
already open: ``/health`` answers 200 and ``/ready`` 503 with the stage until one warm-up
inference has run. A model that fails to load stops the process.
``LOAD_MODEL_IN_BACKGROUND=false`` (tests) waits instead. Before either, the lifespan opens
the worklist's database and upgrades its schema to head (``services/worklist.py``), and with
WEBHOOK_URL runs the notifier of flagged studies beside the server
(``services/notification.py``).
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.formparsers import MultiPartParser

import ml_model
from backend.app.api.deps import loaded_card
from backend.app.api.errors import register_error_handlers
from backend.app.api.main import TAGS, api_router
from backend.app.core.admission import MemoryBudget, StudySlots
from backend.app.core.auth import BearerAuthMiddleware
from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME, configure_logging
from backend.app.core.memory import limit_malloc_arenas
from backend.app.core.metrics import instrument
from backend.app.core.middleware import (
    AccessLogMiddleware,
    AdmissionMiddleware,
    BodyLimit,
    BodySizeLimitMiddleware,
    RequestGuardMiddleware,
)
from backend.app.core.policy import RoutePolicies, Upload
from backend.app.core.security import SecurityHeadersMiddleware
from backend.app.services.admission import decode_guard
from backend.app.services.inference import configure, create_core, load_bundle, warm_up
from backend.app.services.notification import notifier
from backend.app.services.pacs_images import PacsImages
from backend.app.services.worklist import monitoring_samples, open_worklist
from ml_model.imaging.errors import short_message
from ml_model.inference.bundle import Bundle
from ml_model.inference.core import InferenceCore

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


@dataclass
class Loading:
    """Where start-up stands, for ``/ready``'s 503 reason."""

    started: float
    stage: str = "loading the model bundle"
    error: str | None = None

    def reason(self) -> str:
        if self.error is not None:
            return f"the model could not be loaded: {self.error}"
        return f"{self.stage} ({time.monotonic() - self.started:.0f} s so far)"


async def _load(
    app: FastAPI, settings: Settings, shared: InferenceCore | None, bundle: Bundle | None = None
) -> InferenceCore:
    """Build (or configure a shared) core, warm it up, mark the app ready. ``bundle``: as
    the start-up check loaded it."""
    loading: Loading = app.state.loading
    if shared is None:
        core = await anyio.to_thread.run_sync(create_core, settings, bundle)
    else:
        core = configure(shared, settings)  # a shared core, with this app's settings
    core = core.with_decode_guard(decode_guard)  # every decode within the memory budget
    loading.stage = "warming up the model"
    await anyio.to_thread.run_sync(warm_up, core, settings)
    # Everything loaded so far lives as long as the process: out of the garbage collector's
    # full passes, which otherwise walk it all (holding the GIL, so stalling the event loop
    # and its probes) while uploads allocate.
    gc.freeze()
    app.state.inference = core
    app.state.ready = True
    app.state.metrics.model_ready.set(1)
    logger.info(
        "model ready",
        extra={
            "model_name": core.bundle.card.name,
            "model_version": core.bundle.card.version,
            "inference_backend": settings.inference_backend,
            "startup_s": round(time.monotonic() - loading.started, 2),
        },
    )
    return core


async def _load_in_background(app: FastAPI, settings: Settings, bundle: Bundle) -> None:
    """The port is already open (``/health`` 200, ``/ready`` 503 with the stage). A bundle
    that cannot be loaded stops the process: logged (naming the file), then SIGTERM to
    ourselves, so the server shuts down and the process ends non-zero."""
    try:
        await _load(app, settings, None, bundle)
    except Exception as exc:
        app.state.loading.error = short_message(exc, 1000)
        logger.critical(
            "the model could not be loaded; stopping",
            extra={"error": str(exc), "model_dir": str(settings.model_dir)},
        )
        signal.raise_signal(signal.SIGTERM)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # The worklist's database, schema at head before the port opens (a nested lifespan
    # reuses the one already open; whoever opened it closes it).
    owns_worklist = app.state.worklist is None
    if owns_worklist:
        app.state.worklist = await anyio.to_thread.run_sync(open_worklist, settings)
    try:
        # The model first: a refused bundle stops the start as itself, before any task runs.
        async with _serving(app, settings), anyio.create_task_group() as tasks:
            # The webhook's deliveries (WEBHOOK_URL), by whoever opened the store.
            sender = notifier(app.state.worklist, settings, app.state.metrics)
            if owns_worklist and sender is not None:
                tasks.start_soon(sender.run)
            yield
            tasks.cancel_scope.cancel()
    finally:
        if owns_worklist and app.state.worklist is not None:
            app.state.worklist.close()
            app.state.worklist = None


@asynccontextmanager
async def _serving(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """The model's part of the lifespan: load (or reuse) it, serve, close it."""
    shared: InferenceCore | None = app.state.inference
    owned = shared is None  # built here, so closed here (a core passed in is shared)
    app.state.loading = Loading(time.monotonic())
    bundle = None
    if owned:
        # An invalid card or gate stops the server at once, before its port opens: the
        # bundle is read here, once (Bundle.load), and the model built from it.
        bundle = await anyio.to_thread.run_sync(load_bundle, settings)
    # Lifespans can nest (a test harness entering an app that is already running): only
    # the last one out marks the app not ready.
    app.state.lifespans = getattr(app.state, "lifespans", 0) + 1
    async with anyio.create_task_group() as tasks:
        if bundle is not None and settings.load_model_in_background:
            tasks.start_soon(_load_in_background, app, settings, bundle)
        else:
            await _load(app, settings, shared, bundle)
        try:
            yield
        finally:
            app.state.lifespans -= 1
            if app.state.lifespans == 0:
                app.state.ready = False
                app.state.metrics.model_ready.set(0)
    # (the task group waits for a load still running: a model thread cannot be cancelled)
    core: InferenceCore | None = app.state.inference
    if owned and core is not None:
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
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # served offline by api/routes/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.inference = inference
    app.state.ready = False
    app.state.loading = Loading(time.monotonic())
    app.state.budget = MemoryBudget(settings.memory_budget_bytes)
    app.state.study_slots = StudySlots(settings.max_concurrent_studies)
    app.state.worklist = None  # opened by the lifespan
    app.state.pacs_images = PacsImages.from_settings(settings)

    _add_routes(app, settings)
    # Every route's declared policy (core/policy.py), by path, for the middleware below.
    app.state.policies = RoutePolicies(app.routes)
    _add_middleware(app, settings, app.state.policies)
    register_error_handlers(app)
    return app


def _add_routes(app: FastAPI, settings: Settings) -> None:
    """The API's routers (``api/main.py``), then the built web app, same-origin with the
    API. Frontend routes have the lowest priority: every API route always wins."""
    app.include_router(api_router)
    dist = settings.frontend_dist
    if dist.is_dir():
        has_index = (dist / "index.html").is_file()
        app.frontend("/", directory=dist, fallback="index.html" if has_index else None)


def _body_limits(settings: Settings) -> dict[Upload, BodyLimit]:
    """The body limit of each kind of upload a route's policy names (413 past it)."""
    return {
        Upload.one_file: BodyLimit(
            settings.max_single_request_bytes,
            f"the upload is larger than the limit of {settings.max_upload_mb:g} MiB per file",
        ),
        Upload.batch: BodyLimit(
            settings.max_batch_bytes,
            f"the batch upload is larger than the limit of {settings.max_batch_mb:g} MiB",
        ),
        Upload.study: BodyLimit(
            settings.max_study_bytes,
            f"the study upload is larger than the limit of {settings.max_study_mb:g} MiB",
        ),
    }


def _add_middleware(app: FastAPI, settings: Settings, policies: RoutePolicies) -> None:
    """The middleware stack; what it does to a request follows the request's route policy.

    Added innermost first: security headers -> CORS -> request guard -> access log ->
    metrics -> bearer auth (+ audit) -> body limit -> admission control -> routes."""
    limits = _body_limits(settings)
    app.add_middleware(
        AdmissionMiddleware,
        budget=app.state.budget,
        slots=app.state.study_slots,
        request_limit=settings.max_request_memory_bytes,
        body_timeout_s=settings.body_timeout_s,
        is_study=lambda path: policies(path).study_slot,
        on_refused=lambda reason: app.state.metrics.record_refusal(reason),
    )
    app.add_middleware(
        BodySizeLimitMiddleware, limit_for_path=lambda path: limits[policies(path).upload]
    )
    app.add_middleware(
        BearerAuthMiddleware,
        digests=settings.token_digests,
        guarded=lambda path: policies(path).auth,
        roles=settings.token_roles,
        required_role=lambda path: policies(path).role,
    )
    app.state.metrics = instrument(app)
    app.state.metrics.watch_admission(app.state.budget, app.state.study_slots)
    app.state.metrics.watch_monitoring(
        lambda: monitoring_samples(app.state.worklist, loaded_card(app), settings)
    )
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestGuardMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    # Outermost: every response, CORS's too.
    app.add_middleware(
        SecurityHeadersMiddleware, is_docs_page=lambda path: policies(path).docs_page
    )


app = create_app()
