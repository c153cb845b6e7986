"""The OpenAPI document, with every error response described as it is sent: RFC 9457 problem+json."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}},
            },
        },
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
ERRORS = {
    "400": "bad cursor or parameter",
    "401": "missing, unknown or revoked API key",
    "404": "no such resource (or another tenant's)",
    "409": "conflict with the resource's state",
    "413": "request body too large",
    "422": "invalid field (the problem names it)",
    "429": "tenant limit reached (see Retry-After)",
    "503": "database or broker unavailable",
}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        components["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key from `gradlab keys create`"}
        }
        for path, path_item in schema["paths"].items():
            for op in path_item.values():
                if path.startswith(("/v1/jobs", "/v1/datasets", "/v1/models", "/v1/studies")):
                    op["security"] = [{"apiKey": []}]
                responses = op.setdefault("responses", {})
                for code, text in ERRORS.items():
                    old = responses.get(code, {})
                    responses[code] = {
                        "description": old.get("description", text),
                        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook for a custom schema
