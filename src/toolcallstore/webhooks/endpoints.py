"""Webhook endpoints: a tenant's URLs (at most 16), the events each wants, and their signing
secrets, AES-256-GCM under TOOLCALLSTORE_MASTER_KEY (byok.Keyring) and bound to the row.

A secret leaves this module twice: once in the create or rotate answer, and to the signer.
After a rotation the previous secret keeps signing beside the new one for 24 hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.byok import ByokKeyUnreadable, Keyring
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import InvalidRequest, Unavailable
from toolcallstore.ids import new_id, now_us
from toolcallstore.webhooks.signing import new_secret

MAX_ENDPOINTS = 16
ROTATION_OVERLAP_US = 24 * 3600 * 1_000_000
EVENT_FAMILIES = frozenset(
    {"quote", "approval", "execution", "receipt", "media", "domain", "mailbox",
     "webhook_endpoint", "billing"}
)  # fmt: skip
_PATTERN = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")
PUBLIC_COLUMNS = (
    "id, tenant_id, livemode, url, description, events, disabled, disabled_reason,"
    " previous_expires_at, failing_since, created_at, updated_at"
)


class WebhookSecretUnreadable(Unavailable):
    code = "webhook_secret_unreadable"


@dataclass(frozen=True)
class Endpoint:
    id: str
    tenant_id: str
    livemode: bool
    url: str
    description: str
    events: list[str]
    disabled: bool
    disabled_reason: str | None
    previous_expires_at: int | None
    failing_since: int | None
    created_at: int
    updated_at: int

    @classmethod
    def from_row(cls, row: Row) -> Endpoint:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            livemode=bool(row["livemode"]),
            url=row["url"],
            description=row["description"],
            events=orjson.loads(row["events"]),
            disabled=bool(row["disabled"]),
            disabled_reason=row["disabled_reason"],
            previous_expires_at=row["previous_expires_at"],
            failing_since=row["failing_since"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


def pattern_problem(pattern: str) -> str | None:
    """Why an `events[]` entry is not `*`, a known `family.*` or a dotted event type."""
    if pattern == "*":
        return None
    if not _PATTERN.match(pattern) or pattern.split(".", 1)[0] not in EVENT_FAMILIES:
        families = ", ".join(sorted(EVENT_FAMILIES))
        return f"must be '*', '<family>.*' or an event type, with a family among: {families}"
    return None


def subscribed(patterns: list[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def _aad(tenant_id: str, endpoint_id: str, slot: str) -> bytes:
    return f"webhook|{tenant_id}|{endpoint_id}|{slot}".encode()


def _lock_tenant(tx: SyncTransaction, tenant_id: str) -> None:
    # SQLite's BEGIN IMMEDIATE serialises writers; on Postgres two creates could both count 15.
    if tx.dialect == "postgresql":
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))", {"k": f"webhooks|{tenant_id}"}
        )


def create_endpoint(
    tx: SyncTransaction,
    keyring: Keyring,
    tenant_id: str,
    *,
    livemode: bool,
    url: str,
    events: list[str],
    description: str,
) -> tuple[Endpoint, str]:
    """Store a new endpoint; returns it with its secret (the only time the secret is shown)."""
    _lock_tenant(tx, tenant_id)
    count = tx.fetch_val(
        "SELECT count(*) FROM webhook_endpoints WHERE tenant_id = :t AND deleted_at IS NULL",
        {"t": tenant_id},
    )
    if int(count) >= MAX_ENDPOINTS:
        raise InvalidRequest(
            f"A tenant has at most {MAX_ENDPOINTS} webhook endpoints; delete one first.",
            code="webhook_endpoint_limit",
        )
    endpoint_id, secret, now = new_id("we"), new_secret(), now_us()
    kid, nonce, sealed = keyring.encrypt(secret, _aad(tenant_id, endpoint_id, "current"))
    row = tx.fetch_one(
        "INSERT INTO webhook_endpoints (id, tenant_id, livemode, url, description, events,"
        " disabled, master_key_id, nonce, ciphertext, created_at, updated_at) VALUES (:id, :t,"
        " :live, :url, :description, :events, 0, :kid, :nonce, :sealed, :now, :now)"
        f" RETURNING {PUBLIC_COLUMNS}",
        {"id": endpoint_id, "t": tenant_id, "live": int(livemode), "url": url,
         "description": description, "events": orjson.dumps(events).decode(), "kid": kid,
         "nonce": nonce, "sealed": sealed, "now": now},
    )  # fmt: skip
    assert row is not None
    return Endpoint.from_row(row), secret


_VISIBLE = "tenant_id = :t AND livemode = :live AND deleted_at IS NULL"


async def get_endpoint(
    db: Database, tenant_id: str, livemode: bool, endpoint_id: str
) -> Endpoint | None:
    row = await db.fetch_one(
        f"SELECT {PUBLIC_COLUMNS} FROM webhook_endpoints WHERE id = :id AND {_VISIBLE}",
        {"id": endpoint_id, "t": tenant_id, "live": int(livemode)},
    )
    return None if row is None else Endpoint.from_row(row)


async def list_endpoints(
    db: Database, tenant_id: str, livemode: bool, *, limit: int, starting_after: str | None
) -> tuple[list[Endpoint], bool]:
    params: dict[str, Any] = {"t": tenant_id, "live": int(livemode), "n": limit + 1}
    after = ""
    if starting_after is not None:
        after, params["after"] = " AND id < :after", starting_after
    rows = await db.fetch_all(
        f"SELECT {PUBLIC_COLUMNS} FROM webhook_endpoints WHERE {_VISIBLE}{after}"
        " ORDER BY id DESC LIMIT :n",
        params,
    )
    return [Endpoint.from_row(r) for r in rows[:limit]], len(rows) > limit


def update_endpoint(
    tx: SyncTransaction, tenant_id: str, livemode: bool, endpoint_id: str, changes: dict[str, Any]
) -> Endpoint | None:
    """Apply `events`, `description` and `disabled` changes; re-enabling forgets past failures."""
    sets: list[str] = ["updated_at = :now"]
    params: dict[str, Any] = {"now": now_us()}
    if "events" in changes:
        sets.append("events = :events")
        params["events"] = orjson.dumps(changes["events"]).decode()
    if "description" in changes:
        sets.append("description = :description")
        params["description"] = changes["description"]
    if "disabled" in changes:
        disabled = bool(changes["disabled"])
        sets.append("disabled = :disabled")
        sets.append("disabled_reason = :reason")
        sets.append("failing_since = NULL")
        params.update(disabled=int(disabled), reason="manual" if disabled else None)
    row = tx.fetch_one(
        f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = :id AND {_VISIBLE}"
        f" RETURNING {PUBLIC_COLUMNS}",
        {**params, "id": endpoint_id, "t": tenant_id, "live": int(livemode)},
    )
    return None if row is None else Endpoint.from_row(row)


def delete_endpoint(
    tx: SyncTransaction, tenant_id: str, livemode: bool, endpoint_id: str
) -> Endpoint | None:
    """Mark it deleted and wipe its secrets; its pending deliveries end when their jobs run."""
    row = tx.fetch_one(
        "UPDATE webhook_endpoints SET deleted_at = :now, updated_at = :now, nonce = :empty,"
        " ciphertext = :empty, previous_nonce = NULL, previous_ciphertext = NULL"
        f" WHERE id = :id AND {_VISIBLE} RETURNING {PUBLIC_COLUMNS}",
        {"now": now_us(), "empty": b"", "id": endpoint_id, "t": tenant_id, "live": int(livemode)},
    )
    return None if row is None else Endpoint.from_row(row)


def rotate_secret(
    tx: SyncTransaction, keyring: Keyring, tenant_id: str, livemode: bool, endpoint_id: str
) -> tuple[Endpoint, str] | None:
    """A new secret; the current one keeps signing beside it for 24 h (an older one stops)."""
    row = tx.fetch_one(
        f"SELECT * FROM webhook_endpoints WHERE id = :id AND {_VISIBLE}",
        {"id": endpoint_id, "t": tenant_id, "live": int(livemode)},
    )
    if row is None:
        return None
    old = _decrypt(keyring, row, "current")
    secret, now = new_secret(), now_us()
    kid, nonce, sealed = keyring.encrypt(secret, _aad(tenant_id, endpoint_id, "current"))
    pkid, pnonce, psealed = keyring.encrypt(old, _aad(tenant_id, endpoint_id, "previous"))
    updated = tx.fetch_one(
        "UPDATE webhook_endpoints SET master_key_id = :kid, nonce = :nonce, ciphertext = :sealed,"
        " previous_master_key_id = :pkid, previous_nonce = :pnonce,"
        " previous_ciphertext = :psealed, previous_expires_at = :until, updated_at = :now"
        f" WHERE id = :id RETURNING {PUBLIC_COLUMNS}",
        {"kid": kid, "nonce": nonce, "sealed": sealed, "pkid": pkid, "pnonce": pnonce,
         "psealed": psealed, "until": now + ROTATION_OVERLAP_US, "now": now, "id": endpoint_id},
    )  # fmt: skip
    assert updated is not None
    return Endpoint.from_row(updated), secret


def _decrypt(keyring: Keyring, row: Row, slot: str) -> str:
    prefix = "" if slot == "current" else "previous_"
    aad = _aad(row["tenant_id"], row["id"], slot)
    try:
        return keyring.decrypt(
            row[f"{prefix}master_key_id"], row[f"{prefix}nonce"], row[f"{prefix}ciphertext"], aad
        )
    except ByokKeyUnreadable:
        raise WebhookSecretUnreadable(
            f"The signing secret of webhook endpoint {row['id']} cannot be read: the master key"
            " that sealed it is no longer configured, or the row was altered."
        ) from None


def signing_secrets(keyring: Keyring, row: Row, now: int) -> list[str]:
    """The secrets a delivery is signed with now: the current one, then the previous one while
    its 24 h overlap lasts. `row` holds the endpoint's full row (secret columns included)."""
    found = [_decrypt(keyring, row, "current")]
    until = row["previous_expires_at"]
    if until is not None and until > now and row["previous_ciphertext"]:
        found.append(_decrypt(keyring, row, "previous"))
    return found


