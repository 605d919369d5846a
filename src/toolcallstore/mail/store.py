"""The mail tables: a tenant's mail domains (with their sealed administrator credential) and
mailboxes, and the months each mailbox was charged.

The domain administrator's password is AES-256-GCM under the operator's master key, bound to
its row as BYOK keys are (`byok.Keyring`); a mailbox's password is never written anywhere.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from toolcallstore.byok import Keyring
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import StateConflict
from toolcallstore.ids import new_id, now_us
from toolcallstore.mail.base import Credential
from toolcallstore.tools import ToolCall

SET_UP = ("publishing", "active")  # a Stalwart domain whose records were handed to DNS
_UPDATABLE = frozenset({
    "state", "stalwart_domain_id", "admin_name", "admin_account_id", "admin_key_id",
    "admin_nonce", "admin_ciphertext", "dkim", "records", "dns_change_id", "dns_status",
    "missing", "error",
})  # fmt: skip


def loads(raw: str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _aad(row: Row) -> bytes:
    return f"{row['tenant_id']}|mail-domain|{row['id']}".encode()


def seal_admin(keyring: Keyring, row: Row, secret: str) -> dict[str, Any]:
    kid, nonce, sealed = keyring.encrypt(secret, _aad(row))
    return {"admin_key_id": kid, "admin_nonce": nonce, "admin_ciphertext": sealed}


def open_admin(keyring: Keyring, row: Row) -> Credential:
    """The domain administrator's credential (ByokKeyUnreadable if the master key is gone)."""
    secret = keyring.decrypt(row["admin_key_id"], row["admin_nonce"], row["admin_ciphertext"],
                             _aad(row))  # fmt: skip
    return Credential(row["admin_name"], secret)


def claim_domain(tx: SyncTransaction, call: ToolCall, name: str) -> Row:
    """The setup's row for `name`: its own (a retried job), a failed setup of the same tenant
    taken over (Stalwart's side is kept, the DNS change is made again under this execution),
    or a new one. StateConflict if the name is another setup's."""
    livemode = int(call.livemode)
    row = tx.fetch_one(
        "SELECT d.*, e.state AS execution_state FROM mail_domains d"
        " LEFT JOIN executions e ON e.id = d.execution_id"
        " WHERE d.livemode = :livemode AND d.name = :name",
        {"livemode": livemode, "name": name},
    )
    now = now_us()
    if row is None:
        fresh: dict[str, Any] = {"id": new_id("mdom"), "tenant_id": call.tenant_id,
                 "project_id": call.project_id, "livemode": livemode, "name": name,
                 "state": "pending", "execution_id": call.execution_id, "created_at": now,
                 "updated_at": now}  # fmt: skip
        columns = ", ".join(fresh)
        tx.execute(f"INSERT INTO mail_domains ({columns}) VALUES"
                   f" ({', '.join(':' + c for c in fresh)})", fresh)  # fmt: skip
        return _domain(tx, str(fresh["id"]))
    if row["execution_id"] == call.execution_id:
        return row
    if row["tenant_id"] == call.tenant_id and row["execution_state"] == "failed":
        tx.execute(
            "UPDATE mail_domains SET execution_id = :e, dns_change_id = NULL, dns_status = NULL,"
            " error = NULL, state = CASE WHEN state IN ('publishing', 'active', 'failed')"
            " THEN 'created' ELSE state END, updated_at = :now WHERE id = :id",
            {"e": call.execution_id, "now": now, "id": row["id"]},
        )
        return _domain(tx, row["id"])
    raise StateConflict(f"Mail for {name} is already set up (or being set up).",
                        code="mail_domain_exists", param="domain")  # fmt: skip


def _domain(tx: SyncTransaction, domain_id: str) -> Row:
    row = tx.fetch_one("SELECT * FROM mail_domains WHERE id = :id", {"id": domain_id})
    assert row is not None
    return row


