"""Mail domains and mailboxes as the API shows them (never a password, never a credential)."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import Row


def _loads(raw: str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def domain_status(row: Row) -> str:
    if row["state"] == "active":
        return "active"
    if row.get("execution_state") == "failed":
        return "failed"
    return "verifying" if row["state"] == "publishing" else "setting_up"


def domain_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "mail_domain",
        "domain": row["name"],
        "status": domain_status(row),
        "dkim": _loads(row["dkim"]) or [],
        "records": _loads(row["records"]) or [],
        "dns_change_id": row["dns_change_id"],
        "dns_status": row["dns_status"],
        "missing": _loads(row["missing"]) or [],
        "error": row["error"],
        "execution_id": row["execution_id"],
        "project_id": row["project_id"],
        "livemode": bool(row["livemode"]),
        "created": int(row["created_at"]) // 1_000_000,
    }


def mailbox_object(row: Row) -> dict[str, Any]:
    deleted = row["deleted_at"]
    return {
        "id": row["id"],
        "object": "mailbox",
        "address": row["address"],
        "display_name": row["display_name"],
        "quota_mb": int(row["quota_mb"]),
        "status": row["state"],
        "execution_id": row["execution_id"],
        "project_id": row["project_id"],
        "livemode": bool(row["livemode"]),
        "password_set": int(row["password_set_at"]) // 1_000_000,
        "created": int(row["created_at"]) // 1_000_000,
        "deleted": None if deleted is None else int(deleted) // 1_000_000,
    }
