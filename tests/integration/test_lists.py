"""The dataset and study lists (``GET /v1/datasets``, ``GET /v1/studies``, ``gradlab datasets list|show``,
``gradlab study list``) on a real API and worker with authentication on: newest first, paged by cursor past more
rows than a page, filtered, and each tenant's own (an admin key sees all). A study's status filter is checked
against the status ``GET /v1/studies/{id}`` derives for every study of each of the five states."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from api.cli.main import cli as gradlab
from api.client import Client
from tests.stack import BIN, ROOT

FAST = {
    "vocab_sizes": [512, 100000],
    "entropy_dims": [16, 64],
    "sweep": {"vocab_size": 32, "target_rank": 4, "dims": [2, 4, 8], "steps": 100},
}


@pytest.fixture(scope="module")
def service_env(service_env):
    return {**service_env, "GRADLAB_AUTH": "required"}


def make_key(stack, tenant: str, admin: bool = False) -> str:
    out = subprocess.run(
        [str(BIN / "gradlab"), "keys", "create", "--tenant", tenant, *(["--admin"] if admin else [])],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split(": ", 1) for line in out.strip().splitlines())["key"]


@pytest.fixture(scope="module")
def keys(stack, api) -> dict[str, str]:
    stack.start_worker(queues="cpu")  # runs CPU jobs; GPU jobs stay queued, dataset validations wait
    return {name: make_key(stack, name, admin=name == "admin") for name in ("alice", "bob", "admin")}


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def listed(api: httpx.Client, path: str, key: str, **query) -> tuple[list[dict], int]:
    """Every item of a list, following the cursor; and how many pages it took."""
    items, cursor, pages = [], None, 0
    while True:
        resp = api.get(path, params={**query, **({"cursor": cursor} if cursor else {})}, headers=as_(key))
        assert resp.status_code == 200, resp.text
        pages += 1
        items += resp.json()["items"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return items, pages


def csv_bytes(seed: int, rows: int = 40) -> bytes:
    return ("a,b,label\n" + "".join(f"{i * seed},{i % 7},{i % 2}\n" for i in range(rows))).encode()


@pytest.fixture(scope="module")
def datasets(api, keys) -> dict[str, list[str]]:
    """Alice: five CSVs, an .npz, and an upload interrupted after its first bytes (in that order); Bob: two CSVs."""
    made: dict[str, list[str]] = {"csv": [], "bob": []}
    for i in range(5):
        resp = api.post("/v1/datasets", files={"file": (f"d{i}.csv", csv_bytes(i + 1))}, headers=as_(keys["alice"]))
        assert resp.status_code == 201, resp.text
        made["csv"].append(resp.json()["id"])
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(64, dtype=np.float32).reshape(16, 4), y=np.arange(16) % 2)
    resp = api.post("/v1/datasets", files={"file": ("d.npz", buf.getvalue())}, headers=as_(keys["alice"]))
    made["npz"] = [resp.json()["id"]]
    body = csv_bytes(9, rows=2000)
    up = api.post(
        "/v1/datasets/uploads", json={"filename": "cut.csv", "size": len(body)}, headers=as_(keys["alice"])
    ).json()
    api.patch(
        f"/v1/datasets/uploads/{up['id']}",
        content=body[:1000],
        headers={**as_(keys["alice"]), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    made["uploading"] = [up["dataset_id"]]
    for i in range(2):
        resp = api.post("/v1/datasets", files={"file": (f"b{i}.csv", csv_bytes(i + 7))}, headers=as_(keys["bob"]))
        made["bob"].append(resp.json()["id"])
    made["alice"] = made["csv"] + made["npz"] + made["uploading"]
    return made


def test_dataset_list_pages_newest_first_filters_and_keeps_to_the_tenant(api, keys, datasets):
    newest_first = datasets["alice"][::-1]
    items, pages = listed(api, "/v1/datasets", keys["alice"], limit=2)
    assert [d["id"] for d in items] == newest_first and pages == 4
    assert all(d["preview"] is None for d in items)  # the list leaves the previews out; one dataset has it
    assert api.get(f"/v1/datasets/{datasets['csv'][0]}", headers=as_(keys["alice"])).json()["preview"]

    ready_csv, pages = listed(api, "/v1/datasets", keys["alice"], status="ready", format="csv", limit=2)
    assert [d["id"] for d in ready_csv] == datasets["csv"][::-1] and pages == 3
    assert [d["id"] for d in listed(api, "/v1/datasets", keys["alice"], status="uploading")[0]] == datasets["uploading"]
    assert [d["id"] for d in listed(api, "/v1/datasets", keys["alice"], format="npz")[0]] == datasets["npz"]

    bobs, _ = listed(api, "/v1/datasets", keys["bob"], limit=1)
    assert [d["id"] for d in bobs] == datasets["bob"][::-1]  # never one of Alice's
    everyone = [d["id"] for d in listed(api, "/v1/datasets", keys["admin"], limit=3)[0]]
    assert everyone == (datasets["alice"] + datasets["bob"])[::-1][: len(everyone)] and len(everyone) == 9

    with Client(str(api.base_url), api_key=keys["alice"]) as alice:
        assert [d.id for d in alice.datasets(status="ready", format="csv", page_size=2)] == datasets["csv"][::-1]
        assert [d.id for d in alice.datasets(limit=3, page_size=2)] == newest_first[:3]

    bad = api.get("/v1/datasets", params={"format": "xlsx"}, headers=as_(keys["alice"]))
    assert bad.status_code == 422 and "format" in bad.text
    bad = api.get("/v1/datasets", params={"cursor": "bm90IGEgY3Vyc29y"}, headers=as_(keys["alice"]))
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]


# --- studies --------------------------------------------------------------------------------------------------------


def _study(api, key: str, kind: str = "embedding_dim", device: str = "cuda", seeds=(0,), base=None) -> dict:
    base = FAST if base is None else base
    resp = api.post(
        "/v1/studies",
        json={"kind": kind, "base": base, "seeds": list(seeds), "device": device},
        headers=as_(key),
    )
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def studies(api, keys) -> dict[str, str]:
    """Alice's studies, one per derived status plus one of another kind, made oldest first in this order; Bob's
    one. No worker consumes the GPU queue: a ``cuda`` study's children stay queued until cancelled."""
    alice = keys["alice"]
    made = {"succeeded": _study(api, alice, device="cpu")["id"]}
    made["queued"] = _study(api, alice)["id"]
    running = _study(api, alice, seeds=(0, 1))
    assert api.post(f"/v1/jobs/{running['jobs'][0]['id']}/cancel", headers=as_(alice)).status_code == 200
    made["running"] = running["id"]
    failed = _study(api, alice, seeds=(0, 1))
    for child in failed["jobs"]:  # each child cancelled alone: the study was not, and did not succeed
        assert api.post(f"/v1/jobs/{child['id']}/cancel", headers=as_(alice)).status_code == 200
    made["failed"] = failed["id"]
    made["cancelled"] = _study(api, alice)["id"]
    assert api.post(f"/v1/studies/{made['cancelled']}/cancel", headers=as_(alice)).status_code == 200
    made["other_kind"] = _study(api, alice, kind="init_averaging", base={"widths": [16, 32, 16], "trials": 1})["id"]
    made["bob"] = _study(api, keys["bob"])["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/studies/{made['succeeded']}", headers=as_(alice)).json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the CPU study did not finish"
        time.sleep(0.2)
    return made


