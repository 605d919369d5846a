"""Bring-your-own provider keys (DESIGN §7): AES-256-GCM under an operator master key.

A row's ciphertext is bound to the row by its associated data `tenant|provider|id`, so a
ciphertext copied to another row or tenant fails to decrypt instead of serving the wrong
tenant's calls. `master_key_id` names the key that encrypted the row: the operator adds a new
key first in TOOLCALLSTORE_MASTER_KEY, runs `toolcallstore byok rotate`, then drops the old one.
The plaintext leaves this module only through `tenant_keys`, for outbound provider calls.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import ConfigError, Unavailable
from toolcallstore.ids import new_id, now_us

ENV_NAME = "TOOLCALLSTORE_MASTER_KEY"
DEFAULT_KID = "k1"
KEY_BYTES = 32
NONCE_BYTES = 12
ROTATE_BATCH = 100
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_GENERATE_HINT = (
    'generate one with: python -c "import base64, os; '
    "print('k1:' + base64.b64encode(os.urandom(32)).decode())\""
)
# Columns a caller may see: never the nonce or the ciphertext.
PUBLIC_COLUMNS = "id, tenant_id, provider, master_key_id, last4, created_at, deleted_at"


class ByokKeyUnreadable(Unavailable):
    """A stored key that no configured master key can decrypt: its master key was dropped, or
    the row was altered or moved. The call fails rather than silently billing the platform key."""

    code = "byok_key_unreadable"


@dataclass(frozen=True)
class ByokKey:
    id: str
    tenant_id: str
    provider: str
    master_key_id: str
    last4: str
    created_at: int
    deleted_at: int | None

    @classmethod
    def from_row(cls, row: Row) -> ByokKey:
        return cls(**{name: row[name] for name in PUBLIC_COLUMNS.split(", ")})


def row_aad(tenant_id: str, provider: str, byok_id: str) -> bytes:
    return f"{tenant_id}|{provider}|{byok_id}".encode()


class Keyring:
    """The master keys by id (the first encrypts), plus a short cache of decrypted keys."""

    MAX_CACHED_TENANTS = 10_000

    def __init__(self, keys: dict[str, bytes], current: str, cache_seconds: float = 2.0) -> None:
        self._raw = keys
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current_kid = current
        self._cache_s = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        # Bumped by every `forget`: a read that started before a forget is not cached, or a
        # query racing a replacement could re-cache the old key after the replacement.
        self.generation = 0

    @property
    def kids(self) -> tuple[str, ...]:
        """The ids of the master keys held (no key material)."""
        return tuple(self._raw)

    def __repr__(self) -> str:
        return f"Keyring(kids={list(self._raw)}, current={self.current_kid!r})"

    @classmethod
    def parse(cls, raw: str, *, cache_seconds: float = 2.0) -> Keyring:
        """`kid:base64key[,kid:base64key...]`; a bare base64 key is kid "k1". Errors name the
        variable and the entry's position, never the key."""
        keys: dict[str, bytes] = {}
        entries = [e.strip() for e in raw.split(",") if e.strip()]
        if not entries:
            raise ConfigError(f"{ENV_NAME} is empty; {_GENERATE_HINT}")
        for position, entry in enumerate(entries, 1):
            kid, sep, encoded = entry.rpartition(":")
            kid = kid if sep else DEFAULT_KID
            where = f"{ENV_NAME} entry {position}"
            if not _KID.match(kid):
                raise ConfigError(f"{where}: the key id must be 1-32 of [A-Za-z0-9_.-]")
            if kid in keys:
                raise ConfigError(f"{where}: key id '{kid}' appears twice")
            keys[kid] = _decode_key(encoded, where)
        return cls(keys, next(iter(keys)), cache_seconds)

    def encrypt(self, plaintext: str, aad: bytes) -> tuple[str, bytes, bytes]:
        """(kid, nonce, ciphertext) under the current key; a fresh random nonce every time."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current_kid].encrypt(nonce, plaintext.encode(), aad)
        return self.current_kid, nonce, sealed

    def decrypt(self, kid: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> str:
        """The plaintext, or ByokKeyUnreadable when the key is gone or the row was altered."""
        aead = self._aead.get(kid)
        if aead is None:
            raise ByokKeyUnreadable(
                f"it was encrypted under master key id '{kid}', which {ENV_NAME} no longer "
                "holds; store the key again (POST /v1/byok-keys)."
            )
        try:
            return aead.decrypt(bytes(nonce), bytes(ciphertext), aad).decode()
        except InvalidTag:
            raise ByokKeyUnreadable(
                "it failed its integrity check (altered, or moved to another row or tenant); "
                "store the key again (POST /v1/byok-keys)."
            ) from None

    def fingerprint(self, plaintext: str) -> str:
        """A keyed digest of a provider key for idempotency fingerprints: a plain hash of a
        short key could be brute-forced from the idempotency table."""
        secret = self._raw[self.current_kid]
        return hmac.new(secret, b"byok-fingerprint\x00" + plaintext.encode(), "sha256").hexdigest()

    def derive(self, purpose: bytes) -> dict[str, bytes]:
        """One one-way subkey per master key id (the current first), for another use of the
        master keys (asset URL signing) that rotates with them."""
        kids = [self.current_kid, *(k for k in self._raw if k != self.current_kid)]
        return {kid: hmac.digest(self._raw[kid], purpose, "sha256") for kid in kids}

    def cached(self, tenant_id: str) -> dict[str, str] | None:
        hit = self._cache.get(tenant_id)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def remember(self, tenant_id: str, keys: dict[str, str], generation: int) -> None:
        if generation != self.generation:
            return
        if len(self._cache) >= self.MAX_CACHED_TENANTS:
            self._cache.clear()
        self._cache[tenant_id] = (time.monotonic() + self._cache_s, keys)

    def forget(self, tenant_id: str) -> None:
        """Drop a tenant's cached keys; other processes see a change within `cache_seconds`."""
        self.generation += 1
        self._cache.pop(tenant_id, None)


