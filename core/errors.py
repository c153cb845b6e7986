"""Why the service turns a request down, in terms its callers share: the API answers each with its HTTP status and a
problem document (``api.problems``); a message names the field and the reason."""

from __future__ import annotations


class Refused(Exception):
    """A request the service turns down. ``headers``: what the answer carries besides (Retry-After, Upload-Offset)."""

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, errors: list[dict] | None = None):
        super().__init__(detail)
        self.detail, self.headers, self.errors = detail, headers, errors


class Invalid(Refused):
    """The request names something it cannot have: each of ``errors`` gives the field, the message and its type."""

    @classmethod
    def of(cls, field: str, message: str, error_type: str = "value_error") -> Invalid:
        """One field: the detail is "<field>: <message>"."""
        return cls(f"{field}: {message}", errors=[{"field": field, "message": message, "type": error_type}])

    @classmethod
    def said(cls, message: str, error_type: str) -> Invalid:
        """A message already of the form "<field>: <reason>" (``UploadRejected``'s, the inspector's)."""
        field = message.split(":", 1)[0] if ":" in message else "body"
        return cls(message, errors=[{"field": field, "message": message, "type": error_type}])

    @classmethod
    def many(cls, errors: list[dict]) -> Invalid:
        return cls("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


class Malformed(Refused):
    """A parameter this service made and the caller sent back altered (a page cursor)."""


class NotFound(Refused):
    """No such thing, or another tenant's (the same answer, so ids of other tenants reveal nothing)."""


class Forbidden(Refused):
    """The caller may not do this (a non-admin key asking for an admin view)."""


class Conflict(Refused):
    """The thing is not in a state that allows this (a finished job, a completed upload, a reused key)."""


class TooLarge(Refused):
    """Bigger than the cap the service keeps."""


class Busy(Refused):
    """The tenant is at a cap; ``headers`` says when to retry."""


class Unavailable(Refused):
    """Something the service depends on cannot answer now; retry."""
