"""A headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the page tests.

Every request the page makes passes through ``Fetch`` interception: loopback requests go on, any other is failed
and recorded, and Chromium's resolver maps every other host to nothing besides, so a page works here only if it
needs nothing outside this machine. Content-Security-Policy violations and uncaught errors are recorded from a
listener installed before any page script runs. ``wait`` polls a JavaScript expression; ``screenshot`` writes a PNG.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
RECORDER = """
window.__gradlab = {violations: [], errors: []};
document.addEventListener("securitypolicyviolation", e =>
  window.__gradlab.violations.push(`${e.violatedDirective} ${e.blockedURI}`));
window.addEventListener("error", e => window.__gradlab.errors.push(String(e.message)));
"""


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process and one page (tab) in it; use as a context manager."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1000):
        self.profile, self.width, self.height = profile, width, height
        self.blocked: list[str] = []  # URLs of non-loopback requests, refused
        self.requested: list[str] = []  # every URL the page asked for
        self._next = 0

    def __enter__(self) -> Browser:
        if CHROMIUM is None:
            raise BrowserError("headless Chromium not found: apt-get install -y chromium")
        self.profile.mkdir(parents=True, exist_ok=True)
        (self.profile / "DevToolsActivePort").unlink(missing_ok=True)  # a profile used before keeps its old one
        self.proc = subprocess.Popen(
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
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def _attach(self) -> None:
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise BrowserError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(p for p in pages if p["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30, legacy=True)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.enable")
        self.send("Page.addScriptToEvaluateOnNewDocument", source=RECORDER)
        self.send("Fetch.enable", patterns=[{"urlPattern": "*"}])

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        os.killpg(self.proc.pid, signal.SIGTERM)  # Chromium and its renderers (a session of their own)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # --- the protocol ------------------------------------------------------------------------------------------------
    def send(self, method: str, timeout: float = 60, **params) -> dict:
        """Send one command and return its result, answering the requests paused meanwhile."""
        self._next += 1
        mine = self._next
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == mine:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Fetch.requestPaused":
                self._route(message["params"])

    def _route(self, paused: dict) -> None:
        url = paused["request"]["url"]
        self.requested.append(url)
        self._next += 1
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname in LOOPBACK:
            command = {"method": "Fetch.continueRequest", "params": {"requestId": paused["requestId"]}}
        else:
            self.blocked.append(url)
            command = {
                "method": "Fetch.failRequest",
                "params": {"requestId": paused["requestId"], "errorReason": "InternetDisconnected"},
            }
        self.ws.send(json.dumps({"id": self._next, **command}))

    # --- what the tests use --------------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate, and return once the new document has a body (not the previous page's, still shown)."""
        self.send("Page.navigate", url=url)
        self.wait(f"location.href === {json.dumps(url)} && document.body !== null")

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        got = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def wait(self, expression: str, timeout: float = 60) -> None:
        """Poll until the expression is truthy; fails with the page's recorded errors."""
        deadline = time.monotonic() + timeout
        while not self._truthy(expression):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}; page state: {self.state()}")
            time.sleep(0.1)

    def _truthy(self, expression: str) -> bool:
        try:
            return bool(self.js(expression))
        except BrowserError:  # a document still loading (no body yet): not yet
            return False

    def state(self) -> dict:
        """CSP violations and uncaught errors recorded so far, and the error box's text when the page has one."""
        return self.js(
            "({...(window.__gradlab || {}), box: (document.querySelector('#error') || {}).textContent || '',"
            " url: location.href})"
        )

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 8000), "scale": 1}
            params["captureBeyondViewport"] = True
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", **params)["data"]))
        return path
