"""What a worker process holds for its whole life: its name, its settings, its database sessions and its Celery app.

``workers.tasks.worker_app`` sets them once, when the process starts; every other worker module reads them here
(the settings are never read again from the environment)."""

from __future__ import annotations

import os
import socket

from celery import Celery
from sqlalchemy.orm import sessionmaker

from core.db.engine import make_engine, make_sessionmaker
from core.settings import Settings

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"  # as in jobs.worker and the workers table

_held: dict = {}


def start(settings: Settings, app: Celery) -> None:
    _held.update(settings=settings, app=app)
    _held.pop("sessions", None)


def settings() -> Settings:
    return _held["settings"]


def app() -> Celery:
    return _held["app"]


def sessions() -> sessionmaker:
    """The process's session factory, its engine made on first use."""
    if "sessions" not in _held:
        _held["sessions"] = make_sessionmaker(make_engine(settings().resolved_database_url))
    return _held["sessions"]


def forget_sessions() -> None:
    """Never share pooled connections across a fork: the child makes its own engine."""
    _held.pop("sessions", None)
