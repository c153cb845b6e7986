"""`gradlab up`: SQLite + filesystem broker, a real worker process (no eager mode), the same code path."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx

from tests.stack import start_embedded, wait_job


def test_gradlab_up_runs_jobs_and_stops_cleanly(tmp_path):
    proc, url = start_embedded(tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            ids = [
                client.post("/v1/jobs", json={"kind": k, "params": p}).json()["id"]
                for k, p in [
                    ("embedding_dim", {"vocab_sizes": [100000]}),
                    ("init_averaging", {"widths": [100, 10, 100], "batch": 256}),
                ]
            ]
            for job_id in ids:
                done = wait_job(client, job_id, timeout=120)
                assert done["status"] == "succeeded", done
                arts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
                assert client.get(arts[0]["url"]).content.startswith(b"\x89PNG")
            assert abs(done["result"]["means"]["geometric"]["predicted_forward_ratio"] - 1.0) < 1e-12
            # a resumable dataset upload, validated by the same worker through the filesystem broker
            rows = b"a,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, i * i, i % 2) for i in range(50))
            up = client.post(
                "/v1/datasets/uploads", json={"filename": "t.csv", "size": len(rows), "label_column": "label"}
            )
            for at in (0, 100):
                part = rows[at : 100 if at == 0 else None]
                client.patch(
                    f"/v1/datasets/uploads/{up.json()['id']}", content=part, headers={"Upload-Offset": str(at)}
                )
            assert client.post(f"/v1/datasets/uploads/{up.json()['id']}/complete").status_code == 202
            deadline = time.monotonic() + 60
            while (ds := client.get(f"/v1/datasets/{up.json()['dataset_id']}").json())["status"] == "validating":
                assert time.monotonic() < deadline, ds
                time.sleep(0.1)
            assert (ds["status"], ds["rows"], ds["columns"]) == ("ready", 50, 2), ds
        assert (tmp_path / "d" / "gradlab.sqlite3").exists()
        text = (tmp_path / "up.log").read_text()
        assert url in text and "gradlab.run_job" in text  # a Celery worker ran the task
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        proc.wait(timeout=60)
    assert time.monotonic() - t0 < 60
    leftover = subprocess.run(["pgrep", "-f", f"--data-dir {tmp_path}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
