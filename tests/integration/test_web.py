"""The web pages in a real headless Chromium (Debian's ``chromium`` package) against a real API and worker: the job
page of a finished job shows its answer first, then one uPlot chart per metric with the series overlaid, the full
result and the artifacts, and the screenshot is not blank. The charts need uPlot from ``make install`` (npm).

The later tests drive Chromium over the DevTools protocol (tests/browser.py: every non-loopback request refused) to
read what the charts drew (ticks, notes, where the plot starts) and to take screenshots, kept in the test's tmp dir
and copied to $GRADLAB_SCREENSHOTS when set."""

from __future__ import annotations

import html
import json
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
from tests.browser import Browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
UPLOT = Path(__file__).resolve().parents[2] / "api" / "vendor" / "node_modules" / "uplot" / "dist" / "uPlot.iife.min.js"
STATIC = Path(__file__).resolve().parents[2] / "api" / "static"
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
        "entropy_dims": [64],  # one n: entropy_per_dim is a single point
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
    # every script a page names is one of the files under api/static, served from there, in the order that
    # loads the shared modules before the pages that use them
    scripts = re.findall(r'<script src="/static/([\w.-]+)"', page.text)
    assert scripts == ["charts.js", "common.js", "chartset.js", "jobs.js", "study.js", "catalog.js"]
    for name in [*scripts, "app.css"]:
        got = api.get(f"/static/{name}")
        assert got.status_code == 200 and got.content == (STATIC / name).read_bytes()
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
    for name, heading in (("studies", "Studies"), ("datasets", "Datasets"), ("models", "Models")):
        listing = api.get(f"/{name}")
        assert (
            listing.status_code == 200
            and f'data-page="{name}"' in listing.text
            and f"<h1>{heading}</h1>" in listing.text
        )
        assert listing.headers["content-security-policy"] == csp and "://" not in listing.text


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
    balance = dom[dom.index("<caption>label balance</caption>") :]
    assert "<th>0</th><th>1</th>" in balance and '<td class="num">5</td><td class="num">5</td>' in balance  # 5 each
    assert "per column: 4 columns" in dom and '<td class="num">18</td>' in dom  # mean of column 0: 0, 4, …, 36

    bad = b"a\n1\nx\n"
    up = api.post("/v1/datasets/uploads", json={"filename": "bad.csv", "size": len(bad)}).json()
    api.patch(f"/v1/datasets/uploads/{up['id']}", content=bad, headers={"Upload-Offset": "0"})
    assert api.post(f"/v1/datasets/uploads/{up['id']}/complete").status_code == 202
    deadline = time.monotonic() + 120
    while api.get(f"/v1/datasets/{up['dataset_id']}").json()["status"] != "rejected" and time.monotonic() < deadline:
        time.sleep(0.1)
    dom = chromium(tmp_path, f"{stack.api_url}/datasets/{up['dataset_id']}", "--dump-dom").stdout
    assert 'class="badge rejected"' in dom and 'id="dataset-reason" class="error">file:' in dom


# --- what the charts draw, read in the page (tests/browser.py) ----------------------------------------------------
PALETTE_RGB = [np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)]) / 255 for c in ("#1f77b4", "#ff7f0e", "#2ca02c")]
# per chart: its dataset (series, ticks), the note under its title, where its plot area starts (the y axis width),
# the widest y tick label as the axis font draws it, and the canvas's place on the page
CHARTS_JS = """(() => {
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  return Object.fromEntries([...document.querySelectorAll("figure.chart")].map(f => {
    const ticks = (f.dataset.yTicks || "").split(" ").filter(Boolean);
    const box = f.querySelector("canvas").getBoundingClientRect();
    return [f.getAttribute("aria-label"), {...f.dataset, note: f.querySelector(".note").textContent,
      axis: parseFloat(f.querySelector(".u-over").style.left),
      widest: Math.max(0, ...ticks.map(t => measure.measureText(t).width)),
      box: [box.left + scrollX, box.top + scrollY, box.width, box.height]}];
  }));
})()"""


