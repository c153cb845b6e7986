"""A cap on request body size, enforced while the body streams in (Content-Length may be absent or wrong)."""
from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing passes it through to the problem+json handler as a 413."""

    def __init__(self, cap: int):
        super().__init__(413, f"body: requests are capped at {cap} bytes")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, default_cap: int, upload_cap: int, upload_path: str = "/v1/datasets"):
        self.app, self.default_cap, self.upload_cap, self.upload_path = app, default_cap, upload_cap, upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # multipart framing adds a little to the file itself
        cap = self.upload_cap + 64 * 1024 if scope["path"] == self.upload_path else self.default_cap
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            # Out here no exception handler runs yet: answer directly.
            await problem_response(413, BodyTooLarge(cap).detail)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap)
            return message

        await self.app(scope, counting_receive, send)
