"""Caps on a request body while it streams in: its size (Content-Length may be absent or wrong) and the time it may
take to arrive, so a client that sends a body slowly or never finishes it cannot hold a connection and its buffers.
"""

from __future__ import annotations

import asyncio
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing passes it through to the problem+json handler as a 413."""

    def __init__(self, cap: int):
        super().__init__(413, f"body: requests are capped at {cap} bytes")


class BodyTooSlow(HTTPException):
    """408, raised from ``receive`` like ``BodyTooLarge``; uvicorn closes the connection after the answer."""

    def __init__(self, timeout_s: float):
        super().__init__(
            408, f"body: the request body must arrive within {timeout_s:g} s", headers={"Connection": "close"}
        )


class BodyLimits:
    """``upload_caps``: a cap per path pattern (a regular expression the whole path must match) for the routes
    that take files; every other body is capped at ``default_cap``."""

    def __init__(self, app: ASGIApp, default_cap: int, upload_caps: dict[str, int], timeout_s: float):
        self.app, self.default_cap, self.timeout_s = app, default_cap, timeout_s
        self.upload_caps = [(re.compile(pattern), cap) for pattern, cap in upload_caps.items()]

    def _upload_cap(self, path: str) -> int | None:
        return next((cap for pattern, cap in self.upload_caps if pattern.fullmatch(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # multipart framing adds a little to the file itself
        upload_cap = self._upload_cap(scope["path"])
        cap = upload_cap + 64 * 1024 if upload_cap is not None else self.default_cap
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            # Out here no exception handler runs yet: answer directly.
            await problem_response(413, BodyTooLarge(cap).detail)(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in; later receives wait for a disconnect, which may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTooSlow(self.timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited_receive, send)
