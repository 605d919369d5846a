"""The read side of events and their deliveries, and the deliveries a tenant asks for by hand:
a redelivery of an event, a test event to one endpoint."""

from __future__ import annotations

from typing import Any

import orjson

from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import NotFound
from toolcallstore.ids import new_id, now_us
from toolcallstore.webhooks.dispatch import insert_deliveries
from toolcallstore.webhooks.endpoints import Endpoint, subscribed

TEST_EVENT_TYPE = "webhook_endpoint.test"
_VISIBLE = "tenant_id = :t AND (livemode = :live OR livemode IS NULL)"


def _seconds(us: int | None) -> int | None:
    return None if us is None else us // 1_000_000


def event_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "event",
        "type": row["type"],
        "created": _seconds(row["created_at"]),
        "livemode": None if row["livemode"] is None else bool(row["livemode"]),
        "data": orjson.loads(row["data"]),
    }


def attempt_object(row: Row) -> dict[str, Any]:
    return {
        "attempt": row["attempt"],
        "status": row["status"],
        "error": row["error"],
        "response_body": row["response_body"],
        "duration_ms": row["duration_ms"],
        "created": _seconds(row["created_at"]),
    }


def delivery_object(row: Row, attempts: list[Row]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_delivery",
        "endpoint_id": row["endpoint_id"],
        "kind": row["kind"],
        "state": row["state"],
        "attempt_count": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt": _seconds(row["next_attempt_at"]),
        "created": _seconds(row["created_at"]),
        "finished": _seconds(row["finished_at"]),
        "attempts": [attempt_object(a) for a in attempts],
    }


async def list_events(
    db: Database,
    tenant_id: str,
    livemode: bool,
    *,
    type_: str | None,
    limit: int,
    starting_after: str | None,
) -> tuple[list[Row], bool]:
    params: dict[str, Any] = {"t": tenant_id, "live": int(livemode), "n": limit + 1}
    where = _VISIBLE
    if type_ is not None:
        where, params["type"] = where + " AND type = :type", type_
    if starting_after is not None:
        where, params["after"] = where + " AND id < :after", starting_after
    rows = await db.fetch_all(
        f"SELECT * FROM events WHERE {where} ORDER BY id DESC LIMIT :n", params
    )
    return rows[:limit], len(rows) > limit


async def get_event(db: Database, tenant_id: str, livemode: bool, event_id: str) -> Row:
    row = await db.fetch_one(
        f"SELECT * FROM events WHERE id = :id AND {_VISIBLE}",
        {"id": event_id, "t": tenant_id, "live": int(livemode)},
    )
    if row is None:
        raise NotFound("No such event.", param="event_id")
    return row


async def event_deliveries(db: Database, event_id: str) -> list[dict[str, Any]]:
    deliveries = await db.fetch_all(
        "SELECT * FROM webhook_deliveries WHERE event_id = :id ORDER BY id", {"id": event_id}
    )
    attempts = await db.fetch_all(
        "SELECT a.* FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
        " WHERE d.event_id = :id ORDER BY a.id",
        {"id": event_id},
    )
    by_delivery: dict[str, list[Row]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt["delivery_id"], []).append(attempt)
    return [delivery_object(d, by_delivery.get(d["id"], [])) for d in deliveries]


def redeliver_event(
    tx: SyncTransaction, tenant_id: str, livemode: bool, event_id: str, endpoint_id: str | None
) -> list[str]:
    """New deliveries of an event: to one endpoint of the mode, or to every enabled endpoint
    now subscribed to its type. Returns the delivery ids."""
    event = tx.fetch_one(
        f"SELECT * FROM events WHERE id = :id AND {_VISIBLE}",
        {"id": event_id, "t": tenant_id, "live": int(livemode)},
    )
    if event is None:
        raise NotFound("No such event.", param="event_id")
    endpoints = tx.fetch_all(
        "SELECT id, events FROM webhook_endpoints WHERE tenant_id = :t AND livemode = :live"
        " AND deleted_at IS NULL AND disabled = 0",
        {"t": tenant_id, "live": int(livemode)},
    )
    if endpoint_id is not None:
        chosen = [e["id"] for e in endpoints if e["id"] == endpoint_id]
        if not chosen:
            raise NotFound("No such enabled webhook endpoint.", param="endpoint_id")
    else:
        chosen = [e["id"] for e in endpoints
                  if subscribed(orjson.loads(e["events"]), event["type"])]  # fmt: skip
    return insert_deliveries(tx, [(event, e) for e in chosen], "redelivery")


def send_test_event(tx: SyncTransaction, endpoint: Endpoint) -> tuple[Row, str]:
    """A `webhook_endpoint.test` event delivered to this endpoint only (it is recorded already
    dispatched, so no other endpoint gets it)."""
    now = now_us()
    event: Row = {
        "id": new_id("evt"),
        "tenant_id": endpoint.tenant_id,
        "type": TEST_EVENT_TYPE,
        "data": orjson.dumps({"endpoint_id": endpoint.id, "url": endpoint.url}).decode(),
        "created_at": now,
        "livemode": int(endpoint.livemode),
        "dispatched_at": now,
    }
    tx.execute(
        "INSERT INTO events (id, tenant_id, type, data, created_at, livemode, dispatched_at)"
        " VALUES (:id, :tenant_id, :type, :data, :created_at, :livemode, :dispatched_at)",
        event,
    )
    (delivery_id,) = insert_deliveries(tx, [(event, endpoint.id)], "test")
    return event, delivery_id
