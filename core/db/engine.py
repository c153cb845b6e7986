"""Engine and session factory: SQLite gets WAL and a busy timeout so the API and a worker can share the file;
PostgreSQL connections are checked before use when they sat idle."""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # Kept connections cover the requests an API process serves at once under load (~16 at 32 clients): past
    # pool_size a connection is closed on return and opened again for the next request, which a profile showed.
    engine = create_engine(url, pool_size=20, max_overflow=20)
    _ping_after_idle(engine)
    return engine


# A connection that was idle longer than this is pinged before use: after a database restart (which takes longer)
# a stale connection is replaced instead of failing a request. One in steady use skips the ping, which
# ``pool_pre_ping`` would send on every checkout (measured: a sixteenth of the API's CPU per request under load).
IDLE_PING_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_conn, record):
        record.info["idle_from"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, proxy):
        idle_from = record.info.get("idle_from")
        if idle_from is None or time.monotonic() - idle_from < IDLE_PING_S:
            return  # new, or in steady use
        try:
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:
            raise DisconnectionError(f"stale connection: {exc}") from exc  # the pool connects afresh and retries


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Result[*tuple[Any, ...]]) -> int:
    """The rows an UPDATE or DELETE matched. Session.execute returns a CursorResult for one, but its annotation
    says Result (it cannot tell the statement's kind), and only CursorResult has ``rowcount``."""
    return cast(CursorResult, result).rowcount


def ping(session: Session) -> None:
    """Raises when the database does not answer (readiness)."""
    session.execute(text("SELECT 1"))