def keep(shot: Path) -> Path:
    if os.environ.get("GRADLAB_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["GRADLAB_SCREENSHOTS"]) / shot.name)
    return shot


def charts_on(url: str, tmp_path: Path, shot: str) -> tuple[dict, np.ndarray]:
    """The charts of a page once its script is done, and its full-page screenshot as an RGB array."""
    import matplotlib.image

    with Browser(tmp_path / f"profile-{shot}", width=WIDTH, height=1000) as b:
        b.open(url)
        b.wait("document.body.dataset.state === 'done'")
        charts = b.js(CHARTS_JS)
        image = matplotlib.image.imread(keep(b.screenshot(tmp_path / shot)))[..., :3]
        state = b.state()
    assert b.blocked == [] and state["violations"] == [] and state["errors"] == [] and not state["box"], state
    return charts, image


def ticks(chart: dict) -> list[float]:
    return [float(t) for t in chart["yTicks"].split()]


def pixels_near(image: np.ndarray, box: list[float], rgb: np.ndarray) -> int:
    x, y, w, h = (int(v) for v in box)
    return int((np.abs(image[y : y + h, x : x + w] - rgb).max(axis=-1) < 0.1).sum())


def assert_labels_fit(charts: dict) -> None:
    """Every y tick label is short, differs from its neighbours and fits the axis uPlot was given for it."""
    for name, chart in charts.items():
        labels = chart["yTicks"].split()
        assert labels and len(set(labels)) == len(labels), (name, labels)
        assert all(len(label) <= 8 for label in labels) and len(labels) <= 12, (name, labels)  # log axes: thinned
        assert chart["widest"] + 8 <= chart["axis"], (name, chart["widest"], chart["axis"])


@pytest.fixture(scope="module")
def contrastive(stack, job):
    """Its gradient check is logged once, at step 0: single-point series of very small and small values."""
    spec = {
        "kind": "contrastive_accumulation",
        "device": "cpu",
        "params": {"widths": [32, 16], "batch_size": 64, "chunk_size": 16, "steps": 3},
    }
    with Client(stack.api_url) as client:
        done = client.wait(client.submit(spec).id, timeout=180)
    assert done.succeeded, done
    return done


@browser
@charts
def test_single_point_series_show_their_value(stack, job, contrastive, tmp_path):
    """embedding_dim's entropy_per_dim (one n) and contrastive's gradient check (step 0) were empty frames with a y
    axis reading 0/0/0/0: now a dot, centred on its own step, in a y range around its value, and the value written."""
    charts, image = charts_on(f"{stack.api_url}/jobs/{job.id}", tmp_path, "embedding-single-point.png")
    entropy = charts["entropy_per_dim"]
    value = job.result["entropy_per_dim"][0]["h_n_over_n"]
    assert entropy["note"].startswith("value ") and float(entropy["note"].split()[1]) == pytest.approx(value, rel=1e-3)
    assert min(ticks(entropy)) < value < max(ticks(entropy)) and entropy["xTicks"] == "64"
    assert pixels_near(image, entropy["box"], PALETTE_RGB[0]) > 20  # the dot
    assert_labels_fit(charts)

    charts, image = charts_on(f"{stack.api_url}/jobs/{contrastive.id}", tmp_path, "contrastive-single-point.png")
    for name in ("grad_rel_diff_accumulated", "grad_rel_diff_naive"):
        chart, value = charts[name], contrastive.result["grad_check"][name.removeprefix("grad_")]
        assert float(chart["note"].split()[1]) == pytest.approx(value, rel=1e-3), chart
        assert min(ticks(chart)) < value < max(ticks(chart)) and chart["xTicks"] == "0", chart
        assert pixels_near(image, chart["box"], PALETTE_RGB[0]) > 20, name
    assert "e-" in charts["grad_rel_diff_accumulated"]["yTicks"]  # ~1e-7: scientific, not 0, 0, 0
    assert charts["loss"]["note"] == ""  # a curve says nothing more
    assert_labels_fit(charts)


@pytest.fixture(scope="module")
def npz_64(api):
    """An .npz of 200 rows by 64 int64 columns (0…16, like scikit-learn's digits) with labels 0…9."""
    import io

    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(200, 64), dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=np.arange(200) % 10)
    ds = api.post("/v1/datasets", files={"file": ("wide.npz", buf.getvalue())}).json()
    deadline = time.monotonic() + 120
    while (got := api.get(f"/v1/datasets/{ds['id']}").json())["status"] not in ("ready", "rejected"):
        assert time.monotonic() < deadline, got
        time.sleep(0.2)
    assert got["status"] == "ready", got
    return got, x


