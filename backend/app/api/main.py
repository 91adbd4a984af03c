"""Every API router, in one list (``ROUTERS``: the order of the OpenAPI schema); the app
includes them before mounting the web app. A new route is a module in ``api/routes/`` with
a ``router`` whose endpoints declare their policy (``core/policy.py``), listed here."""

from fastapi import APIRouter

from backend.app.api.routes import docs, health, metrics, model, predict, report, study

ROUTERS = (metrics, predict, study, health, model, report, docs)

api_router = APIRouter()
for _module in ROUTERS:
    api_router.include_router(_module.router)
