"""Operator sessions of /admin: a live admin key exchanged for a short-lived signed cookie.

The cookie is `<key id>.<expires>.<nonce>.<signature>`: the key itself is never in it. The
signature is an HMAC keyed by the key's stored SHA-256 (a server-side secret the database holds
already), so every process verifies every session without a table of them, and revoking the
key ends its sessions at once. The CSRF token is another HMAC of the same cookie, so it needs no
storage either. Signing out forgets the cookie in the browser and in this process (a copy taken
before sign-out still works elsewhere until it expires: sessions are short for that reason).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from toolcallstore.db import Database
from toolcallstore.db.keys import ApiKey, find_active_key
from toolcallstore.errors import PermissionDenied, Unauthenticated

COOKIE = "tcs_admin_session"
COOKIE_PATH = "/admin"


@dataclass(frozen=True)
class Session:
    key: ApiKey
    cookie: str
    expires: int  # unix seconds
    csrf: str


@dataclass
class SignedOut:
    """Sessions signed out in this process, kept until they would have expired anyway."""

    nonces: dict[str, int] = field(default_factory=dict)

    def add(self, nonce: str, expires: int) -> None:
        now = int(time.time())
        for old in [n for n, until in self.nonces.items() if until <= now]:
            del self.nonces[old]
        self.nonces[nonce] = expires

    def __contains__(self, nonce: str) -> bool:
        return nonce in self.nonces


def _sign(secret_hash: str, purpose: str, payload: str) -> str:
    message = f"toolcallstore-admin-{purpose}\n{payload}".encode()
    return hmac.new(bytes.fromhex(secret_hash), message, hashlib.sha256).hexdigest()


async def _signing_key(db: Database, key_id: str) -> tuple[ApiKey, str] | None:
    """The key and its stored hash, if it is still an operator's live admin key."""
    row = await db.fetch_one(
        "SELECT k.*, t.operator AS tenant_operator FROM api_keys k"
        " JOIN tenants t ON t.id = k.tenant_id WHERE k.id = :id",
        {"id": key_id},
    )
    if row is None or row["revoked_at"] is not None or not row["tenant_operator"]:
        return None
    key = ApiKey.from_row(row)
    if key.mode != "live" or "admin" not in key.scopes:
        return None
    return key, str(row["secret_hash"])


def _session(key: ApiKey, secret_hash: str, payload: str, expires: int) -> Session:
    cookie = f"{payload}.{_sign(secret_hash, 'session', payload)}"
    return Session(key, cookie, expires, _sign(secret_hash, "csrf", payload))


async def sign_in(db: Database, secret: str, ttl_s: int) -> Session:
    """A new session for a live admin key of the operator tenant; refuses anything else."""
    key = await find_active_key(db, secret.strip()) if secret else None
    if key is None:
        raise Unauthenticated("Invalid or revoked API key.", code="invalid_api_key")
    if "admin" not in key.scopes:
        raise PermissionDenied(
            "This API key lacks the scope 'admin' needed here.", required_scope="admin"
        )
    if key.mode != "live":
        raise PermissionDenied(
            "Test-mode keys cannot sign in to the operator pages: they show live money of"
            " every tenant. Use a live admin key (toolcallstore keys create --mode live"
            " --scopes admin).",
            code="live_key_required",
        )
    found = await _signing_key(db, key.id)
    if found is None:
        raise PermissionDenied("Only the operator tenant's keys may sign in here.",
                               required_scope="admin")  # fmt: skip
    expires = int(time.time()) + ttl_s
    payload = f"{key.id}.{expires}.{secrets.token_urlsafe(16)}"
    return _session(found[0], found[1], payload, expires)


async def verify(db: Database, cookie: str | None, signed_out: SignedOut) -> Session | None:
    """The session of this cookie, or None if it is malformed, forged, expired, signed out,
    or its key no longer qualifies."""
    parts = (cookie or "").split(".")
    if len(parts) != 4 or not parts[1].isdigit() or len(cookie or "") > 300:
        return None
    key_id, raw_expires, nonce, signature = parts
    expires = int(raw_expires)
    if expires <= time.time() or nonce in signed_out:
        return None
    found = await _signing_key(db, key_id)
    if found is None:
        return None
    payload = f"{key_id}.{raw_expires}.{nonce}"
    session = _session(found[0], found[1], payload, expires)
    if not hmac.compare_digest(session.cookie, f"{payload}.{signature}"):
        return None
    return session


def sign_out(session: Session, signed_out: SignedOut) -> None:
    signed_out.add(session.cookie.split(".")[2], session.expires)


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())
