"""API keys, tenant isolation (another tenant's ids are 404 everywhere), limits (413, 429), loopback-only no-auth."""

from __future__ import annotations

import io
import os
import subprocess
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from core.settings import Settings
from tests.stack import BIN, ROOT, free_port

JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}}


@pytest.fixture(scope="module")
def service_env(service_env):
    return {
        **service_env,
        "GRADLAB_AUTH": "required",
        "GRADLAB_MAX_ACTIVE_JOBS_PER_TENANT": "4",
        "GRADLAB_SUBMISSIONS_PER_MINUTE_PER_TENANT": "6",
    }


def make_key(stack, tenant: str, admin: bool = False) -> tuple[str, str]:
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", tenant] + (["--admin"] if admin else []),
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return fields["id"], fields["key"]


@pytest.fixture(scope="module")
def keys(stack, api):
    return {"alice": make_key(stack, "alice"), "bob": make_key(stack, "bob"), "root": make_key(stack, "ops", True)}


def as_(keys, who):
    return {"Authorization": f"Bearer {keys[who][1]}"}


def test_requests_without_a_valid_key_are_401(api, keys):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": keys["alice"][1]}):
        resp = api.get("/v1/jobs", headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert api.get("/v1/jobs", headers=as_(keys, "alice")).status_code == 200


def test_keys_are_stored_hashed(pg_database, keys):
    engine = create_engine(pg_database[1])
    with engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
    engine.dispose()
    assert all(plain not in stored for _, plain in keys.values())


def test_other_tenants_ids_are_404_on_every_endpoint(api, keys):
    job = api.post("/v1/jobs", json=JOB, headers=as_(keys, "alice")).json()
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2)))
    ds = api.post("/v1/datasets", files={"file": ("a.npz", buf.getvalue())}, headers=as_(keys, "alice")).json()
    jid = job["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("GET", f"/v1/jobs/{jid}/metrics"),
        ("GET", f"/v1/jobs/{jid}/artifacts"),
        ("GET", f"/v1/jobs/{jid}/artifacts/x.png"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("GET", f"/v1/datasets/{ds['id']}"),
    ]:
        resp = api.request(method, path, headers=as_(keys, "bob"))
        assert resp.status_code == 404, (path, resp.text)
        assert api.request(method, path, headers=as_(keys, "alice")).status_code in (
            200,
            404 if "x.png" in path else 200,
        )
    listed = api.get("/v1/jobs", params={"limit": 500}, headers=as_(keys, "bob")).json()["items"]
    assert jid not in [j["id"] for j in listed]
    admin_view = api.get(f"/v1/jobs/{jid}", headers=as_(keys, "root"))
    assert admin_view.status_code == 200
    assert jid in [
        j["id"] for j in api.get("/v1/jobs", params={"limit": 500}, headers=as_(keys, "root")).json()["items"]
    ]
    api.post(f"/v1/jobs/{jid}/cancel", headers=as_(keys, "alice"))


def test_idempotency_keys_are_per_tenant(api, keys):
    h = {"Idempotency-Key": "same-key"}
    a = api.post("/v1/jobs", json=JOB, headers={**h, **as_(keys, "alice")})
    b = api.post("/v1/jobs", json=JOB, headers={**h, **as_(keys, "bob")})
    assert a.status_code == 201 and b.status_code == 201 and a.json()["id"] != b.json()["id"]
    for r, who in ((a, "alice"), (b, "bob")):
        api.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=as_(keys, who))