ALICE_ORDER = ["succeeded", "queued", "running", "failed", "cancelled", "other_kind"]


def test_study_list_filters_each_derived_status_as_the_study_reads_it(api, keys, studies):
    alice = keys["alice"]
    items, pages = listed(api, "/v1/studies", alice, limit=2)
    assert [s["id"] for s in items] == [studies[n] for n in ALICE_ORDER[::-1]] and pages == 3
    for item in items:  # the list's status and counts are what the study itself says
        full = api.get(f"/v1/studies/{item['id']}", headers=as_(alice)).json()
        assert (item["status"], item["counts"], item["progress"]) == (full["status"], full["counts"], full["progress"])
        assert item["jobs"] == len(full["jobs"]) and item["settings"] == [s["label"] for s in full["settings"]]
    status_of = {s["id"]: s["status"] for s in items}
    assert [status_of[studies[n]] for n in ALICE_ORDER[:5]] == ALICE_ORDER[:5]
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        found, _ = listed(api, "/v1/studies", alice, status=status, limit=1)
        assert [s["id"] for s in found] == [s["id"] for s in items if s["status"] == status], status

    only_kind, _ = listed(api, "/v1/studies", alice, kind="init_averaging")
    assert [s["id"] for s in only_kind] == [studies["other_kind"]]
    both, _ = listed(api, "/v1/studies", alice, kind="embedding_dim", status="queued")
    assert [s["id"] for s in both] == [studies["queued"]]

    assert [s["id"] for s in listed(api, "/v1/studies", keys["bob"])[0]] == [studies["bob"]]
    everyone = {s["id"] for s in listed(api, "/v1/studies", keys["admin"], limit=4)[0]}
    assert everyone == set(studies.values())
    with Client(str(api.base_url), api_key=alice) as client:
        assert [s["id"] for s in client.studies(status="failed", page_size=1)] == [studies["failed"]]
    bad = api.get("/v1/studies", params={"status": "done"}, headers=as_(alice))
    assert bad.status_code == 422 and "status" in bad.text


