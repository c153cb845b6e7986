"""Hostile input against real API processes (PostgreSQL + Redis; SQLite for the input cases too): upload bombs and
liars refused before their data is read with the API's peak memory near idle, NUL bytes and naive cursors as 4xx,
strict job bodies, the key checked before a body is read, header and body deadlines, the no-auth loopback guard.

Every bomb and liar file is made here; the zip bomb really expands (1 GiB of zeros from about 1 MB).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.app import create_app
from core.settings import Settings
from tests.integration.test_security import make_key
from tests.stack import BIN, ROOT, Stack, free_port

MiB = 1024 * 1024
JOB = {"kind": "init_averaging", "params": {"widths": [8, 8]}}
FEW_TENS_OF_MIB = 64 * MiB  # a refused upload may raise the API's peak RSS by at most this much (a bomb: GiBs)
STORED_CAP = 64 * MiB
INLINE_CAP = 48 * MiB  # what a one-shot upload, converted in the API process, may store


@pytest.fixture(scope="module")
def service_env(service_env):
    """Authentication on, short header/body timeouts, and a stored-dataset cap of STORED_CAP (the default is the
    upload cap, gigabytes) that the bombs below are refused against."""
    return {
        **service_env,
        "GRADLAB_AUTH": "required",
        "GRADLAB_HEADER_TIMEOUT_S": "0.5",
        "GRADLAB_BODY_TIMEOUT_S": "1",
        "GRADLAB_MAX_DATASET_BYTES": str(STORED_CAP),
        "GRADLAB_MAX_INLINE_DATASET_BYTES": str(INLINE_CAP),
    }


@pytest.fixture(scope="module")
def key(stack, api) -> dict:
    return {"Authorization": f"Bearer {make_key(stack, 'mallory')[1]}"}


@pytest.fixture(scope="module")
def api_pid(stack, api) -> int:
    return next(p.pid for p in stack.procs if "api" in p.args)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory):
    """An API process on the embedded SQLite database and filesystem broker (authentication off, loopback)."""
    data = tmp_path_factory.mktemp("sqlite-data")
    stack = Stack(
        env={
            "GRADLAB_DATA_DIR": str(data),
            "GRADLAB_DATABASE_URL": f"sqlite:///{data}/gradlab.sqlite3",
            "GRADLAB_BROKER_URL": "filesystem://",
            "GRADLAB_AUTH": "disabled",
        },
        log_dir=tmp_path_factory.mktemp("sqlite-logs"),
    )
    stack.migrate()
    try:
        stack.start_api()
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            yield client
    finally:
        stack.stop()


def problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.headers
    return resp.json()


# --- bomb and liar files ------------------------------------------------------------------------------------------


def npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def zip_of(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip from (name, stored bytes, method 0 stored / 8 deflated, crc32, declared uncompressed size), written
    field by field so that the sizes can say whatever a test needs."""
    out, central = io.BytesIO(), []
    for name, payload, method, crc, usize in entries:
        offset = out.tell()
        out.write(
            struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 33, crc, len(payload), usize, len(name), 0)
            + name.encode()
            + payload
        )
        central.append(
            struct.pack(
                "<4s4B4HL2L5H2L",
                b"PK\x01\x02",
                20,
                3,
                20,
                0,
                0,
                method,
                0,
                33,
                crc,
                len(payload),
                usize,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name.encode()
        )
    directory = b"".join(central)
    start = out.tell()
    out.write(
        directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), start, 0)
    )
    return out.getvalue()


