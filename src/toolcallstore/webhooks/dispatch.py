"""From events to deliveries: each undispatched event becomes one delivery row and one job per
subscribed endpoint of its tenant and mode, in the transaction that marks it dispatched. So an
event is fanned out once (Postgres dispatchers skip rows another one has locked; the unique
index on (event, endpoint) backs that up) and every delivery has its job from the start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.ids import new_id, now_us
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.webhooks.endpoints import subscribed

log = logging.getLogger("toolcallstore.webhooks")

DELIVER_JOB_TYPE = "webhooks.deliver"
QUEUE = "webhooks"
MAX_ATTEMPTS = 8  # immediately, then the seven delays of delivery.RETRY_DELAYS_S
DISPATCH_BATCH = 1000
_ANY_UNDISPATCHED = "SELECT id FROM events WHERE dispatched_at IS NULL LIMIT 1"
_DELIVERY_COLUMNS = (
    "id", "tenant_id", "event_id", "endpoint_id", "kind", "state", "job_id", "attempts",
    "created_at",
)  # fmt: skip


def _in_list(prefix: str, values: list[str]) -> tuple[str, dict[str, Any]]:
    names = {f"{prefix}{i}": value for i, value in enumerate(values)}
    return ", ".join(f":{name}" for name in names), names


def insert_deliveries(tx: SyncTransaction, pairs: list[tuple[Row, str]], kind: str) -> list[str]:
    """A delivery and its job for each (event row, endpoint id); returns the delivery ids."""
    now = now_us()
    deliveries, jobs = [], []
    for event, endpoint_id in pairs:
        delivery_id, job_id = new_id("whd"), new_id("job")
        deliveries.append((delivery_id, event["tenant_id"], event["id"], endpoint_id, kind,
                           "pending", job_id, 0, now))  # fmt: skip
        job = NewJob(DELIVER_JOB_TYPE, {"delivery_id": delivery_id}, queue=QUEUE,
                     tenant_id=event["tenant_id"], max_attempts=MAX_ATTEMPTS)  # fmt: skip
        jobs.append((job_id, job))
    if deliveries:
        tx.insert_many("webhook_deliveries", _DELIVERY_COLUMNS, deliveries)
        SqlJobStore.enqueue_many_in(tx, jobs)
    return [d[0] for d in deliveries]


def _live_endpoints(tx: SyncTransaction, tenant_ids: list[str]) -> list[Row]:
    marks, params = _in_list("t", tenant_ids)
    return tx.fetch_all(
        "SELECT id, tenant_id, livemode, events FROM webhook_endpoints"
        f" WHERE tenant_id IN ({marks}) AND deleted_at IS NULL AND disabled = 0",
        params,
    )


def dispatch_events(tx: SyncTransaction, batch: int = DISPATCH_BATCH) -> int:
    """Fan out up to `batch` undispatched events, oldest first; returns how many were taken."""
    lock = " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgresql" else ""
    events = tx.fetch_all(
        "SELECT id, tenant_id, type, livemode FROM events WHERE dispatched_at IS NULL"
        f" ORDER BY id LIMIT :n{lock}",
        {"n": batch},
    )
    if not events:
        return 0
    by_tenant: dict[str, list[Row]] = {}
    for endpoint in _live_endpoints(tx, sorted({e["tenant_id"] for e in events})):
        endpoint["events"] = orjson.loads(endpoint["events"])
        by_tenant.setdefault(endpoint["tenant_id"], []).append(endpoint)
    pairs = [
        (event, endpoint["id"])
        for event in events
        for endpoint in by_tenant.get(event["tenant_id"], ())
        if event["livemode"] in (None, endpoint["livemode"])
        and subscribed(endpoint["events"], event["type"])
    ]
    insert_deliveries(tx, pairs, "event")
    marks, params = _in_list("e", [e["id"] for e in events])
    tx.execute(
        f"UPDATE events SET dispatched_at = :now WHERE id IN ({marks})", {**params, "now": now_us()}
    )
    return len(events)


async def run_dispatcher(
    db: Database, stopping: asyncio.Event, interval_s: float, wake_workers: Callable[[], None]
) -> None:
    """Dispatch new events every `interval_s` (at once again while a batch comes back full)."""
    while not stopping.is_set():
        taken = 0
        try:
            # A read first: an idle tick must not take the (SQLite) writer.
            if await db.fetch_val(_ANY_UNDISPATCHED) is not None:
                taken = await db.run_sync(dispatch_events)
            if taken:
                wake_workers()
        except Exception:
            log.exception("dispatching webhook events failed; will retry")
        if taken >= DISPATCH_BATCH:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