@pytest.fixture(scope="module")
def per_mean(stack, job, npz_64):  # job: its worker
    """init_averaging on a model: a curve per initialisation (its own and each mean's) of E[h²] over the model's
    non-square layers, ``layer_moment/<init>`` at step = the layer's place. Its dataset is the uploaded .npz (a link
    on the list)."""
    spec = {
        "kind": "init_averaging",
        "device": "cpu",
        "params": {
            "model": {"source": "builtin", "arch": "mlp", "hidden": 16, "depth": 1},
            "dataset": npz_64[0]["id"],
            "batch": 32,
            "trials": 1,
        },
    }
    with Client(stack.api_url) as client:
        done = client.wait(client.submit(spec).id, timeout=180)
    assert done.succeeded, done
    return done


@browser
@charts
def test_a_model_job_draws_a_curve_per_initialisation_over_its_layers(stack, per_mean, tmp_path):
    charts, image = charts_on(f"{stack.api_url}/jobs/{per_mean.id}", tmp_path, "init-averaging-layers.png")
    assert set(charts) == {"layer_moment"}, charts
    chart = charts["layer_moment"]
    moments = per_mean.result["layer_moments"]
    inits = ["own_init", *per_mean.result["means"]]
    assert set(moments) == set(inits) and chart["series"] == str(len(inits)), chart
    ticks = [float(t) for t in chart["xTicks"].split()]
    assert ticks[0] == 0 and ticks[-1] <= len(moments["own_init"]) - 1, chart  # its own steps: the layers
    for rgb in PALETTE_RGB:  # the first three inits' curves, each in its colour
        assert pixels_near(image, chart["box"], rgb) > 20, rgb
    assert_labels_fit(charts)


@browser
def test_tick_labels_are_compact_in_the_page(stack, tmp_path):
    """The page's own label function (charts.js), run in the browser: SI suffixes from ten thousand up, scientific
    below 1e-3, the decimals the spacing needs; no "100,000" to be clipped to "00,000"."""
    with Browser(tmp_path / "profile") as b:
        b.open(f"{stack.api_url}/")
        b.wait("window.gradlabCharts !== undefined")
        label = "gradlabCharts.tickLabels({}, {})".format
        assert b.js(label("[0, 50000, 100000, 150000]", "false")) == ["0", "50k", "100k", "150k"]
        assert b.js(label("[1e5, 1.005e5, 1.01e5]", "false")) == ["100k", "100.5k", "101k"]
        assert b.js(label("[2e6, 4e6]", "false")) == ["2M", "4M"]
        assert b.js(label("[9e-8, 9.5e-8, 1e-7, 1.05e-7]", "false")) == ["9e-8", "9.5e-8", "1e-7", "1.05e-7"]
        assert b.js(label("[0, 0.25, 0.5]", "false")) == ["0", "0.25", "0.50"]
        assert b.js(label("[1500, 2000, 2500]", "false")) == ["1500", "2000", "2500"]
        assert b.js(label("[1, 10, 100, 1000, 10000, 100000]", "true")) == ["1", "10", "100", "1000", "10k", "100k"]


@browser
@charts
def test_study_page_leads_with_its_answer_and_fits_the_width(stack, study, tmp_path):
    """The sentence names the setting that wins on the figure the verdicts rest on (max_relative_error: lower is
    better), its mean ± CI and its paired difference with the 95 % CI; no table scrolls sideways at 1024 px."""
    c = study["comparison"]
    best = min(c["rows"], key=lambda r: r["figures"]["max_relative_error"]["mean"])
    with Browser(tmp_path / "profile", width=1024, height=900) as b:
        b.open(f"{stack.api_url}/studies/{study['id']}")
        b.wait("document.body.dataset.state === 'done' && document.querySelector('#study-answer').textContent")
        answer = b.js("document.querySelector('#study-answer').textContent")
        b.js("document.querySelector('#all-figures').open = true")
        widths = b.js(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth, "
            "...[...document.querySelectorAll('table')].map(t => t.scrollWidth - t.parentElement.clientWidth)]"
        )
        keep(b.screenshot(tmp_path / "study.png"))
    assert answer.startswith(f"{best['label']}") and " wins on max_relative_error (lower is better): " in answer
    f = best["figures"]["max_relative_error"]
    assert f"{f['mean']:.4g}"[:5] in answer and "95 % CI" in answer, answer
    other = next(r for r in c["rows"] if r is not best)
    d = (
        other["paired"]["max_relative_error"]
        if best["setting"] == c["baseline"]
        else best["paired"]["max_relative_error"]
    )
    assert f"{abs(d['mean']):.4g}"[:5] in answer, (answer, d)
    assert widths[0] <= widths[1] and max(widths[2:]) <= 0, widths