# --- the CLI at 80 columns --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(stack, keys):
    runner = CliRunner()

    def invoke(*args: str, key: str = keys["alice"], columns: int = 80, **kwargs):
        env = {"GRADLAB_URL": stack.api_url, "GRADLAB_API_KEY": key, "COLUMNS": str(columns)}
        return runner.invoke(gradlab, list(args), env=env, **kwargs)

    return invoke


def fits(output: str, columns: int = 80) -> bool:
    return all(len(line) <= columns for line in output.splitlines())


def test_cli_lists_datasets_and_studies_within_80_columns(cli, datasets, studies):
    res = cli("datasets", "list")
    assert res.exit_code == 0, res.output
    assert fits(res.output) and all(ds in res.output for ds in datasets["alice"])  # every id whole
    assert not any(ds in res.output for ds in datasets["bob"])
    res = cli("datasets", "list", "--status", "uploading", "--json")
    assert [d["id"] for d in json.loads(res.output)] == datasets["uploading"]
    res = cli("datasets", "list", "--format", "npz", "--limit", "1")
    assert datasets["npz"][0] in res.output and datasets["csv"][0] not in res.output

    res = cli("datasets", "show", datasets["csv"][0])
    assert res.exit_code == 0 and fits(res.output) and "sample_rows" in res.output, res.output
    res = cli("datasets", "show", datasets["uploading"][0])
    assert res.exit_code == 0 and "uploading" in res.output
    res = cli("datasets", "show", datasets["bob"][0])
    assert res.exit_code == 1 and "404" in res.output

    res = cli("study", "list")
    assert res.exit_code == 0 and fits(res.output), res.output
    assert all(studies[n] in res.output for n in ALICE_ORDER) and studies["bob"] not in res.output
    res = cli("study", "list", "--status", "failed", "--json")
    assert [s["id"] for s in json.loads(res.output)] == [studies["failed"]]
    res = cli("study", "show", studies["succeeded"])
    assert res.exit_code == 0 and fits(res.output) and "elbow" in res.output, res.output


def test_cli_deletes_a_dataset(cli, api, keys, datasets):
    victim = datasets["npz"][0]
    assert cli("datasets", "delete", victim, key=keys["bob"], input="y\n").exit_code == 1  # not Bob's to delete
    res = cli("datasets", "delete", victim, input="n\n")
    assert res.exit_code == 1 and api.get(f"/v1/datasets/{victim}", headers=as_(keys["alice"])).status_code == 200
    res = cli("datasets", "delete", victim, "--yes")
    assert res.exit_code == 0 and f"deleted dataset {victim}" in res.output, res.output
    assert api.get(f"/v1/datasets/{victim}", headers=as_(keys["alice"])).status_code == 404


# --- uploads that say what they wait for, and reruns that find them ---------------------------------------------