ROTATE_BATCH = 100


def _reseal_batch(tx: SyncTransaction, keyring: Keyring) -> int:
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    rows = tx.fetch_all(
        "SELECT * FROM webhook_endpoints WHERE deleted_at IS NULL AND (master_key_id <> :kid"
        " OR (previous_ciphertext IS NOT NULL AND previous_master_key_id <> :kid))"
        f" LIMIT :n{lock}",
        {"kid": keyring.current_kid, "n": ROTATE_BATCH},
    )
    for row in rows:
        values: dict[str, Any] = {"id": row["id"]}
        for slot, prefix in (("current", ""), ("previous", "previous_")):
            if not row[f"{prefix}ciphertext"]:
                values.update({f"{prefix}kid": row[f"{prefix}master_key_id"],
                               f"{prefix}nonce": row[f"{prefix}nonce"],
                               f"{prefix}sealed": row[f"{prefix}ciphertext"]})  # fmt: skip
                continue
            aad = _aad(row["tenant_id"], row["id"], slot)
            kid, nonce, sealed = keyring.encrypt(_decrypt(keyring, row, slot), aad)
            values.update({f"{prefix}kid": kid, f"{prefix}nonce": nonce,
                           f"{prefix}sealed": sealed})  # fmt: skip
        tx.execute(
            "UPDATE webhook_endpoints SET master_key_id = :kid, nonce = :nonce,"
            " ciphertext = :sealed, previous_master_key_id = :previous_kid,"
            " previous_nonce = :previous_nonce, previous_ciphertext = :previous_sealed"
            " WHERE id = :id",
            values,
        )
    return len(rows)


async def reseal_secrets(db: Database, keyring: Keyring) -> int:
    """Re-encrypt every live endpoint's secrets under the current master key (`toolcallstore
    byok rotate`); returns how many endpoints changed. An unreadable one stops it."""
    total = 0
    while True:
        done = await db.run_sync(_reseal_batch, keyring)
        total += done
        if done < ROTATE_BATCH:
            return total