@browser
def test_wide_npz_dataset_page_summarises_its_columns(stack, npz_64, tmp_path):
    """64 int64 columns: one line of dtypes and ranges, the per-column table folded away, a few rows shortened."""
    ds, x = npz_64
    with Browser(tmp_path / "profile", width=WIDTH, height=900) as b:
        b.open(f"{stack.api_url}/datasets/{ds['id']}")
        b.wait("document.body.dataset.state === 'done'")
        facts = b.js(
            "Object.fromEntries([...document.querySelectorAll('#preview table.kv tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent)))"
        )
        visible_int64 = b.js(
            "[...document.querySelectorAll('#preview td')]"
            ".filter(td => td.checkVisibility() && td.textContent === 'int64').length"
        )
        folded = b.js("[...document.querySelectorAll('#preview details')].map(d => [d.open, d.textContent.length])")
        height = b.js("document.documentElement.scrollHeight")
        keep(b.screenshot(tmp_path / "dataset-npz.png"))
    assert facts["shape"] == "200 rows × 64 columns" and facts["source dtypes"] == "int64 × 64", facts
    assert facts["min … max"] == f"{x.min()} … {x.max()}", facts
    lo, hi = x.mean(axis=0).min(), x.mean(axis=0).max()
    assert facts["column means"].split(" … ")[0] == f"{float(f'{lo:.4g}'):g}", (facts, lo, hi)
    assert visible_int64 == 0 and folded[0][0] is False, folded  # the 64 column rows are there, folded
    assert height < 1600  # was over 5,000 px: a row per column


@browser
def test_job_list_shows_model_and_dataset_with_links(stack, api, per_mean, npz_64, tmp_path):
    """The list's "model · dataset" cell: a built-in model by name, an uploaded dataset (or model) as a link to its
    page; the job page lists them too."""
    from tests.model_configs import TINY_GPT2

    config = ("config.json", json.dumps(TINY_GPT2).encode(), "application/json")
    model = api.post("/v1/models", files={"config": config}, timeout=120).json()
    spec = {"kind": "init_averaging", "device": "cpu", "params": {"model": model["use_as"], "batch": 16, "trials": 1}}
    queued = api.post("/v1/jobs", json=spec).json()
    ds = npz_64[0]["id"]
    with Browser(tmp_path / "profile", width=WIDTH, height=900) as b:
        b.open(f"{stack.api_url}/")
        b.wait(f"document.querySelector('a[href=\"/jobs/{queued['id']}\"]') !== null")
        cells = b.js(
            "Object.fromEntries([...document.querySelectorAll('#jobs tbody tr')].map(tr => "
            "[tr.querySelector('a').getAttribute('href'), [tr.querySelector('.ran-on').textContent, "
            "[...tr.querySelectorAll('.ran-on a')].map(a => a.getAttribute('href'))]]))"
        )
        keep(b.screenshot(tmp_path / "job-list.png"))
        assert cells[f"/jobs/{per_mean.id}"] == [f"mlp · dataset {ds[:8]}", [f"/datasets/{ds}"]], cells
        assert cells[f"/jobs/{queued['id']}"] == [f"model {model['id'][:8]} · digits", [f"/models/{model['id']}"]], (
            cells
        )
        b.open(f"{stack.api_url}/jobs/{per_mean.id}")
        b.wait("document.body.dataset.state === 'done'")
        assert b.js(f"document.querySelector('#job-facts a[href=\"/datasets/{ds}\"]') !== null")
        b.open(f"{stack.api_url}/models/{model['id']}")
        b.wait("document.body.dataset.state === 'done'")
        facts = b.js("[...document.querySelectorAll('#model-facts dd')].map(d => d.textContent)")
        keep(b.screenshot(tmp_path / "model.png"))
    assert model["id"] in facts and f"{model['n_params']:,}" in facts, facts


