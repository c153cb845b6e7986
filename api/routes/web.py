"""The browser pages: a job list at ``/``, a job page at ``/jobs/{id}``, studies, comparisons and datasets.

The pages are static HTML that read everything through the public API with fetch, so they need no server-side
rendering and obey the same authentication as any other client (the key is typed into the page, never put in URLs).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.problems import Problem

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# Browser libraries from the npm registry, pinned by api/vendor/package-lock.json and installed by `make install`
# (npm ci --prefix api/vendor); only the files the pages load are served.
VENDOR_DIR = Path(__file__).resolve().parents[1] / "vendor" / "node_modules"
VENDOR_FILES = {
    "uplot.js": ("uplot/dist/uPlot.iife.min.js", "text/javascript"),
    "uplot.css": ("uplot/dist/uPlot.min.css", "text/css"),
}

# Only same-origin scripts, styles and API calls (no inline script or style); images also from blob:/data:
# (artifacts fetched with the key).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/jobs/{job_id}")
def job_page(job_id: str):
    """The same page for every id: the script reads the id from the URL and the API answers 404 for unknown ones."""
    return FileResponse(STATIC_DIR / "job.html", media_type="text/html", headers=HEADERS)


@router.get("/compare")
def compare_page():
    """Jobs of one kind side by side (``?ids=a,b,…``, chosen on the job list): answers, then curves overlaid."""
    return FileResponse(STATIC_DIR / "compare.html", media_type="text/html", headers=HEADERS)


@router.get("/studies/{study_id}")
def study_page(study_id: str):
    """A study's comparison page; like the job page, the script reads the id from the URL."""
    return FileResponse(STATIC_DIR / "study.html", media_type="text/html", headers=HEADERS)


@router.get("/datasets/{dataset_id}")
def dataset_page(dataset_id: str):
    """An uploaded dataset: its status (or why it was rejected), shape and preview."""
    return FileResponse(STATIC_DIR / "dataset.html", media_type="text/html", headers=HEADERS)


@router.get("/vendor/{name}")
def vendor(name: str):
    """uPlot, as installed from the lock file; a 404 that says how to install it when it is missing."""
    if name not in VENDOR_FILES:
        raise Problem(404, f"no vendor file {name!r}")
    path, media_type = VENDOR_FILES[name]
    if not (VENDOR_DIR / path).is_file():
        raise Problem(404, f"{name} is not installed: run `make install` (npm ci --prefix api/vendor)")
    return FileResponse(
        VENDOR_DIR / path,
        media_type=media_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=86400"},
    )