def _decode_key(encoded: str, where: str) -> bytes:
    # Accept the URL-safe alphabet too: operators paste keys from either kind of tool.
    text = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the key is not valid base64; {_GENERATE_HINT}") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{where}: the key must be {KEY_BYTES} bytes (AES-256), got {len(key)}; "
            f"{_GENERATE_HINT}"
        )
    return key


def _lock_provider(tx: SyncTransaction, tenant_id: str, provider: str) -> None:
    # SQLite's BEGIN IMMEDIATE already serialises writers; on Postgres two replacements of the
    # same (tenant, provider) would otherwise both insert and one would hit the unique index.
    if tx.dialect == "postgresql":
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))",
            {"k": f"byok|{tenant_id}|{provider}"},
        )


def store_key(
    tx: SyncTransaction, keyring: Keyring, tenant_id: str, provider: str, plaintext: str
) -> ByokKey:
    """Encrypt and store a tenant's key for `provider`, replacing its live one if any; the
    caller calls `keyring.forget(tenant_id)` once the transaction has committed."""
    _lock_provider(tx, tenant_id, provider)
    now = now_us()
    tx.execute(
        "UPDATE byok_keys SET deleted_at = :now, nonce = :empty, ciphertext = :empty"
        " WHERE tenant_id = :tenant_id AND provider = :provider AND deleted_at IS NULL",
        {"now": now, "empty": b"", "tenant_id": tenant_id, "provider": provider},
    )
    byok_id = new_id("byok")
    kid, nonce, sealed = keyring.encrypt(plaintext, row_aad(tenant_id, provider, byok_id))
    row: dict[str, Any] = {
        "id": byok_id,
        "tenant_id": tenant_id,
        "provider": provider,
        "master_key_id": kid,
        "last4": plaintext[-4:],
        "created_at": now,
        "deleted_at": None,
    }
    tx.execute(
        "INSERT INTO byok_keys (id, tenant_id, provider, master_key_id, nonce, ciphertext,"
        " last4, created_at, deleted_at) VALUES (:id, :tenant_id, :provider, :master_key_id,"
        " :nonce, :ciphertext, :last4, :created_at, :deleted_at)",
        {**row, "nonce": nonce, "ciphertext": sealed},
    )
    return ByokKey.from_row(row)


