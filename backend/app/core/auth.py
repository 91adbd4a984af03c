"""Who may ask: bearer tokens, and one audit line per request to a guarded endpoint.

With ``AUTH_TOKEN_HASHES`` set (SHA-256 hex digests of the accepted tokens), every route
whose policy says ``auth=True`` (``core/policy.py``, declared beside the route: prediction,
study, report, model and metrics) needs ``Authorization: Bearer <token>``; anything else
gets 401 with ``WWW-Authenticate: Bearer``. ``/health``, ``/ready``, the API docs
(``/docs``, ``/redoc``, their assets, ``/openapi.json``) and the web app's files stay open.
The presented token is hashed and its digest compared with every accepted digest in
constant time (``hmac.compare_digest``, no early exit); the server never holds the tokens
themselves, and never logs them.

A route whose policy names a ``role`` (``RoutePolicy(role="reader")``: the radiologist's
read of a worklist study) also needs a token that carries it (``AUTH_TOKEN_HASHES``'
``DIGEST:reader``), else 403. The accepted token's id is left in the request's state
(``request.state.token_id``, :func:`verified_token_id`) for routes that record who acted.

Each request to a guarded endpoint (with or without ``AUTH_TOKEN_HASHES``) leaves one line
on the ``backend.audit`` logger: time, token id (the first 8 hex digits of the token's
SHA-256, i.e. of its configured digest), method, endpoint, status, outcome and the triage
results the request produced. Never pixels, file names, headers or patient data.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app.core.logging import REQUEST_ID

AUDIT_LOGGER_NAME = "backend.audit"
TOKEN_ID_LENGTH = 8
REALM = 'Bearer realm="cspine-triage"'


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_id(digest: str) -> str:
    """The short, loggable id of a token: a prefix of its SHA-256 hex digest."""
    return digest[:TOKEN_ID_LENGTH]


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    value = Headers(scope=scope).get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def accepted(digest: str, digests: Iterable[str]) -> bool:
    """Constant time in the digest's content: every accepted digest is compared."""
    match = False
    for candidate in digests:
        match |= hmac.compare_digest(digest.encode(), candidate.encode())
    return match


def verified_token_id(request: Request) -> str | None:
    """The id of the accepted token of this request; None when no tokens are configured."""
    value = getattr(request.state, "token_id", None)
    return value if isinstance(value, str) else None


@dataclass
class AuditRecord:
    """What the routes add to the request's audit line (through :func:`note_result`)."""

    results: Counter[str] = field(default_factory=Counter)
    study: str | None = None


_AUDIT: contextvars.ContextVar[AuditRecord | None] = contextvars.ContextVar(
    "audit_record", default=None
)


def note_result(result: str, study: bool = False) -> None:
    """Record a triage result of the current request for its audit line (else a no-op)."""
    record = _AUDIT.get()
    if record is None:
        return
    if study:
        record.study = result
    else:
        record.results[result] += 1


@contextlib.contextmanager
def audit_context(record: AuditRecord) -> Iterator[None]:
    token = _AUDIT.set(record)
    try:
        yield
    finally:
        _AUDIT.reset(token)


class BearerAuthMiddleware:
    """401 without an accepted bearer token on the paths ``guarded`` accepts (the routes'
    ``RoutePolicy.auth``), when digests are configured; 403 when the path's
    ``required_role`` (``RoutePolicy.role``) is not among the token's ``roles``; one audit
    line per request to them (always)."""

    def __init__(
        self,
        app: ASGIApp,
        digests: Iterable[str],
        guarded: Callable[[str], bool],
        roles: Mapping[str, frozenset[str]] | None = None,
        required_role: Callable[[str], str | None] = lambda path: None,
    ) -> None:
        self.app = app
        self.digests = tuple(digests)
        self.guarded = guarded
        self.roles = dict(roles or {})
        self.required_role = required_role
        self.logger = logging.getLogger(AUDIT_LOGGER_NAME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        token = bearer_token(scope)
        digest = token_digest(token) if token is not None else None
        presented = token_id(digest) if digest is not None else None
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        record = AuditRecord()
        if not self.digests or scope["method"] == "OPTIONS":  # CORS preflights carry no token
            outcome = "open" if not self.digests else "preflight"
        elif digest is None:
            outcome = "refused: no bearer token"
        elif not accepted(digest, self.digests):
            outcome = "refused: token not accepted"
        else:
            outcome = "allowed"
            role = self.required_role(scope["path"])
            if role is not None and role not in self.roles.get(digest, frozenset()):
                outcome = f"refused: the token lacks the {role} role"
            else:
                scope.setdefault("state", {})["token_id"] = presented
        try:
            if outcome.startswith("refused: the token lacks"):
                response = JSONResponse(
                    {"detail": f"this needs a token with the {role} role"},
                    status_code=403,
                    headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
                )
                await response(scope, receive, recording_send)
                return
            if outcome.startswith("refused"):
                error = "invalid_token" if digest is not None else "invalid_request"
                response = JSONResponse(
                    {
                        "detail": "authentication required: send Authorization: Bearer <token>"
                        if digest is None
                        else "the bearer token is not accepted"
                    },
                    status_code=401,
                    headers={"WWW-Authenticate": f'{REALM}, error="{error}"'},
                )
                await response(scope, receive, recording_send)
                return
            with audit_context(record):
                await self.app(scope, receive, recording_send)
        finally:
            self.logger.info(
                "audit",
                extra={
                    "token_id": presented,
                    "method": scope["method"],
                    "endpoint": scope["path"],
                    "status": status,
                    "outcome": outcome,
                    "results": dict(record.results) or None,
                    "study_result": record.study,
                    "request_id": REQUEST_ID.get(),
                    "latency_ms": round((time.perf_counter() - start) * 1000.0, 2),
                },
            )
