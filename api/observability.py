"""Each request's id and HTTP metrics, in one pure ASGI middleware (no task or body copy per request).

The request id is the caller's ``X-Request-ID`` when it is a sane token, else a new one; it is bound to the log
context (every log line of the request carries it), returned in the ``X-Request-ID`` header and put in
problem+json bodies. With metrics on, each request's latency is observed in a histogram labelled by method,
route template (``/v1/jobs/{job_id}``, never the raw path) and status.

Metrics from several uvicorn worker processes: ``gradlab api`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
folder before the workers start, and prometheus-client then keeps each process's values in a file there, which
the ``/metrics`` route of any process sums (``api.routes.metrics``).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import logs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# seconds: the API answers most requests in milliseconds; event streams stay open for minutes
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, float("inf"))


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


_http_histogram: Histogram | None = None


def http_histogram() -> Histogram:
    """The request histogram, made on first use: prometheus-client reads PROMETHEUS_MULTIPROC_DIR when it is
    first imported, which must happen after ``gradlab api`` has set it. In multiprocess mode it belongs to no
    registry (the files are read at scrape time); otherwise to ``HTTP_REGISTRY``."""
    global _http_histogram
    if _http_histogram is None:
        from prometheus_client import Histogram

        _http_histogram = Histogram(
            "gradlab_http_request_duration_seconds",
            "HTTP requests by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=None if multiprocess() else http_registry(),
        )
    return _http_histogram


_http_registry: CollectorRegistry | None = None


def http_registry() -> CollectorRegistry:
    global _http_registry
    if _http_registry is None:
        from prometheus_client import CollectorRegistry

        _http_registry = CollectorRegistry(auto_describe=False)
    return _http_registry


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: bool):
        self.app = app
        self.histogram = http_histogram() if metrics else None
        self._children: dict[tuple[str, str, int], Histogram] = {}  # labels() takes a lock and checks; cached here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        request_id = given.decode() if given is not None and _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        # Not reset afterwards: each request runs in a task of its own, and the error handler outside this
        # middleware (a 500) still needs the id for its body.
        logs.bind(request_id=request_id)
        header = (REQUEST_ID_HEADER, request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.histogram is not None:
                route = scope.get("route")
                key = (scope["method"], getattr(route, "path", "unmatched"), status)
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self.histogram.labels(*key)
                child.observe(time.perf_counter() - started)
