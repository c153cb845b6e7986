"""The browser pages: a job list at ``/`` and a job page at ``/jobs/{id}``.

The pages are static HTML that read everything through the public API with fetch, so they need no server-side
rendering and obey the same authentication as any other client (the key is typed into the page, never put in URLs).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# Only same-origin scripts, styles and API calls; images also from blob:/data: (artifacts fetched with the key).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
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
