"""Events (`approval.requested`, `execution.succeeded`, `receipt.created`, ...) recorded in the
transaction that caused them; the webhook sender delivers them from this table."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import SyncTransaction
from toolcallstore.ids import new_id, now_us


def record_event(tx: SyncTransaction, tenant_id: str, type_: str, data: dict[str, Any]) -> str:
    event_id = new_id("evt")
    tx.execute(
        "INSERT INTO events (id, tenant_id, type, data, created_at)"
        " VALUES (:id, :tenant_id, :type, :data, :now)",
        {
            "id": event_id,
            "tenant_id": tenant_id,
            "type": type_,
            "data": orjson.dumps(data).decode(),
            "now": now_us(),
        },
    )
    return event_id
