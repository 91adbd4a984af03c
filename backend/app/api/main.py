"""Every API router: each module of ``api/routes/`` that has a ``router`` is found and
included (``ROUTERS``), so a new route is one file there whose endpoints declare their policy
(``core/policy.py``). The docs pages list the routes by tag, in ``TAGS`` order."""

import importlib
import pkgutil
from types import ModuleType

from fastapi import APIRouter

from backend.app.api import routes

# The docs pages' sections (FastAPI's ``openapi_tags``), in the order a user reads them.
TAGS = [
    {"name": "predict", "description": "Slices and studies in, verdicts out."},
    {"name": "report", "description": "The printable PDF report of a study."},
    {
        "name": "worklist",
        "description": "Analysed studies, flagged first; the radiologists' reads and the "
        "live performance against them.",
    },
    {"name": "model", "description": "The model being served and its card."},
    {"name": "ops", "description": "Health, readiness and metrics."},
]


def route_modules(package: ModuleType = routes) -> tuple[ModuleType, ...]:
    """The modules of ``package`` with a ``router``, by name."""
    found = (
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
    )
    return tuple(module for module in found if hasattr(module, "router"))


ROUTERS = route_modules()

api_router = APIRouter()
for _module in ROUTERS:
    api_router.include_router(_module.router)
