"""All API routers in one place; the app includes this before mounting the web app."""

from fastapi import APIRouter

from backend.app.api.routes import health, model, predict, report, study

api_router = APIRouter()
api_router.include_router(predict.router)
api_router.include_router(study.router)
api_router.include_router(health.router)
api_router.include_router(model.router)
api_router.include_router(report.router)
