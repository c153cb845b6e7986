"""API keys: created once (the plain key is shown only then), stored as SHA-256, revoked by id."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.engine import rowcount
from core.db.tables import ApiKey, utcnow

KEY_PREFIX = "glk_"
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and whether the key may see every tenant's jobs."""

    tenant: str
    admin: bool

    def owns(self, tenant: str) -> bool:
        """May this caller see a row of ``tenant``?"""
        return self.admin or self.tenant == tenant

    @property
    def visible_tenant(self) -> str | None:
        """The tenant whose rows this caller may list; None for an admin (all of them)."""
        return None if self.admin else self.tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: str, name: str = "", admin: bool = False) -> tuple[ApiKey, str]:
    """Make a new key for ``tenant``; returns the stored row and the plain key (never stored)."""
    if not TENANT_RE.match(tenant):
        raise ValueError("tenant: 1-64 characters from A-Z a-z 0-9 _ . -")
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=uuid.uuid4(), tenant=tenant, name=name[:128], key_hash=hash_key(plain), admin=admin, created_at=utcnow()
    )
    session.add(row)
    session.commit()
    return row, plain


def revoke_key(session: Session, key_id: uuid.UUID) -> bool:
    res = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    session.commit()
    return rowcount(res) == 1


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def authenticate(session: Session, key_hash: str) -> Principal | None:
    """Who holds the key whose ``hash_key`` is ``key_hash``; None for an unknown or revoked key."""
    row = session.execute(
        select(ApiKey.tenant, ApiKey.admin).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    return Principal(row[0], row[1]) if row else None
