"""What the server applies to a route before it runs, declared beside the route.

Each endpoint in ``backend/app/api/routes/`` carries a :class:`RoutePolicy`::

    @router.post("/predict/study", ...)
    @declare(RoutePolicy(auth=True, upload=Upload.study, study_slot=True))
    def predict_study_route(...): ...

and everything that used to key on path strings reads it through one
:class:`RoutePolicies` table built from the app's routes: the bearer-token check and audit
line (``core/auth.py``), the body limit (``BodySizeLimitMiddleware``), the study slot
(``AdmissionMiddleware``), the docs pages' CSP (``core/security.py``), and the proxy's
``location`` blocks (``scripts/gen_proxy_conf.py`` writes them into
``docker/proxy/nginx.conf.template``; ``make lint`` checks they are current). A route
without a policy stops the app from being built (:class:`MissingPolicyError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

_ATTRIBUTE = "__route_policy__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., object])


class Upload(StrEnum):
    """Which body limit a route's requests get (sizes from ``Settings``)."""

    one_file = "one_file"  # one file plus multipart framing (MAX_UPLOAD_MB); every GET too
    batch = "batch"  # several files (MAX_BATCH_MB)
    study = "study"  # a whole series (MAX_STUDY_MB): the proxy streams it, never spools it


@dataclass(frozen=True)
class RoutePolicy:
    """The policy of one route.

    ``auth``: with ``AUTH_TOKEN_HASHES`` set, a bearer token is needed (401 without), and
    every request leaves an audit line; required, so that no route is open by omission.
    ``upload``: the body limit. ``study_slot``: a POST takes one of
    ``MAX_CONCURRENT_STUDIES`` slots (503 + Retry-After when none is free).
    ``docs_page``: an HTML documentation page (its own CSP, ``core/security.docs_csp``).
    ``role``: with ``AUTH_TOKEN_HASHES`` set, the token must also carry this role (403
    without; ``core/auth.py``), e.g. ``"reader"`` for a radiologist's read.
    """

    auth: bool
    upload: Upload = Upload.one_file
    study_slot: bool = False
    docs_page: bool = False
    role: str | None = None


# Paths without a route of the API (the web app's files, the OpenAPI schema, 404s).
NO_ROUTE = RoutePolicy(auth=False)


def declare(policy: RoutePolicy) -> Callable[[Endpoint], Endpoint]:
    """Attach ``policy`` to a route's endpoint function (a decorator; returns it unchanged)."""

    def attach(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ATTRIBUTE, policy)
        return endpoint

    return attach


def policy_of(endpoint: object) -> RoutePolicy | None:
    """The policy :func:`declare` attached to ``endpoint``, else None."""
    policy = getattr(endpoint, _ATTRIBUTE, None)
    return policy if isinstance(policy, RoutePolicy) else None


class MissingPolicyError(ValueError):
    """An API route declares no policy, or two routes of one path declare different ones."""


class RoutePolicies:
    """Path -> :class:`RoutePolicy` for every API route (``APIRoute``) in ``routes``.

    Looked up by the request's path, before routing (middleware): exact paths first, then
    templated ones (``/docs/assets/{name}``) by their pattern; anything else gets
    :data:`NO_ROUTE`. Routes that are not API routes (FastAPI's ``/openapi.json``, the web
    app's files) declare nothing and get :data:`NO_ROUTE`.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.exact: dict[str, RoutePolicy] = {}
        self.templated: dict[str, tuple[re.Pattern[str], RoutePolicy]] = {}
        for context in iter_route_contexts(routes):
            if not isinstance(context.route, APIRoute):
                continue
            path = str(context.path)
            policy = policy_of(context.endpoint)
            if policy is None:
                raise MissingPolicyError(
                    f"the route {sorted(context.methods or ())} {path} declares no policy: "
                    "decorate its endpoint with @declare(RoutePolicy(...)) "
                    "(backend/app/core/policy.py)"
                )
            known = self.exact.get(path) or self.templated.get(path, (None, None))[1]
            if known is not None and known != policy:
                raise MissingPolicyError(f"the routes of {path} declare different policies")
            if "{" in path:
                self.templated[path] = (context.path_regex, policy)
            else:
                self.exact[path] = policy

    def __call__(self, path: str) -> RoutePolicy:
        policy = self.exact.get(path)
        if policy is not None:
            return policy
        for pattern, templated in self.templated.values():
            if pattern.match(path):
                return templated
        return NO_ROUTE

    def paths(self) -> dict[str, RoutePolicy]:
        """Every declared path and its policy (exact paths, then templated ones)."""
        return {**self.exact, **{path: policy for path, (_, policy) in self.templated.items()}}
