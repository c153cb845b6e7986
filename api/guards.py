"""Refusals decided from a request's URL and peer alone, before routing.

- NUL bytes in the path or a query parameter: no identifier or filter of this API holds one, and PostgreSQL refuses
  them in text (a 500 otherwise); SQLite would accept them, so both databases answer the same 422.
- With authentication disabled every caller is an admin, which is only safe for callers on this machine: the app
  itself refuses any other peer (403), whatever started it (``gradlab api``, ``gradlab up``, uvicorn directly).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem_response


def _nul_field(scope: Scope) -> str | None:
    if "\x00" in scope["path"] or "%00" in unquote(scope.get("raw_path", b"").decode("latin-1")).lower():
        return "path"
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" not in query.lower() and "\x00" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "\\0") or "query"
    return "query"


class RejectNul:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = _nul_field(scope) if scope["type"] == "http" else None
        if field is None:
            await self.app(scope, receive, send)
            return
        message = f"{field}: must not contain NUL bytes"
        await problem_response(
            422, message, errors=[{"field": field, "message": "must not contain NUL bytes", "type": "nul_byte"}]
        )(scope, receive, send)


def is_loopback(host: str | None) -> bool:
    """A peer address on this machine (a Unix socket has none)."""
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class LoopbackOnly:
    """Installed by ``create_app`` when authentication is disabled."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and not is_loopback(client[0]):
            await problem_response(
                403,
                f"authentication is disabled (GRADLAB_AUTH=disabled), so this API serves only "
                f"callers on its own machine, not {client[0]}",
            )(scope, receive, send)
            return
        await self.app(scope, receive, send)
