"""API keys: stored as SHA-256 plus a lookup prefix; the secret exists only in the create reply."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import orjson

from toolcallstore.db.database import Database, Row, Transaction
from toolcallstore.db.pages import Page, fetch_page
from toolcallstore.ids import new_id, now_us, random_base62

SECRET_RANDOM_CHARS = 32
LOOKUP_RANDOM_CHARS = 12


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    project_id: str | None
    name: str
    mode: str
    scopes: tuple[str, ...]
    last4: str
    auto_quote_max_micros: int | None
    created_by_key_id: str | None
    created_at: int
    revoked_at: int | None
    # The key's own token bucket (None: the server's defaults), see ratelimit.py.
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None

    @classmethod
    def from_row(cls, row: Row) -> ApiKey:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            project_id=row["project_id"],
            name=row["name"],
            mode=row["mode"],
            scopes=tuple(orjson.loads(row["scopes"])),
            last4=row["last4"],
            auto_quote_max_micros=row["auto_quote_max_micros"],
            created_by_key_id=row["created_by_key_id"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            rate_limit_per_s=row.get("rate_limit_per_s"),
            rate_limit_burst=row.get("rate_limit_burst"),
        )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def lookup_of(secret: str) -> str | None:
    """The indexed prefix of a well-formed secret (`tcs_<mode>_` + 12 chars), else None."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "tcs" or parts[1] not in ("live", "test"):
        return None
    if len(parts[2]) != SECRET_RANDOM_CHARS or not parts[2].isalnum() or not parts[2].isascii():
        return None
    return secret[: len("tcs_") + len(parts[1]) + 1 + LOOKUP_RANDOM_CHARS]


async def insert_key(
    tx: Transaction,
    *,
    tenant_id: str,
    project_id: str | None,
    name: str,
    mode: str,
    scopes: tuple[str, ...],
    auto_quote_max_micros: int | None = None,
    created_by_key_id: str | None = None,
    rate_limit_per_s: float | None = None,
    rate_limit_burst: int | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it with its secret, which is never stored or shown again."""
    secret = f"tcs_{mode}_{random_base62(SECRET_RANDOM_CHARS)}"
    row = {
        "id": new_id("key"),
        "tenant_id": tenant_id,
        "project_id": project_id,
        "name": name,
        "mode": mode,
        "lookup": lookup_of(secret),
        "secret_hash": hash_secret(secret),
        "last4": secret[-4:],
        "scopes": orjson.dumps(sorted(scopes)).decode(),
        "auto_quote_max_micros": auto_quote_max_micros,
        "created_by_key_id": created_by_key_id,
        "created_at": now_us(),
        "revoked_at": None,
        "rate_limit_per_s": rate_limit_per_s,
        "rate_limit_burst": rate_limit_burst,
    }
    await tx.execute(
        "INSERT INTO api_keys (id, tenant_id, project_id, name, mode, lookup, secret_hash, last4,"
        " scopes, auto_quote_max_micros, created_by_key_id, created_at, revoked_at,"
        " rate_limit_per_s, rate_limit_burst) VALUES"
        " (:id, :tenant_id, :project_id, :name, :mode, :lookup, :secret_hash, :last4, :scopes,"
        " :auto_quote_max_micros, :created_by_key_id, :created_at, :revoked_at,"
        " :rate_limit_per_s, :rate_limit_burst)",
        row,
    )
    return ApiKey.from_row(row), secret


async def find_active_key(db: Database, secret: str) -> ApiKey | None:
    """The unrevoked key whose secret this is; the hash is compared in constant time."""
    lookup = lookup_of(secret)
    if lookup is None:
        return None
    row = await db.fetch_one("SELECT * FROM api_keys WHERE lookup = :lookup", {"lookup": lookup})
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(row["secret_hash"], hash_secret(secret)):
        return None
    return ApiKey.from_row(row)


async def get_key(db: Database | Transaction, tenant_id: str, key_id: str) -> ApiKey | None:
    row = await db.fetch_one(
        "SELECT * FROM api_keys WHERE id = :id AND tenant_id = :tenant_id",
        {"id": key_id, "tenant_id": tenant_id},
    )
    return None if row is None else ApiKey.from_row(row)


async def find_key(db: Database | Transaction, key_id: str) -> ApiKey | None:
    """A key of any tenant (for operators acting across tenants)."""
    row = await db.fetch_one("SELECT * FROM api_keys WHERE id = :id", {"id": key_id})
    return None if row is None else ApiKey.from_row(row)


async def list_keys(
    db: Database, tenant_id: str, *, limit: int, starting_after: str | None
) -> tuple[list[ApiKey], bool]:
    page: Page = await fetch_page(
        db,
        "api_keys",
        "tenant_id = :tenant_id",
        {"tenant_id": tenant_id},
        limit=limit,
        starting_after=starting_after,
    )
    return [ApiKey.from_row(r) for r in page.rows], page.has_more


async def revoke_key(tx: Transaction, tenant_id: str, key_id: str) -> ApiKey | None:
    """Revoke once; revoking an already revoked key keeps the first revocation time."""
    await tx.execute(
        "UPDATE api_keys SET revoked_at = :now WHERE id = :id AND tenant_id = :tenant_id"
        " AND revoked_at IS NULL",
        {"now": now_us(), "id": key_id, "tenant_id": tenant_id},
    )
    return await get_key(tx, tenant_id, key_id)
