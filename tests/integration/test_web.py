"""The web pages in a real headless Chromium (Debian's ``chromium`` package) against a real API and worker: the job
page of a finished job shows its answer first, then one uPlot chart per metric with the series overlaid, the full
result and the artifacts, and the screenshot is not blank. The charts need uPlot from ``make install`` (npm)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.client import Client

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
UPLOT = Path(__file__).resolve().parents[2] / "api" / "vendor" / "node_modules" / "uplot" / "dist" / "uPlot.iife.min.js"
browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found: apt-get install -y chromium")
charts = pytest.mark.skipif(
    not UPLOT.exists(),
    reason="uPlot not installed: `make install` runs npm ci --prefix api/vendor (needs npm and the npm registry)",
)

SPEC = {
    "kind": "embedding_dim",
    "device": "cpu",
    "params": {
        "vocab_sizes": [512, 100000],
        "entropy_dims": [16, 64, 128],
        "sweep": {"vocab_size": 32, "target_rank": 4, "dims": [2, 4, 8], "steps": 100},
    },
}
WIDTH, HEIGHT = 1280, 1300
# matplotlib's and the page's first series colour (#1f77b4), as drawn on the chart canvases
SERIES_RGB = np.array([0x1F, 0x77, 0xB4]) / 255


@pytest.fixture(scope="module")
def job(stack, api):
    stack.start_worker()
    with Client(stack.api_url) as client:
        done = client.wait(client.submit(SPEC).id, timeout=60)
    assert done.succeeded, done
    return done


@pytest.fixture(scope="module")
def _warm_chromium(tmp_path_factory):
    """Chromium's very first launch on a fresh machine sets up its profile and fonts slowly (once seen to miss a
    page): launch it once on a blank page before the page checks."""
    chromium(tmp_path_factory.mktemp("warmup"), "about:blank", "--dump-dom")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--virtual-time-budget=8000",
            *args,
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@browser
@charts
@pytest.mark.usefixtures("_warm_chromium")
def test_job_page_dom_has_answer_charts_result_and_artifacts(stack, job, tmp_path):
    dom = chromium(tmp_path, f"{stack.api_url}/jobs/{job.id}", "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[dom.find("<main>") :][:3000]  # the script got to the end
    summary = job.result["summary"]  # the answer comes first: headline, verdict, comparison
    assert dom.index(html.escape(summary["headline"], quote=False)) < dom.index('id="charts"')
    assert 'class="verdict supports"' in dom and 'class="grid summary-table"' in dom
    assert dom.count('class="uplot') == 3  # one chart per metric: entropy_per_dim, fit_kl, fit_kl_final
    for chart, lines in (("entropy_per_dim", 1), ("fit_kl", 3), ("fit_kl_final", 1)):  # fit_kl: n = 2, 4, 8 overlaid
        assert f'aria-label="{chart}" data-series="{lines}"' in dom
    assert 'aria-label="entropy_per_dim" data-series="1" data-bands="0" data-scales="linear x, linear y"' in dom
    assert 'class="grid result-table"' in dom and "min_dimension" in dom and "100,000" in dom
    assert dom.count('src="blob:') == 2  # entropy_per_dim.png and sweep.png inline
    assert 'class="badge succeeded"' in dom and '<div id="error" class="error" hidden="">' in dom


@browser
@charts
@pytest.mark.usefixtures("_warm_chromium")
def test_job_page_screenshot_shows_live_charts(stack, job, tmp_path):
    shot = tmp_path / "job.png"
    run = chromium(tmp_path, f"{stack.api_url}/jobs/{job.id}", f"--screenshot={shot}")
    assert shot.exists(), run.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape == (HEIGHT, WIDTH, 3)
    assert img.std() > 0.05  # not a blank page
    # The charts sit below the job summary and its answer; their curves are drawn in the series colour.
    below = img[250:, :]
    near_series = np.abs(below - SERIES_RGB).max(axis=-1) < 0.08
    assert near_series.sum() > 300, f"only {near_series.sum()} curve pixels"
    if os.environ.get("GRADLAB_SCREENSHOTS"):  # kept for a look
        shutil.copy(shot, Path(os.environ["GRADLAB_SCREENSHOTS"]) / "job.png")
    assert (below.min(axis=-1) < 0.5).mean() > 0.005  # axes, ticks and labels


@browser
@charts
@pytest.mark.usefixtures("_warm_chromium")
def test_job_page_shades_each_arms_seeds(stack, job, tmp_path):
    """A job whose arms ran over seeds logs each seed's curve ("chi_exact/seed1/heldout_loss") beside the arm's mean:
    the page draws one line per arm, shaded by its seeds' min–max band, not a line per seed."""
    spec = {
        "kind": "momentum_accumulation",
        "device": "cpu",
        "params": {"arms": ["chi_exact", "per_micro_batch"], "steps": 48, "eval_every": 8, "seeds": 3, "hidden": 8},
    }
    with Client(stack.api_url) as client:
        done = client.wait(client.submit(spec).id, timeout=120)
    assert done.succeeded, done
    dom = chromium(tmp_path, f"{stack.api_url}/jobs/{done.id}", "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[dom.find("<main>") :][:3000]
    charts = {c: (n, b) for c, n, b in re.findall(r'aria-label="([^"]*)" data-series="(\d+)" data-bands="(\d+)"', dom)}
    assert charts == dict.fromkeys(("heldout_accuracy", "heldout_loss", "train_loss"), ("2", "2")), charts
    if os.environ.get("GRADLAB_SCREENSHOTS"):  # kept for a look
        shot = Path(os.environ["GRADLAB_SCREENSHOTS"]) / "job-seeds.png"
        chromium(tmp_path, f"{stack.api_url}/jobs/{done.id}", f"--screenshot={shot}")


@browser
@pytest.mark.usefixtures("_warm_chromium")
def test_index_lists_the_job(stack, job, tmp_path):
    dom = chromium(tmp_path, stack.api_url + "/", "--dump-dom").stdout
    assert f'href="/jobs/{job.id}"' in dom and 'class="badge succeeded"' in dom


def test_pages_and_static_files_are_served_locally(api):
    page = api.get("/jobs/anything")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp and "unsafe" not in csp
    assert "://" not in page.text  # no CDN, nothing remote
    for name in ("app.js", "app.css"):
        assert api.get(f"/static/{name}").status_code == 200
    for name in ("uplot.js", "uplot.css"):
        got = api.get(f"/vendor/{name}")
        if UPLOT.exists():
            assert (
                got.status_code == 200
                and got.content
                == (UPLOT.parent / ("uPlot.iife.min.js" if name == "uplot.js" else "uPlot.min.css")).read_bytes()
            )
        else:
            assert got.status_code == 404 and "make install" in got.json()["detail"]
    assert api.get("/vendor/package.json").status_code == 404  # only the files the pages load


STUDY = {
    "kind": "init_averaging",
    "base": {"widths": [32, 64, 32], "batch": 64, "trials": 1},
    "device": "cpu",
    "grid": {"activation": ["linear", "relu"]},
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def study(stack, api, job):
    made = api.post("/v1/studies", json=STUDY).json()
    deadline = time.monotonic() + 120
    while (s := api.get(f"/v1/studies/{made['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, s
        time.sleep(0.2)
    assert s["status"] == "succeeded", s
    return s


@browser
@charts
@pytest.mark.usefixtures("_warm_chromium")
def test_study_page_compares_settings_and_overlays_their_curves(stack, study, tmp_path):
    url = f"{stack.api_url}/studies/{study['id']}"
    dom = chromium(tmp_path, url, "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[dom.find("<main>") :][:3000]
    assert 'class="grid study-table"' in dom and "activation=relu" in dom and "(baseline)" in dom
    assert "max_relative_error" in dom and " Δ " in dom  # figures with CIs and paired differences
    charts = re.findall(r'aria-label="([^"]*)" data-series="(\d+)" data-bands="(\d+)"', dom)
    probe = httpx.get(
        f"{stack.api_url}/v1/studies/{study['id']}/bands", params={"name": "forward_moment/arithmetic"}
    ).text[:300]
    # one line per setting (the mean of its 2 seeds), each shaded by its seeds' min–max band
    assert ("forward_moment/arithmetic", "2", "2") in charts, (charts, dom[dom.find('id="charts"') :][:300], probe)
    assert dom.count('href="/jobs/') == 4
    shot = tmp_path / "study.png"
    chromium(tmp_path, url, f"--screenshot={shot}")
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.std() > 0.05 and (np.abs(img - SERIES_RGB).max(axis=-1) < 0.08).sum() > 100
    # the first setting's band: its colour at the fill's opacity (0x30) over the white page
    band_rgb = 1 - (1 - SERIES_RGB) * 0x30 / 255
    assert (np.abs(img - band_rgb).max(axis=-1) < 0.02).sum() > 50
    if os.environ.get("GRADLAB_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["GRADLAB_SCREENSHOTS"]) / "study.png")


@browser
@charts
@pytest.mark.usefixtures("_warm_chromium")
def test_compare_page_puts_jobs_side_by_side(stack, study, tmp_path):
    a, b = (j["id"] for j in study["jobs"][:2])
    index = chromium(tmp_path, stack.api_url + "/", "--dump-dom").stdout
    assert 'id="compare"' in index and f'aria-label="select {a}"' in index  # the list's checkboxes
    dom = chromium(tmp_path, f"{stack.api_url}/compare?ids={a},{b}", "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[dom.find("<main>") :][:3000]
    assert dom.count('class="answer"') == 2 and dom.count('class="grid summary-table"') == 2
    charts = re.findall(r'aria-label="([^"]*)" data-series="(\d+)"', dom)
    assert ("forward_moment", "6") in charts, (charts, dom[dom.find('id="error"') :][:300])  # 3 means × 2 jobs


@browser
@pytest.mark.usefixtures("_warm_chromium")
def test_queued_job_page_shows_its_place_in_the_queue(stack, job, tmp_path, pg_database):
    """A job in a queue that no worker consumes stays queued; its page says where it stands there."""
    import json
    import uuid

    from sqlalchemy import create_engine, text

    job_id = str(uuid.uuid4())
    engine = create_engine(pg_database[1])
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, kind, status, params, seed, device_requested, queue, "
                "timeout_s, progress, message, attempt, created_at, published_at) VALUES (:id, 'local', "
                "'init_averaging', 'queued', :params, 0, 'auto', 'nobody', 60, 0, 'queued', 0, now(), "
                "now())"
            ),
            {"id": job_id, "params": json.dumps({"widths": [8, 8]})},
        )
    engine.dispose()
    dom = chromium(tmp_path, f"{stack.api_url}/jobs/{job_id}", "--dump-dom").stdout
    assert '<p id="job-queue" class="muted">1st in the nobody queue</p>' in dom, dom[dom.find("<main>") :][:2000]


@browser
@pytest.mark.usefixtures("_warm_chromium")
def test_dataset_page_shows_its_preview_and_a_rejection_its_reason(stack, api, job, tmp_path):
    import io

    buf = io.BytesIO()
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(buf, x=x, y=np.arange(10) % 2)
    ds = api.post("/v1/datasets", files={"file": ("shown.npz", buf.getvalue())}).json()
    dom = chromium(tmp_path, f"{stack.api_url}/datasets/{ds['id']}", "--dump-dom").stdout
    assert 'data-state="done"' in dom and 'class="badge ready"' in dom, dom[dom.find("<main>") :][:3000]
    assert "shown.npz" in dom and "arrays" in dom
    balance = dom[dom.index("<caption>label_balance</caption>") :]
    assert '<td class="">0</td><td class="num">5</td>' in balance  # five of each label
    assert "<caption>stats</caption>" in dom and '<td class="num">18</td>' in dom  # mean of column 0: 0, 4, …, 36

    bad = b"a\n1\nx\n"
    up = api.post("/v1/datasets/uploads", json={"filename": "bad.csv", "size": len(bad)}).json()
    api.patch(f"/v1/datasets/uploads/{up['id']}", content=bad, headers={"Upload-Offset": "0"})
    assert api.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    deadline = time.monotonic() + 120
    while api.get(f"/v1/datasets/{up['dataset_id']}").json()["status"] != "rejected" and time.monotonic() < deadline:
        time.sleep(0.1)
    dom = chromium(tmp_path, f"{stack.api_url}/datasets/{up['dataset_id']}", "--dump-dom").stdout
    assert 'class="badge rejected"' in dom and 'id="dataset-reason" class="error">file:' in dom
