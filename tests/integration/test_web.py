"""The web pages in a real headless Chromium (Debian's ``chromium`` package) against a real API and worker: the job
page of a finished job draws its metric charts, result table and artifacts, and the screenshot is not blank."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from api.client import Client

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found: apt-get install -y chromium")

SPEC = {"kind": "embedding_dim", "device": "cpu",
        "params": {"vocab_sizes": [512, 100000], "entropy_dims": [16, 64, 128],
                   "sweep": {"vocab_size": 32, "target_rank": 4, "dims": [2, 4, 8], "steps": 100}}}
WIDTH, HEIGHT = 1280, 900
# matplotlib's and the page's first series colour (#1f77b4), as drawn on the chart canvases
SERIES_RGB = np.array([0x1F, 0x77, 0xB4]) / 255


@pytest.fixture(scope="module")
def job(stack, api):
    stack.start_worker()
    with Client(stack.api_url) as client:
        done = client.wait(client.submit(SPEC).id, timeout=60)
    assert done.succeeded, done
    return done


@pytest.fixture(scope="module", autouse=True)
def _warm_chromium(tmp_path_factory):
    """Chromium's very first launch on a fresh machine sets up its profile and fonts slowly (once seen to miss a
    page): launch it once on a blank page before the page checks."""
    chromium(tmp_path_factory.mktemp("warmup"), "about:blank", "--dump-dom")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=8000", *args, url],
        check=False, capture_output=True, text=True, timeout=60)


def test_job_page_dom_has_charts_result_and_artifacts(stack, job, tmp_path):
    dom = chromium(tmp_path, f"{stack.api_url}/jobs/{job.id}", "--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[dom.find("<main>"):][:3000]  # the script got to the end
    assert dom.count('<canvas class="chart-canvas"') == 3  # entropy_per_dim, fit_kl, fit_kl_final
    for prefix in ("entropy_per_dim", "fit_kl", "fit_kl_final"):
        assert f'aria-label="{prefix}"' in dom
    assert 'class="grid result-table"' in dom and "min_dimension" in dom and "100,000" in dom
    assert dom.count('src="blob:') == 2  # entropy_per_dim.png and sweep.png inline
    assert 'class="badge succeeded"' in dom and '<div id="error" class="error" hidden="">' in dom


def test_job_page_screenshot_shows_live_charts(stack, job, tmp_path):
    shot = tmp_path / "job.png"
    run = chromium(tmp_path, f"{stack.api_url}/jobs/{job.id}", f"--screenshot={shot}")
    assert shot.exists(), run.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape == (HEIGHT, WIDTH, 3)
    assert img.std() > 0.05  # not a blank page
    # The charts sit below the job summary; their curves are drawn in the series colour.
    charts = img[250:, :]
    near_series = np.abs(charts - SERIES_RGB).max(axis=-1) < 0.08
    assert near_series.sum() > 300, f"only {near_series.sum()} curve pixels"
    assert (charts.min(axis=-1) < 0.5).mean() > 0.005  # axes, ticks and labels


def test_index_lists_the_job(stack, job, tmp_path):
    dom = chromium(tmp_path, stack.api_url + "/", "--dump-dom").stdout
    assert f'href="/jobs/{job.id}"' in dom and 'class="badge succeeded"' in dom


def test_pages_and_static_files_are_served_locally(api):
    page = api.get("/jobs/anything")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self' covers scripts
    assert "://" not in page.text  # no CDN, nothing remote
    for name in ("app.js", "chart.js", "app.css"):
        assert api.get(f"/static/{name}").status_code == 200
