"""RFC 9457 problem+json for every error; validation errors name the field path; no tracebacks to clients."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import logs
from core.errors import (
    Busy,
    Conflict,
    Forbidden,
    Invalid,
    Malformed,
    NotFound,
    Refused,
    TooLarge,
    Unavailable,
)

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# the status each of the service's refusals is answered with
REFUSAL_STATUS: dict[type[Refused], int] = {
    Malformed: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    Busy: 429,
    Unavailable: 503,
}


def refusal_status(exc: Refused) -> int:
    return next(status for cls, status in REFUSAL_STATUS.items() if isinstance(exc, cls))


class Problem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(self, status: int, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers, extra


def problem_response(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    request_id = logs.current("request_id")
    if request_id is not None:  # what to quote when reporting it: the same id is on the server's log lines
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_path(loc: tuple, kinds: set[str]) -> str:
    """('body', 'embedding_dim', 'params', 'vocab_sizes', 0) -> 'params.vocab_sizes[0]'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    if parts and parts[0] in kinds:  # the discriminated union's tag is not a field
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


_NAMED = re.compile(r"Value error, ([A-Za-z_][A-Za-z0-9_]*): (.+)", re.DOTALL)


def _named_by_message(msg: str, field: str) -> tuple[str, str]:
    """A model's own validator (several fields at once) names the field it refuses by starting its message with
    ``name: ``; the problem then names that field under the model's path, like any field's own error."""
    match = _NAMED.fullmatch(msg)
    if match is None:
        return msg, field
    return match.group(2), f"{field}.{match.group(1)}" if field != "body" else match.group(1)


def install(app: FastAPI, kinds: set[str]) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(Refused)
    async def _refused(_: Request, exc: Refused):
        extra = {"errors": exc.errors} if exc.errors is not None else {}
        return problem_response(refusal_status(exc), exc.detail, exc.headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            msg, field = e.get("msg", "invalid"), field_path(tuple(e.get("loc", ())), kinds)
            msg, field = _named_by_message(msg, field)
            if e.get("type") in ("union_tag_invalid", "union_tag_not_found") and field == "body":
                msg, field = f"missing or unknown kind; expected one of {sorted(kinds)}", "kind"
            errors.append({"field": field, "message": msg, "type": e.get("type", "")})
        detail = "; ".join(f"{err['field']}: {err['message']}" for err in errors)
        return problem_response(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem_response(503, "the database is unavailable; retry shortly", {"Retry-After": "2"})

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError):
        if exc.connection_invalidated:
            return problem_response(503, "the database connection was lost; retry shortly", {"Retry-After": "2"})
        log.exception("database error")
        return problem_response(500, "internal error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return problem_response(500, "internal error")
