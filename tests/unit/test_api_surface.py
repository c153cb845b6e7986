"""The API's shape: importing and building it loads no torch (nor the dataset converters' pyarrow and tokenizers,
which only a conversion loads) and touches no files, and every route outside an explicit public list sits behind the
API key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from starlette.routing import Mount

from api.app import create_app
from api.auth import principal
from core.settings import Settings
from tests.stack import ROOT

# (method, path) pairs anyone may call; everything else must depend on api.auth.principal.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/kinds"),
    ("GET", "/v1/kinds/{kind}"),
    # static pages and their vendored scripts: the pages call the API with the user's key
    ("GET", "/"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/compare"),
    ("GET", "/studies/{study_id}"),
    ("GET", "/datasets/{dataset_id}"),
    ("GET", "/models/{model_id}"),
    ("GET", "/studies"),
    ("GET", "/datasets"),
    ("GET", "/models"),
    ("GET", "/vendor/{name}"),
    # the Prometheus scrape endpoint checks its own scrape token (tests/integration/test_observability.py)
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("HEAD", "/openapi.json"),
}
PUBLIC_MOUNTS = {"/static"}


def test_importing_and_building_the_api_loads_no_torch_and_writes_nothing(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    code = (
        "import sys; import api.app; from core.settings import Settings; "
        f"api.app.create_app(Settings(database_url='sqlite:///{tmp_path / 'db.sqlite3'}')); "
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'sklearn', 'pyarrow', 'tokenizers') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        check=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert list(work.iterdir()) == []  # no data/broker folders made by an import


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    db = tmp_path_factory.mktemp("surface") / "db.sqlite3"
    return create_app(Settings(database_url=f"sqlite:///{db}", auth="required"))


def _calls(dependant) -> set:
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def _routes(app):
    """Every route as served, with the dependencies of the routers it was included with."""
    return list(iter_route_contexts(app.routes))


def test_every_route_outside_the_public_list_requires_the_api_key(app):
    open_routes, seen = [], 0
    for route in _routes(app):
        if isinstance(route.original_route, Mount):
            assert route.path in PUBLIC_MOUNTS, f"unexpected mount {route.path}"
            continue
        for method in route.methods:
            seen += 1
            if (method, route.path) in PUBLIC:
                continue
            dependant = getattr(route, "dependant", None)
            if dependant is None or principal not in _calls(dependant):
                open_routes.append(f"{method} {route.path}")
    assert seen > len(PUBLIC)
    assert open_routes == [], f"routes without authentication (add the router to AUTHENTICATED_ROUTERS): {open_routes}"


def test_protected_routes_answer_401_without_a_key(app):
    protected = [
        (m, r.path)
        for r in _routes(app)
        if not isinstance(r.original_route, Mount)
        for m in r.methods
        if (m, r.path) not in PUBLIC
    ]
    assert len(protected) >= 9
    with TestClient(app) as client:
        for method, path in protected:
            url = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
            resp = client.request(method, url)
            assert resp.status_code == 401, (method, path, resp.status_code)
            assert resp.headers["www-authenticate"] == "Bearer"