def zeros_bomb(gib: int = 1) -> bytes:
    """x.npy: float64 zeros of ``gib`` GiB, deflated to about 1 MB: a 1 MiB block of zeros compressed once and
    repeated (a full flush makes each copy independent of the ones before)."""
    n = gib * 1024 * MiB
    header = npy_header((n // 8,))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    zero_mib = bytes(MiB)
    for _ in range(n // MiB):
        crc = zlib.crc32(zero_mib, crc)
    payload = head + block * (n // MiB) + comp.flush()
    assert len(zlib.decompressobj(-15).decompress(payload, 10 * MiB)) == 10 * MiB  # it really expands
    return zip_of([("x.npy", payload, 8, crc, len(header) + n)])


def stored(name: str, raw: bytes, usize: int | None = None) -> tuple:
    return (name, raw, 0, zlib.crc32(raw), len(raw) if usize is None else usize)


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def bombs() -> dict[str, tuple]:
    """name -> (filename, content, expected status, words the refusal must say[, form fields])."""
    ones = np.ones((4, 2)).tobytes()
    csv_rows = (b"1," * 19 + b"2\n") * 500_000  # 20 MB of good rows and one bad one at the very end
    labelled = ",".join(f"c{i}" for i in range(29)).encode() + b",label\n" + (b"0," * 29 + b"0\n") * 555_000
    return {
        "zip bomb (1 GiB of zeros)": ("bomb.npz", zeros_bomb(), 422, "would store"),
        "header claims 10^12 elements": (
            "liar.npz",
            zip_of([stored("x.npy", npy_header((10**12,)) + bytes(800))]),
            422,
            "declares",
        ),
        "zip claims more than the header": (
            "liar.npz",
            zip_of([stored("x.npy", npy_header((4, 2)) + ones, usize=200)]),
            422,
            "declares",
        ),
        "entry holds more than both declare": (
            "liar.npz",
            zip_of(
                [
                    (
                        "x.npy",
                        npy_header((4, 2)) + ones + bytes(MiB),
                        0,
                        zlib.crc32(npy_header((4, 2)) + ones + bytes(MiB)),
                        len(npy_header((4, 2))) + 64,
                    )
                ]
            ),
            422,
            "not a readable",
        ),
        "int8 that would store 240 MB": (
            "stored.npz",
            npz_bytes(True, x=np.zeros((1_000_000, 60), np.int8)),
            422,
            "would store",
        ),
        "object dtype": ("evil.npz", zip_of([stored("x.npy", npy_header((2,), "|O") + bytes(16))]), 422, "not numeric"),
        "60,000 zip entries": ("many.npz", zip_of([stored(f"x{i}.npy", b"") for i in range(60_000)]), 422, "entries"),
        "32 MB CSV that would store 69 MB": ("cells.csv", labelled, 422, "would store", {"label_column": "label"}),
        "20 MB CSV, bad last row": ("late.csv", csv_rows + b"1," * 19 + b"nan\n", 422, "NaN"),
        "33 MB upload": ("big.csv", bytes(33 * MiB), 413, "capped"),
    }


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def test_upload_bombs_are_refused_with_the_api_peak_memory_near_idle(api, key, api_pid):
    good = npz_bytes(x=np.random.default_rng(0).normal(size=(64, 3)), y=np.arange(64) % 2)
    for name, content in (("warm.npz", good), ("warm.csv", b"a,b\n1,2\n3,4\n")):  # warm every code path
        assert api.post("/v1/datasets", files={"file": (name, content)}, headers=key).status_code == 201
    rises = {}
    for case, (filename, content, status, words, *form) in bombs().items():
        with open(f"/proc/{api_pid}/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) restarts from the present RSS
        idle = vm(api_pid, "VmRSS")
        body = problem(
            api.post(
                "/v1/datasets",
                files={"file": (filename, content)},
                data=form[0] if form else None,
                headers=key,
                timeout=120,
            ),
            status,
        )
        assert words in body["detail"], (case, body["detail"])
        rises[case] = vm(api_pid, "VmHWM") - idle
    print(
        "\npeak RSS rise of the API process per refused upload (MiB): "
        + ", ".join(f"{case}: {rise / MiB:.1f}" for case, rise in rises.items())
    )
    assert max(rises.values()) < FEW_TENS_OF_MIB, rises


def test_a_dataset_is_stored_as_float32_and_int64_within_the_stored_cap(api, key):
    x = np.random.default_rng(1).integers(0, 255, size=(1000, 20), dtype=np.uint8)
    up = api.post("/v1/datasets", files={"file": ("u8.npz", npz_bytes(True, x=x, y=np.arange(1000) % 3))}, headers=key)
    assert up.status_code == 201, up.text
    ds = up.json()
    assert (ds["rows"], ds["columns"], ds["has_labels"]) == (1000, 20, True)
    assert 1000 * 20 * 4 + 1000 * 8 <= ds["size"] <= 1000 * 20 * 4 + 1000 * 8 + 1024


def test_a_one_shot_upload_may_store_only_the_inline_cap(api, key):
    """13 MB of uint8 would store 60 MB (float32 x, int64 y): under the stored cap, over what the API process
    converts itself: refused, naming the cap."""
    x = np.zeros((1_000_000, 13), dtype=np.uint8)
    up = api.post(
        "/v1/datasets", files={"file": ("big.npz", npz_bytes(True, x=x, y=np.zeros(1_000_000, np.int64)))}, headers=key
    )
    assert up.status_code == 422, up.text
    assert str(INLINE_CAP) in up.text and "would store" in up.text


# --- input that reached the database ------------------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def client(request, api, key, sqlite_api):
    if request.param == "postgresql":
        api.headers.update(key)
        yield api
        for name in key:
            api.headers.pop(name, None)
    else:
        yield sqlite_api


def test_nul_bytes_and_naive_cursors_are_4xx_on_both_databases(client):
    job = client.post("/v1/jobs", json=JOB).json()
    jid = job["id"]
    for path, field in (
        ("/v1/jobs?kind=init%00averaging", "kind"),
        (f"/v1/jobs/{jid}/metrics?name=loss%00", "name"),
        (f"/v1/jobs/{jid}/artifacts/plot%00.png", "path"),
        (f"/v1/jobs/{jid}%00", "path"),
    ):
        body = problem(client.get(path), 422)
        assert body["errors"][0]["field"] == field and "NUL" in body["detail"]
    naive = base64.urlsafe_b64encode(f"2020-01-01T00:00:00|{jid}".encode()).decode()
    problem(client.get("/v1/jobs", params={"cursor": naive}), 400)
    for bad in (
        {**JOB, "kind": "init_averaging\x00"},
        {**JOB, "params": {"widths": [8, 8], "mean\x00": 1}},
        {**JOB, "params": {"widths": [8, 8], "distribution": "normal\x00"}},
    ):
        problem(client.post("/v1/jobs", json=bad), 422)
    up = client.post("/v1/datasets", files={"file": ("a.csv", b"a,b\n1,2\n3,4\n")}, data={"label_column": "b\x00"})
    assert problem(up, 422)["errors"][0]["field"] == "label_column"
    client.post(f"/v1/jobs/{jid}/cancel")


def test_job_bodies_are_strict(client):
    for field, value in (("seed", "5"), ("seed", True), ("seed", 5.0), ("timeout_s", "60"), ("timeout_s", False)):
        body = problem(client.post("/v1/jobs", json={**JOB, field: value}), 422)
        assert body["errors"][0]["field"] == field
    ok = client.post("/v1/jobs", json={**JOB, "seed": 5, "timeout_s": 60})
    assert ok.status_code == 201 and ok.json()["seed"] == 5
    client.post(f"/v1/jobs/{ok.json()['id']}/cancel")


# --- bodies and connections ---------------------------------------------------------------------------------------


def raw_connection(url: str) -> socket.socket:
    sock = socket.create_connection((httpx.URL(url).host, httpx.URL(url).port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
        next((ln.split(b":")[1] for ln in data.split(b"\r\n") if ln.lower().startswith(b"content-length")), b"0")
    ):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_an_upload_without_a_key_is_refused_before_its_body_is_sent(stack, api):
    with raw_connection(stack.api_url) as sock:
        sock.sendall(
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 20000000\r\n\r\n"
        )  # and never the body
        head = read_response(sock)
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
    assert b"application/problem+json" in head and b"Bearer" in head


def test_unfinished_headers_and_bodies_are_cut_off(stack, api, key):
    for opening in (b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"):  # silent, then headers that never end
        with raw_connection(stack.api_url) as sock:
            sock.sendall(opening)
            started = time.monotonic()
            assert sock.recv(1024) == b""  # closed by the server (the socket's own timeout is 10 s)
            assert time.monotonic() - started < 5
    with raw_connection(stack.api_url) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: " + key["Authorization"].encode() + b'\r\nContent-Length: 100\r\n\r\n{"kind"'
        )
        reply = read_response(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
        assert b"application/problem+json" in reply and b"within 1 s" in reply
        assert sock.recv(1024) == b""  # and the connection is closed
    assert api.get("/healthz").status_code == 200  # a prompt client is unaffected


# --- starting the API ---------------------------------------------------------------------------------------------


def gradlab(stack, *args: str, auth: str = "disabled") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "gradlab"), *args],
        env={**os.environ, **stack.env, "GRADLAB_AUTH": auth},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_up_refuses_an_open_address_before_saying_it_is_up(stack, tmp_path):
    out = gradlab(stack, "up", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and "refusing" in out.stderr
    assert "gradlab is up" not in out.stdout and not (tmp_path / "d" / "gradlab.sqlite3").exists()


def test_a_host_name_is_resolved_not_a_traceback(stack, tmp_path):
    for args in (
        ("api", "--host", "no-such-host.invalid"),
        ("up", "--host", "no-such-host.invalid", "--data-dir", str(tmp_path / "d")),
    ):
        out = gradlab(stack, *args, "--port", str(free_port()))
        assert out.returncode == 2 and "--host no-such-host.invalid" in out.stderr
        assert "Traceback" not in out.stderr + out.stdout


def test_the_app_itself_serves_no_auth_only_to_loopback(stack, monkeypatch):
    """Whatever starts it (here the app factory itself, past the CLI's check), an app with authentication disabled
    answers callers on this machine and refuses any other peer. The peer address is set on the ASGI transport, so no
    traffic leaves the loopback interface."""
    for key, value in {**stack.env, "GRADLAB_AUTH": "disabled"}.items():
        monkeypatch.setenv(key, value)
    app = create_app(Settings())

    async def get(peer: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gradlab") as client:
            return await client.get("/v1/jobs")

    assert asyncio.run(get("127.0.0.1")).status_code == 200
    assert asyncio.run(get("::1")).status_code == 200
    for peer in ("203.0.113.7", "10.1.2.3", "::ffff:198.51.100.4"):
        refused = asyncio.run(get(peer))
        assert refused.status_code == 403 and "authentication is disabled" in refused.json()["detail"]