class Upload:
    """``gradlab datasets upload`` as a user runs it: the installed command, its lines read as they come."""

    def __init__(self, stack, key: str, state, *args: str):
        env = {
            **os.environ,
            "GRADLAB_URL": stack.api_url,
            "GRADLAB_API_KEY": key,
            "GRADLAB_UPLOAD_STATE": str(state),
            "COLUMNS": "80",
        }
        self.proc = subprocess.Popen(
            [str(BIN / "gradlab"), "datasets", "upload", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def until(self, words: str, timeout: float = 60) -> str:
        """The lines read until ``words`` appear in them, joined (a console wraps long lines at 80 columns)."""
        deadline, read = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"ended before {words!r}: {self.lines}")
            self.lines.append(line.rstrip("\n"))
            read.append(line.strip())
            if words in " ".join(read):
                return " ".join(read)
        raise AssertionError(f"no {words!r} within {timeout} s: {self.lines}")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        """Its exit status and all it printed, wrapped lines joined."""
        rest, _ = self.proc.communicate(timeout=timeout)
        self.lines += rest.splitlines()
        return self.proc.returncode, " ".join(line.strip() for line in self.lines)

    def interrupt(self) -> None:
        self.proc.send_signal(2)  # Ctrl-C
        self.finish(timeout=30)


def test_upload_says_its_dataset_and_what_it_waits_for_and_a_rerun_finds_it(stack, api, keys, tmp_path, monkeypatch):
    from api.cli import datasets as dataset_cli
    from workers.publish import VALIDATION_QUEUE

    state = tmp_path / "uploads.json"
    alice = keys["alice"]
    # one validation already waiting: nothing validates until a worker on the validation queue starts
    ahead = csv_bytes(3, rows=500)
    up = api.post("/v1/datasets/uploads", json={"filename": "ahead.csv", "size": len(ahead)}, headers=as_(alice))
    api.patch(
        f"/v1/datasets/uploads/{up.json()['id']}",
        content=ahead,
        headers={**as_(alice), "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert api.post(f"/v1/datasets/uploads/{up.json()['id']}/complete", headers=as_(alice)).status_code == 202
    data = tmp_path / "rows.csv"
    data.write_bytes(csv_bytes(5, rows=50_000))
    before = len(listed(api, "/v1/datasets", alice)[0])

    run = Upload(stack, alice, state, str(data), "--label-column", "label", "--chunk-mib", "1")
    dataset_id = run.until("uploading rows.csv").split()[1].rstrip(":")  # the first line names the dataset
    run.until("waiting for a worker (queued behind 1)")
    run.interrupt()  # stopped while the validation waits

    again = Upload(stack, alice, state, str(data), "--label-column", "label")
    line = again.until("it is validating")
    assert f"dataset {dataset_id}: rows.csv was uploaded already (upload " in line
    again.until("waiting for a worker (queued behind 1)")
    again.interrupt()

    stack.start_worker(queues=VALIDATION_QUEUE)  # validated while nobody waits for it
    deadline = time.monotonic() + 60
    while api.get(f"/v1/datasets/{dataset_id}", headers=as_(alice)).json()["status"] != "ready":
        assert time.monotonic() < deadline, "not validated"
        time.sleep(0.2)
    code, output = Upload(stack, alice, state, str(data), "--label-column", "label").finish()
    assert code == 0 and f"dataset {dataset_id}: rows.csv was uploaded already" in output and "it is ready" in output
    assert f"dataset {dataset_id} rows.csv: arrays, csv, 50000 rows × 2 columns, with labels" in output, output
    assert len(listed(api, "/v1/datasets", alice)[0]) == before + 1  # one upload, not two
    assert json.loads(state.read_text()) == {}  # forgotten once validated: running it again uploads afresh

    # interrupted mid-upload, then the file changed: the earlier upload is given up and a new one made
    monkeypatch.setenv("GRADLAB_UPLOAD_STATE", str(state))
    with Client(stack.api_url, api_key=alice) as client:
        cut = client.start_upload(data.name, data.stat().st_size)
        client.append_chunk(cut["id"], 0, data.read_bytes()[:1000])
        st = data.stat()
        earlier = dataset_cli.Earlier(cut["id"], cut["dataset_id"], st.st_size, st.st_mtime_ns)
        dataset_cli._remember(dataset_cli._file_key(client, data), earlier)
    data.write_bytes(csv_bytes(6, rows=100))
    code, output = Upload(stack, alice, state, str(data)).finish()
    assert code == 0 and f"changed since upload {cut['id']} (dataset {cut['dataset_id']}) began" in output, output
    assert "gave it up and start a new upload" in output and "rows.csv: arrays, csv, 100 rows" in output
    assert api.get(f"/v1/datasets/{cut['dataset_id']}", headers=as_(alice)).status_code == 404
