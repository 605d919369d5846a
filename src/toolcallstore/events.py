"""Events (`approval.requested`, `execution.succeeded`, `receipt.created`, ...) recorded in the
transaction that caused them; the webhook dispatcher (webhooks/dispatch.py) delivers them from
this table to the endpoints of their tenant and mode. An event recorded without a mode
(`livemode=None`) goes to the tenant's endpoints of both modes."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import SyncTransaction
from toolcallstore.ids import new_id, now_us

COLUMNS = ("id", "tenant_id", "type", "data", "created_at", "livemode")


def record_event(
    tx: SyncTransaction,
    tenant_id: str,
    type_: str,
    data: dict[str, Any],
    *,
    livemode: bool | None = None,
) -> None:
    record_events(tx, tenant_id, [(type_, data)], livemode=livemode)


def record_events(
    tx: SyncTransaction,
    tenant_id: str,
    events: list[tuple[str, dict[str, Any]]],
    *,
    livemode: bool | None = None,
) -> None:
    now = now_us()
    mode = None if livemode is None else int(livemode)
    rows = [(new_id("evt"), tenant_id, type_, orjson.dumps(data).decode(), now, mode)
            for type_, data in events]  # fmt: skip
    tx.insert_many("events", COLUMNS, rows)
