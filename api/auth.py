"""Bearer-key authentication. With auth disabled (embedded default, loopback only) every caller is the local admin.

A key that authenticated is remembered by its hash for ``GRADLAB_AUTH_CACHE_S`` seconds in each API process, so
most requests cost no key lookup (one was about a seventh of the API's CPU per request under load); the price is
that a revoked key keeps working for up to that long. Unknown keys are never remembered.

The key is checked by ``KeyFirst``, an ASGI middleware, before anything reads the request body: FastAPI parses a form
(an upload) before it runs a route's dependencies, so a dependency alone would spool a keyless upload to disk first.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Header, Request
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import Problem, problem_response
from core.keys.repository import Principal, authenticate, hash_key

LOCAL = Principal(tenant="local", admin=True)
LOCAL_KEY = "local"  # the caller's key identity (for per-key limits) when authentication is disabled
PROTECTED = ("/v1/jobs", "/v1/datasets", "/v1/models", "/v1/studies", "/v1/workers", "/v1/queues")


class KeyCache:
    """Principals of recently authenticated key hashes, each kept ``ttl`` seconds; at most ``size`` of them."""

    def __init__(self, ttl: float, size: int = 10_000):
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key_hash: str) -> Principal | None:
        hit = self._entries.get(key_hash)
        if hit is None or time.monotonic() >= hit[0]:
            return None
        return hit[1]

    def put(self, key_hash: str, who: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            while len(self._entries) >= self.size:  # all still fresh: forget the oldest insertions
                del self._entries[next(iter(self._entries))]
        self._entries[key_hash] = (time.monotonic() + self.ttl, who)


def _lookup(sessions, key_hash: str) -> Principal | None:
    with sessions() as session:
        return authenticate(session, key_hash)


async def identify(state, authorization: str | None) -> tuple[Principal, str]:
    """The caller and its key's hash. Async on purpose: a remembered key answers on the event loop, without a
    thread hop; only a key lookup goes to the thread pool, in a session of its own."""
    if state.settings.auth == "disabled":
        return LOCAL, LOCAL_KEY
    scheme, _, token = (authorization or "").partition(" ")
    if len(authorization or "") > 512 or scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401, "authorization: send 'Authorization: Bearer <API key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    key_hash = hash_key(token.strip())
    who = state.key_cache.get(key_hash)
    if who is None:
        who = await run_in_threadpool(_lookup, state.sessions, key_hash)
        if who is None:
            raise Problem(401, "authorization: unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        state.key_cache.put(key_hash, who)
    return who, key_hash


class KeyFirst:
    """Authenticate requests to the protected paths before the app sees them, and so before their body is read;
    the caller goes into the request state for ``principal``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            who, key_hash = await identify(scope["app"].state, authorization)
        except Problem as exc:  # out here no exception handler runs yet: answer directly
            await problem_response(exc.status, exc.detail, exc.headers)(scope, receive, send)
            return
        except DBAPIError:
            await problem_response(503, "the database is unavailable; retry shortly", {"Retry-After": "2"})(
                scope, receive, send
            )
            return
        state = scope.setdefault("state", {})
        state["principal"], state["key_hash"] = who, key_hash
        await self.app(scope, receive, send)


async def principal(request: Request, authorization: Annotated[str | None, Header(max_length=512)] = None) -> Principal:
    """The caller, as ``KeyFirst`` authenticated it (the header is declared here for the OpenAPI schema)."""
    return request.state.principal