LIST_ROWS_JS = """[...document.querySelectorAll('#items tbody tr')].map(tr => ({
  href: tr.querySelector('a').getAttribute('href'), cells: [...tr.cells].map(td => td.textContent)}))"""


@browser
def test_list_pages_link_each_item_and_every_page_links_to_them(stack, api, study, npz_64, tmp_path):
    """/studies, /datasets and /models list the caller's items newest first, each a link to its page; the navigation
    of the job list and of each job page leads to them, and a study's child links to its study (JobOut.study_id)."""
    from tests.model_configs import TINY_GPT2

    config = ("config.json", json.dumps(TINY_GPT2).encode(), "application/json")
    model = api.post("/v1/models", files={"config": config}, timeout=120).json()
    ds = npz_64[0]
    child = study["jobs"][0]["id"]
    job = api.get(f"/v1/jobs/{child}").json()
    assert job["study_id"] == study["id"] and job["links"]["study"] == f"/v1/studies/{study['id']}", job
    with Browser(tmp_path / "profile", width=WIDTH, height=900) as b:
        seen = {}
        for name in ("studies", "datasets", "models"):
            b.open(f"{stack.api_url}/{name}")
            b.wait("document.body.dataset.state === 'done'")
            seen[name] = b.js(LIST_ROWS_JS)
            keep(b.screenshot(tmp_path / f"list-{name}.png"))
            assert b.blocked == [] and b.state()["violations"] == [] and b.state()["errors"] == [], b.state()
        b.open(f"{stack.api_url}/datasets")
        b.wait("document.body.dataset.state === 'done'")  # the unfiltered list first: its answer cannot come last
        assert f"/datasets/{ds['id']}" in [r["href"] for r in b.js(LIST_ROWS_JS)]
        b.js(
            "(() => { const f = document.querySelector('#filter'); f.value = 'rejected';"
            " f.dispatchEvent(new Event('change')); })()"
        )
        # the rejected ones only (others in this module may be), as the API counts them; "none" when there are none
        got = api.get("/v1/datasets", params={"status": "rejected", "limit": 100}).json()["items"]
        rejected = json.dumps([f"/datasets/{d['id']}" for d in got])
        b.wait(f"JSON.stringify({LIST_ROWS_JS}.map(r => r.href)) === {json.dumps(rejected)}")
        assert b.js("document.querySelector('#empty').hidden") is bool(got)
        navs = {}
        for page in ("/", f"/jobs/{child}"):
            b.open(f"{stack.api_url}{page}")
            navs[page] = b.js("[...document.querySelectorAll('header nav a')].map(a => a.getAttribute('href'))")
        b.wait(f"document.querySelector('#job-facts a[href=\"/studies/{study['id']}\"]') !== null")
        b.open(f"{stack.api_url}/")
        b.wait(f"document.querySelector('#jobs a[href=\"/studies/{study['id']}\"]') !== null")
        keep(b.screenshot(tmp_path / "job-list-with-studies.png"))
    studies = api.get("/v1/studies").json()["items"]
    assert [r["href"] for r in seen["studies"]] == [f"/studies/{s['id']}" for s in studies]
    row = next(r for r in seen["studies"] if r["href"] == f"/studies/{study['id']}")
    assert row["cells"][1:3] == [study["kind"], "succeeded"], row
    assert f"/datasets/{ds['id']}" in [r["href"] for r in seen["datasets"]]
    row = next(r for r in seen["datasets"] if r["href"] == f"/datasets/{ds['id']}")
    assert row["cells"][1:5] == ["wide.npz", "ready", "arrays", "200 rows × 64"], row
    row = next(r for r in seen["models"] if r["href"] == f"/models/{model['id']}")
    assert row["cells"][2:4] == ["gpt2", f"{model['n_params']:,}"], row
    for links in navs.values():
        assert {"/studies", "/datasets", "/models"} <= set(links), navs
