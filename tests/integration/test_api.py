"""Every status code of the v1 API, against a real API process on PostgreSQL and Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest

from core.techniques import specs

EMB = {"kind": "embedding_dim", "params": {"vocab_sizes": [1000]}}


def problem(resp, status):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["detail"]
    assert "Traceback" not in resp.text
    return body


def test_health_and_readiness(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_submit_returns_201_with_a_queued_job(api):
    resp = api.post("/v1/jobs", json={**EMB, "seed": 7, "device": "cpu", "timeout_s": 60})
    assert resp.status_code == 201
    job = resp.json()
    assert uuid.UUID(job["id"]) and job["status"] == "queued" and job["attempt"] == 0
    assert job["seed"] == 7 and job["device_requested"] == "cpu" and job["timeout_s"] == 60
    assert job["params"]["coefficient"] == 8.33  # defaults are filled in and stored
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert api.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"kind": "no_such_kind", "params": {}}, "kind"),
        ({"params": {}}, "kind"),
        ({"kind": "embedding_dim", "params": {}}, "params.vocab_sizes"),
        ({"kind": "embedding_dim", "params": {"vocab_sizes": "many"}}, "params.vocab_sizes"),
        ({"kind": "embedding_dim", "params": {"vocab_sizes": [10, "x"]}}, "params.vocab_sizes[1]"),
        ({"kind": "init_averaging", "params": {"widths": [10, 10], "batch": 10**9}}, "params.batch"),
        ({"kind": "init_averaging", "params": {"widths": [10, 10], "surprise": 1}}, "params.surprise"),
        ({**EMB, "seed": -1}, "seed"),
        ({**EMB, "device": "tpu"}, "device"),
        ({**EMB, "timeout_s": 0}, "timeout_s"),
    ],
)
def test_invalid_specs_are_422_naming_the_field(api, body, field):
    body = problem(api.post("/v1/jobs", json=body), 422)
    assert field in [e["field"] for e in body["errors"]], body
    assert field in body["detail"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(api, literal):
    raw = f'{{"kind": "embedding_dim", "params": {{"vocab_sizes": [10], "coefficient": {literal}}}}}'
    body = problem(api.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 422)
    assert any(e["field"].startswith("params.coefficient") for e in body["errors"])


def test_resource_limits_refuse_jobs_that_cannot_fit(api):
    spec = {"kind": "init_averaging", "params": {"widths": [16384, 16384, 16384], "batch": 65536}}
    body = problem(api.post("/v1/jobs", json=spec), 422)
    assert "GiB" in body["detail"]


def test_malformed_json_is_422_not_500(api):
    problem(api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422)


def test_idempotency_key(api):
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = api.post("/v1/jobs", json=EMB, headers=key)
    again = api.post("/v1/jobs", json=EMB, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    problem(api.post("/v1/jobs", json={**EMB, "seed": 1}, headers=key), 409)


def test_unknown_and_malformed_ids_are_404(api):
    for path in (
        f"/v1/jobs/{uuid.uuid4()}",
        "/v1/jobs/not-a-uuid",
        f"/v1/jobs/{uuid.uuid4()}/metrics",
        f"/v1/jobs/{uuid.uuid4()}/artifacts",
        f"/v1/datasets/{uuid.uuid4()}",
        "/v1/kinds/nope",
    ):
        problem(api.get(path), 404)
    problem(api.post(f"/v1/jobs/{uuid.uuid4()}/cancel"), 404)


def test_cancel_queued_then_409_on_terminal(api):
    job = api.post("/v1/jobs", json=EMB).json()
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"]
    problem(api.post(f"/v1/jobs/{job['id']}/cancel"), 409)


def test_list_is_newest_first_with_a_stable_cursor(api):
    kind = "init_averaging"
    ids = [api.post("/v1/jobs", json={"kind": kind, "params": {"widths": [4, 4]}}).json()["id"] for _ in range(5)]
    page1 = api.get("/v1/jobs", params={"kind": kind, "limit": 2}).json()
    # New jobs arriving between pages must not shift what the cursor points at.
    late = api.post("/v1/jobs", json={"kind": kind, "params": {"widths": [4, 4]}}).json()["id"]
    seen, cursor = [j["id"] for j in page1["items"]], page1["next_cursor"]
    while cursor:
        page = api.get("/v1/jobs", params={"kind": kind, "limit": 2, "cursor": cursor}).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids)) and late not in seen
    queued = api.get("/v1/jobs", params={"status": "queued", "kind": kind, "limit": 500}).json()["items"]
    assert late in [j["id"] for j in queued]
    problem(api.get("/v1/jobs", params={"cursor": "garbage"}), 400)
    problem(api.get("/v1/jobs", params={"status": "sleeping"}), 422)


def test_kinds_list_schemas_and_examples(api):
    kinds = {k["name"]: k for k in api.get("/v1/kinds").json()}
    assert set(kinds) == set(specs())
    for name, k in kinds.items():
        assert k["description"] and k["params_schema"]["type"] == "object"
        assert k["example"]["kind"] == name
        # every example is itself a valid job
        assert api.post("/v1/jobs", json=k["example"]).status_code == 201
    assert api.get("/v1/kinds/init_averaging").json()["name"] == "init_averaging"


def test_dataset_upload_npz_csv_and_refusals(api):
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).normal(size=(50, 3)), y=np.arange(50) % 2)
    up = api.post("/v1/datasets", files={"file": ("train.npz", buf.getvalue())})
    assert up.status_code == 201, up.text
    ds = up.json()
    assert (ds["rows"], ds["columns"], ds["has_labels"]) == (50, 3, True)
    assert api.get(f"/v1/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]

    csv = b"a,b,label\n1,2,0\n3,4,1\n5,6,1\n"
    up = api.post("/v1/datasets", files={"file": ("t.csv", csv)}, data={"label_column": "label"})
    assert up.status_code == 201 and up.json()["columns"] == 2

    pickled = io.BytesIO()
    np.savez(pickled, x=np.array([{"a": 1}, None], dtype=object))
    body = problem(api.post("/v1/datasets", files={"file": ("evil.npz", pickled.getvalue())}), 422)
    assert body["errors"][0]["field"] == "x" and "not numeric" in body["detail"]  # refused on its .npy header
    problem(api.post("/v1/datasets", files={"file": ("t.csv", b"a,b\n1,oops\n")}), 422)
    problem(api.post("/v1/datasets", files={"file": ("t.exe", b"MZ")}), 422)
    big = b"0" * (32 * 1024 * 1024 + 1)
    problem(api.post("/v1/datasets", files={"file": ("big.csv", big)}), 413)


def test_uploaded_filename_cannot_escape(api):
    up = api.post("/v1/datasets", files={"file": ("../../etc/passwd.csv", b"1,2\n3,4\n")})
    assert up.status_code == 201 and "/" not in up.json()["filename"]


def test_openapi_is_served(api):
    schema = api.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"]
    assert api.get("/docs").status_code == 200
    schemas = schema["components"]["schemas"]  # a job's result documents its summary
    assert schemas["JobResult"]["properties"]["summary"]["anyOf"][0] == {"$ref": "#/components/schemas/Summary"}
    assert schemas["Verdict"]["properties"]["outcome"]["enum"] == ["supports", "contradicts", "inconclusive"]
