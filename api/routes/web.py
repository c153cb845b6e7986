"""The browser pages: a job list at ``/``, a job page at ``/jobs/{id}``, studies, comparisons, datasets and models, and
the API's own documentation at ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc).

Each page is one Jinja2 template (``api/templates``, autoescaped) extending ``base.html``, which holds the head and
the navigation. The pages carry no data: their script reads everything through the public API with fetch, under the
same authentication as any other client (the key is typed into the page, never put in URLs). Every script and style
is a same-origin file (``/static``, or ``/vendor`` for the npm libraries), so the Content-Security-Policy allows no
inline script or style and nothing remote: the pages and the API docs work on a closed network.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader

from api.problems import Problem

PACKAGE = Path(__file__).resolve().parents[1]
STATIC_DIR = PACKAGE / "static"
TEMPLATES = Environment(
    loader=FileSystemLoader(PACKAGE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
)
OPENAPI_URL = "/openapi.json"
# Browser libraries from the npm registry, pinned by api/vendor/package-lock.json and installed by `make install`
# (npm ci --prefix api/vendor); only the files the pages load are served.
VENDOR_DIR = PACKAGE / "vendor" / "node_modules"
VENDOR_FILES = {
    "uplot.js": ("uplot/dist/uPlot.iife.min.js", "text/javascript"),
    "uplot.css": ("uplot/dist/uPlot.min.css", "text/css"),
    "swagger-ui.js": ("swagger-ui-dist/swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui-dist/swagger-ui.css", "text/css"),
    "redoc.js": ("redoc/bundles/redoc.standalone.js", "text/javascript"),
    # the scroll bars' style, which ReDoc's bundle would otherwise add inline as it loads (refused by the policy)
    "perfect-scrollbar.css": ("perfect-scrollbar/css/perfect-scrollbar.css", "text/css"),
}

# Only same-origin scripts, styles and API calls (no inline script or style); images also from blob:/data:
# (artifacts fetched with the key, Swagger UI's icons).
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'{style}; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def page(template: str, name: str, nonce: str | None = None, **context) -> HTMLResponse:
    """A template rendered with the page's name (the script's ``data-page``) under the pages' policy; ``nonce`` lets
    the style elements that carry it apply (ReDoc's), and nothing else inline."""
    style = f" 'nonce-{nonce}'" if nonce else ""
    html = TEMPLATES.get_template(template).render(page=name, nonce=nonce, **context)
    return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": POLICY.format(style=style)})


@router.get("/")
def index():
    return page("index.html", "index")


@router.get("/jobs/{job_id}")
def job_page(job_id: str):
    """The same page for every id: the script reads the id from the URL and the API answers 404 for unknown ones."""
    return page("job.html", "job")


# The list pages: one template (``listing.html``) with its heading, the filter the API takes and the columns that
# the script (``initListing``) fills, newest first, a page at a time.
LISTINGS = {
    "studies": {
        "heading": "Studies",
        "filter_param": "status",
        "choices": ["queued", "running", "succeeded", "failed", "cancelled"],
        "columns": ["study", "kind", "status", "progress", "settings × seeds", "created"],
        "empty": "No studies yet. Submit one with gradlab study submit study.json --wait (docs/studies.md).",
    },
    "datasets": {
        "heading": "Datasets",
        "filter_param": "status",
        "choices": ["uploading", "validating", "ready", "rejected"],
        "columns": ["dataset", "file", "status", "kind", "shape", "size", "created"],
        "empty": "No datasets yet. Upload one with gradlab datasets upload FILE (docs/datasets.md).",
    },
    "models": {
        "heading": "Models",
        "filter_param": "source",
        "choices": ["uploaded", "exported"],
        "columns": ["model", "file", "type", "parameters", "weights", "created"],
        "empty": "No models yet. Upload one with gradlab models upload config.json [model.safetensors].",
    },
}


@router.get("/studies")
def studies_page():
    """The caller's studies, newest first, each linked to its comparison page."""
    return page("listing.html", "studies", **LISTINGS["studies"])


@router.get("/datasets")
def datasets_page():
    """The caller's uploaded datasets (an interrupted upload shows as uploading), each linked to its page."""
    return page("listing.html", "datasets", **LISTINGS["datasets"])


@router.get("/models")
def models_page():
    """The caller's stored models, each linked to its page."""
    return page("listing.html", "models", **LISTINGS["models"])


@router.get("/compare")
def compare_page():
    """Jobs of one kind side by side (``?ids=a,b,…``, chosen on the job list): answers, then curves overlaid."""
    return page("compare.html", "compare")


@router.get("/studies/{study_id}")
def study_page(study_id: str):
    """A study's comparison page; like the job page, the script reads the id from the URL."""
    return page("study.html", "study")


@router.get("/datasets/{dataset_id}")
def dataset_page(dataset_id: str):
    """An uploaded dataset: its status (or why it was rejected), shape and preview."""
    return page("dataset.html", "dataset")


@router.get("/models/{model_id}")
def model_page(model_id: str):
    """An uploaded model: what it is, its size, how a job names it, and its tensors."""
    return page("model.html", "model")


@router.get("/docs")
def swagger_ui():
    """The OpenAPI document in Swagger UI (operations, schemas, try-it-out), from files installed with the project."""
    return page("docs.html", "docs", openapi_url=OPENAPI_URL)


@router.get("/redoc")
def redoc():
    """The OpenAPI document as a ReDoc reference, from files installed with the project."""
    return page("redoc.html", "redoc", nonce=secrets.token_urlsafe(18), openapi_url=OPENAPI_URL)


@router.get("/vendor/{name}")
def vendor(name: str):
    """A browser library, as installed from the lock file; a 404 that says how to install it when it is missing."""
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
