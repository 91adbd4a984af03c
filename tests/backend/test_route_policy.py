"""Route policy (issue 24): every route declares its own, and the middleware and the proxy
read it (backend/app/core/policy.py)."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

import backend.app.api.routes as routes_package
from backend.app.api.main import ROUTERS, api_router, route_modules
from backend.app.core.policy import (
    NO_ROUTE,
    MissingPolicyError,
    RoutePolicies,
    RoutePolicy,
    Upload,
    declare,
    policy_of,
)
from backend.app.main import app

GEN_PROXY = Path(__file__).resolve().parents[2] / "scripts" / "gen_proxy_conf.py"


def _load_gen_proxy(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(GEN_PROXY.parent))  # as when run as a script
    spec = importlib.util.spec_from_file_location("gen_proxy_conf", GEN_PROXY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_route_of_the_app_declares_a_policy() -> None:
    """Walks the served app's routes: an API route without @declare(RoutePolicy(...)) fails
    here (and stops create_app). The only other routes are FastAPI's schema."""
    api_paths, others = set(), set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIRoute):
            assert policy_of(context.endpoint) is not None, context.path
            api_paths.add(context.path)
        else:
            others.add(context.path)
    assert others == {"/openapi.json"}
    assert set(app.state.policies.paths()) == api_paths


@pytest.mark.parametrize(
    ("method", "path", "policy", "match"),
    [
        ("POST", "/forgotten", None, r"\['POST'\] /forgotten declares no policy"),
        ("HEAD", "/declared", RoutePolicy(auth=False), "different policies"),
    ],
    ids=["none", "two on one path"],
)
def test_a_route_without_one_policy_is_refused(
    method: str, path: str, policy: RoutePolicy | None, match: str
) -> None:
    """A route that declares no policy, or a GET and HEAD of one path that declare different
    ones, stop the table from being built; included routers are walked too."""
    router = APIRouter()

    @router.get("/declared")
    @declare(RoutePolicy(auth=True))
    def declared() -> None: ...

    def other() -> None: ...

    endpoint = other if policy is None else declare(policy)(other)
    router.add_api_route(path, endpoint, methods=[method])
    with pytest.raises(MissingPolicyError, match=match):
        RoutePolicies(router.routes)
    bare = FastAPI()
    bare.include_router(router)
    with pytest.raises(MissingPolicyError, match=match):
        RoutePolicies(bare.routes)


def test_a_new_route_is_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module dropped into api/routes/ with a router is found (no list to edit), and the
    app serves every router found; a module without a router is left alone."""
    package = tmp_path / "extra_routes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "series.py").write_text(
        "from fastapi import APIRouter\n"
        "from backend.app.core.policy import RoutePolicy, declare\n"
        "router = APIRouter()\n"
        "@router.get('/series-probe')\n"
        "@declare(RoutePolicy(auth=True))\n"
        "def probe() -> dict[str, str]:\n"
        "    return {'ok': 'yes'}\n"
    )
    (package / "helpers.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = route_modules(importlib.import_module("extra_routes"))
    assert [module.__name__ for module in found] == ["extra_routes.series"]
    assert policy_of(found[0].probe) == RoutePolicy(auth=True)

    modules = [
        importlib.import_module(f"{routes_package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(routes_package.__path__)
    ]
    with_router = {module.__name__ for module in modules if hasattr(module, "router")}
    assert with_router == {module.__name__ for module in ROUTERS}
    served = {context.path for context in iter_route_contexts(app.routes)}
    for module in ROUTERS:
        paths = {context.path for context in iter_route_contexts(module.router.routes)}
        assert paths and paths <= served, module.__name__


def test_what_the_routes_declare() -> None:
    """The policies as served: who needs a token, which uploads are large, which take a
    study slot, which pages get the docs CSP."""
    policies = app.state.policies.paths()
    assert {path for path, policy in policies.items() if policy.auth} == {
        "/predict",
        "/predict/batch",
        "/predict/study",
        "/report",
        "/model",
        "/metrics",
        "/worklist",
        "/worklist/{study_id}",
        "/worklist/{study_id}/top-slices/{rank}",
        "/worklist/{study_id}/review",
        "/monitoring",
        "/notifications/dead-letters",
        "/notifications/dead-letters/{letter_id}/replay",
        "/pipeline/failures",
    }
    assert {path: p.role for path, p in policies.items() if p.role} == {
        "/worklist/{study_id}/review": "reader",
        "/notifications/dead-letters": "operator",
        "/notifications/dead-letters/{letter_id}/replay": "operator",
    }
    larger = {path: p.upload for path, p in policies.items() if p.upload is not Upload.one_file}
    assert larger == {
        "/predict/batch": Upload.batch,
        "/predict/study": Upload.study,
        "/report": Upload.study,
    }
    assert {path for path, policy in policies.items() if policy.study_slot} == {
        "/predict/study",
        "/report",
    }
    assert {path for path, policy in policies.items() if policy.docs_page} == {"/docs", "/redoc"}


def test_lookup_by_request_path() -> None:
    policies: RoutePolicies = app.state.policies
    assert policies("/report") == RoutePolicy(auth=True, upload=Upload.study, study_slot=True)
    assert policies("/docs/assets/swagger-ui.css") == RoutePolicy(auth=False)  # templated
    assert policies("/docs/assets/a/b") is NO_ROUTE  # the template takes one segment
    assert policies("/assets/app.js") is NO_ROUTE  # the web app's files
    assert policies("/report/") is NO_ROUTE
    assert RoutePolicy(auth=False, upload=Upload.one_file) == NO_ROUTE


def test_the_proxy_template_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_PROXY), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_a_new_route_reaches_the_proxy_from_its_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One more router with a study upload: its location appears (streamed, study limit);
    a stale template fails --check."""
    gen = _load_gen_proxy(monkeypatch)
    extra = APIRouter()

    @extra.post("/predict/series")
    @declare(RoutePolicy(auth=True, upload=Upload.study, study_slot=True))
    def series() -> None: ...

    template = gen.TEMPLATE.read_text()
    both = APIRouter()
    both.include_router(api_router)
    both.include_router(extra)
    rendered = gen.render(template, RoutePolicies(both.routes))
    block = rendered[rendered.index("location = /predict/series") :]
    block = block[: block.index("}")]
    assert "client_max_body_size @MAX_STUDY_BYTES@;" in block
    assert "proxy_request_buffering off;" in block
    assert gen.render(rendered, RoutePolicies(api_router.routes)) == template

    stale = tmp_path / "nginx.conf.template"
    stale.write_text(rendered)
    assert gen.main(["--check", "--template", str(stale)]) == 1
    assert gen.main(["--template", str(stale)]) == 0
    assert stale.read_text() == template