async def update_domain(db: Database, domain_id: str, **changes: Any) -> Row:
    unknown = set(changes) - _UPDATABLE
    assert not unknown, unknown
    for key in ("dkim", "records", "missing"):
        if key in changes and changes[key] is not None:
            changes[key] = orjson.dumps(changes[key]).decode()
    sets = ", ".join(f"{k} = :{k}" for k in changes)

    def update(tx: SyncTransaction) -> Row:
        tx.execute(f"UPDATE mail_domains SET {sets}, updated_at = :now WHERE id = :id",
                   {**changes, "now": now_us(), "id": domain_id})  # fmt: skip
        return _domain(tx, domain_id)

    return await db.run_sync(update)


async def find_domain(db: Database, tenant_id: str, livemode: bool, name: str) -> Row | None:
    """The tenant's mail domain `name`, with its setup execution's state."""
    return await db.fetch_one(
        "SELECT d.*, e.state AS execution_state FROM mail_domains d"
        " LEFT JOIN executions e ON e.id = d.execution_id WHERE d.tenant_id = :t"
        " AND d.livemode = :livemode AND d.name = :name",
        {"t": tenant_id, "livemode": int(livemode), "name": name},
    )


async def list_domains(db: Database, tenant_id: str, livemode: bool, *, limit: int,
                       starting_after: str | None) -> list[Row]:  # fmt: skip
    after = "" if starting_after is None else " AND d.id < :after"
    return await db.fetch_all(
        "SELECT d.*, e.state AS execution_state FROM mail_domains d"
        " LEFT JOIN executions e ON e.id = d.execution_id WHERE d.tenant_id = :t"
        f" AND d.livemode = :livemode{after} ORDER BY d.id DESC LIMIT :n",
        {"t": tenant_id, "livemode": int(livemode), "after": starting_after, "n": limit + 1},
    )


async def active_mailbox(db: Database, livemode: bool, address: str) -> Row | None:
    return await db.fetch_one(
        "SELECT * FROM mailboxes WHERE livemode = :livemode AND address = :address"
        " AND state = 'active'",
        {"livemode": int(livemode), "address": address},
    )


def insert_mailbox(
    tx: SyncTransaction, call: ToolCall, domain: Row, account_id: str, receipt_id: str,
    period: str,
) -> Row:  # fmt: skip
    """The new mailbox, and its first month as charged by this call's receipt."""
    now = now_us()
    row = {
        "id": new_id("mbx"), "tenant_id": call.tenant_id, "project_id": call.project_id,
        "livemode": int(call.livemode), "domain_id": domain["id"],
        "address": call.params["address"], "display_name": call.params["display_name"],
        "quota_mb": call.params["quota_mb"], "state": "active",
        "stalwart_account_id": account_id, "execution_id": call.execution_id,
        "password_set_at": now, "created_at": now, "deleted_at": None,
    }  # fmt: skip
    columns = ", ".join(row)
    tx.execute(f"INSERT INTO mailboxes ({columns}) VALUES ({', '.join(':' + c for c in row)})",
               row)  # fmt: skip
    tx.execute(
        "INSERT INTO mailbox_charges (mailbox_id, period, receipt_id, amount_micros, created_at)"
        " VALUES (:m, :p, :r, :a, :now)",
        {"m": row["id"], "p": period, "r": receipt_id, "a": call.estimate.price_micros,
         "now": now},
    )  # fmt: skip
    return row


async def get_mailbox(db: Database, tenant_id: str, livemode: bool, mailbox_id: str
                      ) -> Row | None:  # fmt: skip
    return await db.fetch_one(
        "SELECT * FROM mailboxes WHERE id = :id AND tenant_id = :t AND livemode = :livemode",
        {"id": mailbox_id, "t": tenant_id, "livemode": int(livemode)},
    )


async def mailbox_domain(db: Database, mailbox: Row) -> Row:
    row = await db.fetch_one("SELECT * FROM mail_domains WHERE id = :id",
                             {"id": mailbox["domain_id"]})  # fmt: skip
    assert row is not None
    return row
