"""Events (`approval.requested`, `execution.succeeded`, `receipt.created`, ...) recorded in the
transaction that caused them; the webhook sender delivers them from this table."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import SyncTransaction
from toolcallstore.ids import new_id, now_us


def record_event(tx: SyncTransaction, tenant_id: str, type_: str, data: dict[str, Any]) -> None:
    record_events(tx, tenant_id, [(type_, data)])


def record_events(
    tx: SyncTransaction, tenant_id: str, events: list[tuple[str, dict[str, Any]]]
) -> None:
    now = now_us()
    rows = [(new_id("evt"), tenant_id, type_, orjson.dumps(data).decode(), now)
            for type_, data in events]  # fmt: skip
    tx.insert_many("events", ("id", "tenant_id", "type", "data", "created_at"), rows)
