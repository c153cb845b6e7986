"""The API's documentation pages offline, the pages' one template, and `make run HOST= PORT=`.

/docs (Swagger UI) and /redoc (ReDoc) are opened in a real headless Chromium that refuses every request beyond
loopback (tests/browser.py): they must render the whole API from files installed with the project, under the pages'
Content-Security-Policy. Screenshots go to the test's tmp dir (and to $GRADLAB_SCREENSHOTS when set).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from api.routes import web
from tests.browser import CHROMIUM, Browser
from tests.stack import BIN, ROOT, free_port, wait_http

VENDOR = Path(web.VENDOR_DIR)
browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found: apt-get install -y chromium")
vendored = pytest.mark.skipif(
    not all((VENDOR / path).is_file() for path, _ in web.VENDOR_FILES.values()),
    reason="browser libraries not installed: `make install` runs npm ci --prefix api/vendor",
)
# What ReDoc's bundle tries that the policy refuses, harmlessly: the scroll bars' CSS it adds inline as it loads
# (served from /vendor instead), its search worker from a blob: URL (search is off), and the Redocly logo from
# their CDN in its footer (refused before any request is made).
REDOC_REFUSED = {"style-src-elem inline", "worker-src blob", "img-src https://cdn.redoc.ly/redoc/logo-mini.svg"}
PAGES = ["/", "/jobs/x", "/studies/x", "/datasets/x", "/models/x", "/compare", "/docs", "/redoc"]


def keep(shot: Path) -> None:
    if os.environ.get("GRADLAB_SCREENSHOTS"):
        shutil.copy(shot, Path(os.environ["GRADLAB_SCREENSHOTS"]) / shot.name)


def operations(api) -> int:
    schema = api.get("/openapi.json").json()
    methods = {"get", "head", "post", "put", "patch", "delete"}
    return sum(1 for item in schema["paths"].values() for method in item if method in methods)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_is_the_base_template_under_the_policy(api, path):
    """One head and nav for every page (base.html), and nothing inline: no script or style element without a file,
    no style attribute, no remote URL."""
    page = api.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'; script-src 'self';" in csp and "unsafe" not in csp and "style-src 'self'" in csp
    html = page.text
    assert html.count('<a class="brand" href="/">gradlab</a>') == 1 and 'href="/docs"' in html
    assert len(re.findall(r"<script[^>]*>", html)) == len(re.findall(r'<script src="/(?:static|vendor)/', html))
    assert "<style" not in html and " style=" not in html and "://" not in html


def test_only_redoc_names_a_nonce_and_it_changes_per_response(api):
    first, second = api.get("/redoc"), api.get("/redoc")
    nonces = [re.search(r"'nonce-([^']+)'", r.headers["content-security-policy"]).group(1) for r in (first, second)]
    assert nonces[0] != nonces[1] and f'<meta name="csp-nonce" content="{nonces[0]}">' in first.text
    assert "nonce" not in api.get("/docs").headers["content-security-policy"]


def test_templates_escape_what_they_are_given():
    html = web.TEMPLATES.get_template("docs.html").render(page="docs", openapi_url='"><script>alert(1)</script>')
    assert "<script>alert" not in html and "&#34;&gt;&lt;script&gt;" in html


def test_vendor_files_are_the_installed_ones(api):
    for name, (path, media_type) in web.VENDOR_FILES.items():
        got = api.get(f"/vendor/{name}")
        if (VENDOR / path).is_file():
            assert got.status_code == 200 and got.headers["content-type"].startswith(media_type)
            assert got.content == (VENDOR / path).read_bytes()
        else:
            assert got.status_code == 404 and "make install" in got.json()["detail"]
    assert api.get("/vendor/package.json").status_code == 404


@browser
@vendored
def test_swagger_ui_lists_every_operation_with_the_network_off(stack, api, tmp_path):
    with Browser(tmp_path / "profile", height=1000) as b:
        b.open(f"{stack.api_url}/docs")
        want = operations(api)
        b.wait(f"document.querySelectorAll('#swagger-ui .opblock').length >= {want}")
        assert b.js("document.querySelector('#swagger-ui .info .title').textContent").startswith("gradlab")
        assert b.js("document.querySelectorAll('#swagger-ui .opblock').length") == want
        keep(b.screenshot(tmp_path / "docs.png", full_page=False))
        state = b.state()
        assert b.blocked == [] and state["violations"] == [] and state["errors"] == [], (b.blocked, state)
    assert all(re.match(r"(http://127\.0\.0\.1:\d+/|data:)", url) for url in b.requested), b.requested
    assert f"{stack.api_url}/openapi.json" in b.requested


@browser
@vendored
def test_redoc_renders_every_operation_with_the_network_off(stack, api, tmp_path):
    with Browser(tmp_path / "profile", height=1000) as b:
        b.open(f"{stack.api_url}/redoc")
        want = operations(api)
        b.wait(f"document.querySelectorAll('#redoc [data-section-id^=\"operation/\"]').length >= {want}")
        b.wait("document.querySelector('#redoc h1') !== null")
        assert b.js("document.querySelector('#redoc h1').textContent").startswith("gradlab")
        keep(b.screenshot(tmp_path / "redoc.png", full_page=False))
        state = b.state()
        assert b.blocked == [] and state["errors"] == [], (b.blocked, state)
        assert set(state["violations"]) <= REDOC_REFUSED, state["violations"]
        # styled-components' rules applied through the nonce: the operation headings are laid out by them
        assert b.js("getComputedStyle(document.querySelector('#redoc h2')).fontFamily") != ""
        assert b.js("document.querySelector('style[data-styled]').sheet.cssRules.length") > 50
    assert all(re.match(r"(http://127\.0\.0\.1:\d+/|data:)", url) for url in b.requested), b.requested


def test_make_run_passes_host_port_and_data_dir_to_gradlab_up(tmp_path):
    """`make run HOST=… PORT=… DATA_DIR=…` starts `gradlab up` there (its stamp taken as up to date: no reinstall)."""
    port, data = free_port(), tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    venv = BIN.parent
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [
            "make",
            "-o",
            f"{venv}/.installed-stamp",
            "run",
            f"VENV={venv}",
            "HOST=127.0.0.1",
            f"PORT={port}",
            f"DATA_DIR={data}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/healthz",
            timeout=90,
            proc=proc,
            log_tail=lambda: (tmp_path / "run.log").read_text()[-3000:],
        )
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
        assert (data / "gradlab.sqlite3").exists()
        assert f"gradlab is up: http://127.0.0.1:{port}" in (tmp_path / "run.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