def test_revoked_key_is_refused_once_the_api_forgets_it(api, stack, keys):
    # The API remembers an authenticated key for GRADLAB_AUTH_CACHE_S (default 2 s): revocation takes effect
    # within that, and not before the key had been remembered.
    key_id, plain = make_key(stack, "carol")
    h = {"Authorization": f"Bearer {plain}"}
    assert api.get("/v1/jobs", headers=h).status_code == 200
    subprocess.run(
        [str(BIN / "gradlab"), "keys", "revoke", key_id],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    revoked_at = time.monotonic()
    while api.get("/v1/jobs", headers=h).status_code == 200:
        assert time.monotonic() - revoked_at < Settings().auth_cache_s + 1.0, "revoked key still accepted"
        time.sleep(0.1)
    assert api.get("/v1/jobs", headers=h).status_code == 401


def test_active_job_cap_and_submission_rate_are_429_with_retry_after(api, stack):
    _, plain = make_key(stack, "dave")
    h = {"Authorization": f"Bearer {plain}"}
    ids = [api.post("/v1/jobs", json=JOB, headers=h).json()["id"] for _ in range(4)]
    capped = api.post("/v1/jobs", json=JOB, headers=h)
    assert capped.status_code == 429 and int(capped.headers["retry-after"]) >= 1
    for jid in ids[:3]:
        api.post(f"/v1/jobs/{jid}/cancel", headers=h)
    # 4 created this minute; the rate limit (6/min) allows two more, then refuses.
    assert api.post("/v1/jobs", json=JOB, headers=h).status_code == 201
    assert api.post("/v1/jobs", json=JOB, headers=h).status_code == 201
    api.post(f"/v1/jobs/{ids[3]}/cancel", headers=h)
    rated = api.post("/v1/jobs", json=JOB, headers=h)
    assert rated.status_code == 429 and "last minute" in rated.json()["detail"]
    assert 1 <= int(rated.headers["retry-after"]) <= 60


def test_oversized_bodies_are_413(api, keys):
    huge = {"kind": "embedding_dim", "params": {"vocab_sizes": [10] * 600_000}}
    resp = api.post("/v1/jobs", json=huge, headers=as_(keys, "alice"))
    assert resp.status_code == 413 and resp.headers["content-type"].startswith("application/problem+json")

    def chunks():  # no Content-Length: the cap is enforced while streaming
        for _ in range(40):
            yield b" " * 65536

    resp = api.post("/v1/jobs", content=chunks(), headers={**as_(keys, "alice"), "content-type": "application/json"})
    assert resp.status_code == 413


def test_unauthenticated_api_refuses_a_non_loopback_address(stack):
    out = subprocess.run(
        [str(BIN / "gradlab"), "api", "--host", "0.0.0.0", "--port", str(free_port())],
        env={**os.environ, **stack.env, "GRADLAB_AUTH": "disabled"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "refusing" in out.stderr


def test_artifact_names_cannot_escape(api, keys):
    job = api.post("/v1/jobs", json=JOB, headers=as_(keys, "alice")).json()
    for name in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e"):
        resp = api.get(f"/v1/jobs/{job['id']}/artifacts/{name}", headers=as_(keys, "alice"))
        assert resp.status_code == 404
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=as_(keys, "alice"))
    assert httpx.URL(api.base_url).host == "127.0.0.1"


def test_studies_are_tenant_scoped_and_count_their_jobs_against_the_caps(api, stack, keys):
    carol = {"Authorization": f"Bearer {make_key(stack, 'carol')[1]}"}
    study = {"kind": "init_averaging", "base": {"widths": [16, 16]}, "grid": {"batch": [16, 32, 64]}}
    made = api.post("/v1/studies", json=study, headers=carol)
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    for method, path in [
        ("GET", f"/v1/studies/{sid}"),
        ("GET", f"/v1/studies/{sid}/comparison.csv"),
        ("POST", f"/v1/studies/{sid}/cancel"),
    ]:
        assert api.request(method, path, headers=as_(keys, "bob")).status_code == 404, path
    assert api.get(f"/v1/studies/{sid}", headers=as_(keys, "root")).status_code == 200
    # 3 queued children of the cap of 4: a study of 2 more is refused as a whole, one of 1 fits
    more = api.post("/v1/studies", json={**study, "grid": {"batch": [16, 32]}}, headers=carol)
    assert more.status_code == 429 and "limit of 4" in more.json()["detail"]
    assert api.post("/v1/studies", json={**study, "grid": {"batch": [16]}}, headers=carol).status_code == 201
    too_big = api.post("/v1/studies", json={**study, "grid": {"batch": [16, 32, 64, 128, 256]}}, headers=carol)
    assert too_big.status_code == 422 and too_big.json()["errors"][0]["field"] == "seeds"
    assert api.post(f"/v1/studies/{sid}/cancel", headers=carol).json()["status"] == "cancelled"
