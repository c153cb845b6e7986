"""Bearer-key authentication. With auth disabled (embedded default, loopback only) every caller is the local admin."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.deps import db
from api.problems import Problem
from core.jobs.keys import Principal, authenticate

LOCAL = Principal(tenant="local", admin=True)


def principal(request: Request, session: Session = Depends(db),
              authorization: Annotated[str | None, Header(max_length=512)] = None) -> Principal:
    if request.app.state.settings.auth == "disabled":
        return LOCAL
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "authorization: send 'Authorization: Bearer <API key>'",
                      headers={"WWW-Authenticate": "Bearer"})
    who = authenticate(session, token.strip())
    if who is None:
        raise Problem(401, "authorization: unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return who


def visible_tenant(who: Principal) -> str | None:
    """The tenant whose rows a caller may see; None for an admin (all of them)."""
    return None if who.admin else who.tenant


def owns(who: Principal, tenant: str) -> bool:
    return who.admin or who.tenant == tenant