def delete_key(tx: SyncTransaction, tenant_id: str, byok_id: str) -> ByokKey | None:
    """Mark a live key deleted and wipe its ciphertext; None if the tenant has no such key."""
    row = tx.fetch_one(
        "UPDATE byok_keys SET deleted_at = :now, nonce = :empty, ciphertext = :empty"
        " WHERE id = :id AND tenant_id = :tenant_id AND deleted_at IS NULL"
        f" RETURNING {PUBLIC_COLUMNS}",
        {"now": now_us(), "empty": b"", "id": byok_id, "tenant_id": tenant_id},
    )
    return None if row is None else ByokKey.from_row(row)


async def get_key(db: Database, tenant_id: str, byok_id: str) -> ByokKey | None:
    row = await db.fetch_one(
        f"SELECT {PUBLIC_COLUMNS} FROM byok_keys"
        " WHERE id = :id AND tenant_id = :tenant_id AND deleted_at IS NULL",
        {"id": byok_id, "tenant_id": tenant_id},
    )
    return None if row is None else ByokKey.from_row(row)


async def list_keys(
    db: Database, tenant_id: str, *, limit: int, starting_after: str | None
) -> tuple[list[ByokKey], bool]:
    """A tenant's live keys, newest first (at most one per provider)."""
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit + 1}
    after = ""
    if starting_after is not None:
        after, params["starting_after"] = " AND id < :starting_after", starting_after
    rows = await db.fetch_all(
        f"SELECT {PUBLIC_COLUMNS} FROM byok_keys WHERE tenant_id = :tenant_id"
        f" AND deleted_at IS NULL{after} ORDER BY id DESC LIMIT :limit",
        params,
    )
    return [ByokKey.from_row(r) for r in rows[:limit]], len(rows) > limit


def _decrypt_row(keyring: Keyring, row: Row, tenant_id: str) -> str:
    # The AAD is rebuilt from the tenant asking, not read from the row: a row moved to another
    # tenant fails here instead of serving that tenant's calls.
    aad = row_aad(tenant_id, row["provider"], row["id"])
    try:
        return keyring.decrypt(row["master_key_id"], row["nonce"], row["ciphertext"], aad)
    except ByokKeyUnreadable as error:
        raise ByokKeyUnreadable(
            f"The stored '{row['provider']}' key {row['id']} cannot be used: {error.message}",
            provider=row["provider"],
            byok_key_id=row["id"],
        ) from None


async def tenant_keys(db: Database, keyring: Keyring | None, tenant_id: str) -> dict[str, str]:
    """provider -> the tenant's own plaintext key, for routing its live calls; {} when BYOK is
    off. One indexed query, then cached for the keyring's `cache_seconds`."""
    if keyring is None:
        return {}
    found = keyring.cached(tenant_id)
    if found is not None:
        return dict(found)  # a copy: the caller may not change the cached one
    generation = keyring.generation
    rows = await db.fetch_all(
        "SELECT id, provider, master_key_id, nonce, ciphertext FROM byok_keys"
        " WHERE tenant_id = :tenant_id AND deleted_at IS NULL",
        {"tenant_id": tenant_id},
    )
    found = {row["provider"]: _decrypt_row(keyring, row, tenant_id) for row in rows}
    keyring.remember(tenant_id, dict(found), generation)
    return found


def _rotate_batch(tx: SyncTransaction, keyring: Keyring) -> int:
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    rows = tx.fetch_all(
        "SELECT id, tenant_id, provider, master_key_id, nonce, ciphertext FROM byok_keys"
        f" WHERE deleted_at IS NULL AND master_key_id <> :kid LIMIT :n{lock}",
        {"kid": keyring.current_kid, "n": ROTATE_BATCH},
    )
    for row in rows:
        plaintext = _decrypt_row(keyring, row, row["tenant_id"])
        aad = row_aad(row["tenant_id"], row["provider"], row["id"])
        kid, nonce, sealed = keyring.encrypt(plaintext, aad)
        tx.execute(
            "UPDATE byok_keys SET master_key_id = :kid, nonce = :nonce, ciphertext = :sealed"
            " WHERE id = :id",
            {"kid": kid, "nonce": nonce, "sealed": sealed, "id": row["id"]},
        )
    return len(rows)


async def rotate(db: Database, keyring: Keyring) -> int:
    """Re-encrypt every live key not under the current master key; returns how many. A batch
    per transaction; an unreadable row stops it with its id (re-running resumes)."""
    total = 0
    while True:
        done = await db.run_sync(_rotate_batch, keyring)
        total += done
        if done < ROTATE_BATCH:
            return total
