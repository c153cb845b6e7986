"""Liveness (the process answers) and readiness (database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.problems import problem_response
from core.db.engine import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or broker unreachable"}})
def readyz(request: Request):
    checks = {}
    try:
        with request.app.state.sessions() as session:
            ping(session)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the reason goes to the client in words
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    try:
        with request.app.state.publisher.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {exc.__class__.__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    return problem_response(503, "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items()), checks=checks)
