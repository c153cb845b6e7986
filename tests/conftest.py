"""Fixtures: a fresh PostgreSQL database and Redis key prefix per test module, and process stacks on them."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.servers import PrivateS3
from tests.stack import REDIS_URL, Stack, create_database, delete_redis_prefix, drop_database


@pytest.fixture(scope="module")
def pg_database():
    """(name, url) of an empty database at the newest migration, dropped afterwards."""
    from core.db.migrate import upgrade

    name, url = create_database()
    upgrade(url)
    yield name, url
    drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    """Sessions on an empty database at the newest migration, once on SQLite and once on PostgreSQL: for store
    queries that must behave the same on both backends."""
    from core.db.engine import make_engine, make_sessionmaker
    from core.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_database")[1]
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def redis_prefix():
    prefix = f"gradlab-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_redis_prefix(prefix)


@pytest.fixture(scope="module")
def service_env(pg_database, redis_prefix, tmp_path_factory) -> dict[str, str]:
    """Production-shaped settings (PostgreSQL + Redis) with fast recovery timings for tests."""
    return {
        "GRADLAB_DATABASE_URL": pg_database[1],
        "GRADLAB_BROKER_URL": REDIS_URL,
        "GRADLAB_BROKER_KEY_PREFIX": redis_prefix,
        "GRADLAB_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "GRADLAB_HEARTBEAT_INTERVAL_S": "0.5",
        "GRADLAB_HEARTBEAT_TIMEOUT_S": "4",
        "GRADLAB_SWEEP_INTERVAL_S": "1",
        "GRADLAB_REQUEUE_QUEUED_AFTER_S": "10",
        "GRADLAB_AUTH": "disabled",
        "GRADLAB_TORCH_THREADS": "1",
    }


@pytest.fixture(scope="module")
def stack(service_env, tmp_path_factory):
    s = Stack(env=service_env, log_dir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(stack) -> httpx.Client:
    """An HTTP client for a real API process on the module's stack (no worker started)."""
    stack.start_api()
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def s3_server():
    """A private S3-compatible server (moto) for the module's tests; its credentials: ``PrivateS3.CREDENTIALS``."""
    server = PrivateS3()
    server.start()
    yield server
    server.stop()
