"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api import openapi, problems
from api.auth import KeyCache, KeyFirst, principal
from api.guards import LoopbackOnly, RejectNul
from api.limits import BodyLimits
from api.observability import RequestContext
from api.routes import datasets, events, health, jobs, kinds, metrics, models, ops, studies, web
from core import logs
from core.db.engine import make_engine, make_sessionmaker
from core.jobs.watch import JobFeeds
from core.settings import Settings, get_settings
from core.techniques import specs
from workers.publish import Publisher

# Routers open to anyone (/metrics checks its own scrape token); every other router is mounted behind the API key
# (a test walks app.routes against this).
PUBLIC_ROUTERS = (kinds, health, web, metrics)
AUTHENTICATED_ROUTERS = (jobs, events, datasets, models, studies, ops)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process that `gradlab api` spawned
        logs.configure(settings.log_format)
    app = FastAPI(
        title="gradlab",
        version="1.0.0",
        description="Training-analysis jobs: submit a spec, poll status, metrics, results and artifacts.",
        docs_url=None,  # /docs and /redoc are pages of api.routes.web, served from files installed with the project
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.publisher = Publisher(settings)
    app.state.key_cache = KeyCache(settings.auth_cache_s)
    app.state.job_feeds = JobFeeds(app.state.sessions, settings.events_poll_s, events.encode_metric)
    app.state.stream_slots = events.StreamSlots(settings.max_streams_per_key)
    problems.install(app, set(specs()))
    # outermost last: the peer check, then NUL bytes, then the key, all before the body is read; then its limits
    app.add_middleware(
        BodyLimits,
        default_cap=settings.max_request_bytes,
        upload_caps={
            "/v1/datasets": settings.max_upload_bytes,
            "/v1/models": settings.max_model_upload_bytes,
            "/v1/models/uploads/[^/]+/files/[^/]+": settings.max_upload_chunk_bytes,
            "/v1/datasets/uploads/[^/]+": settings.max_upload_chunk_bytes,
            "/v1/datasets/uploads/[^/]+/tokenizer": settings.max_tokenizer_bytes,
        },
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(KeyFirst)
    app.add_middleware(RejectNul)
    if settings.auth == "disabled":
        app.add_middleware(LoopbackOnly)
    app.add_middleware(RequestContext, metrics=settings.metrics)  # outermost: ids even on early answers
    for module in AUTHENTICATED_ROUTERS:
        app.include_router(module.router, dependencies=[Depends(principal)])
    for module in PUBLIC_ROUTERS:
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    openapi.install(app)
    return app
