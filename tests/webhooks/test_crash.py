"""kill -9 of the server with 1,000 deliveries pending: after a restart every event reaches
the receiver (at least once, same webhook-id), and every delivery ends succeeded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import kill_server, start_server, stop_server
from tests.webhooks.helpers import MASTER_KEY, Receiver, wait_for
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.events import record_events

EVENTS = 1000
ENV = {
    "TOOLCALLSTORE_MASTER_KEY": MASTER_KEY,
    "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2",
    "TOOLCALLSTORE_WORKERS": "8",
    "TOOLCALLSTORE_JOB_POLL_MS": "200",
    "TOOLCALLSTORE_WEBHOOK_DISPATCH_MS": "50",
    "TOOLCALLSTORE_ACCESS_LOG": "false",
}
SUCCEEDED = "SELECT count(*) FROM webhook_deliveries WHERE state = 'succeeded'"


async def _count(db: Database, sql: str) -> int:
    return int(await db.fetch_val(sql))


async def test_kill_9_with_1000_deliveries_pending_loses_none(
    database_url: str, tmp_path: Path
) -> None:
    db = Database(database_url)
    await db.connect()
    await migrate(db)
    receiver = await Receiver(delay_s=0.01).start()
    server = await asyncio.to_thread(start_server, database_url, tmp_path, **ENV)
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            auth = {"Authorization": f"Bearer {server.admin_key}", "Idempotency-Key": "e1"}
            created = await client.post(
                "/v1/webhook_endpoints", json={"url": receiver.url, "events": ["quote.*"]},
                headers=auth,
            )  # fmt: skip
            assert created.status_code == 200, created.text
            tenant = (await client.get("/v1/me", headers=auth)).json()["tenant_id"]
        batch = [("quote.created", {"n": i}) for i in range(EVENTS)]
        await db.run_sync(record_events, tenant, batch, livemode=False)
        await wait_for(lambda: len(set(receiver.ids())) >= 150, timeout=60, what="150 received")
    finally:
        await asyncio.to_thread(kill_server, server)
    pending = EVENTS - await _count(db, SUCCEEDED)
    assert pending > 0, "everything was delivered before the kill; the test proves nothing"

    restarted = await asyncio.to_thread(start_server, database_url, tmp_path, **ENV)
    try:
        await wait_for(lambda: _done(db), timeout=90, what="every delivery succeeded")
    finally:
        out = await asyncio.to_thread(stop_server, restarted)
        await receiver.stop()
    assert "Traceback" not in out
    event_ids = {r["id"] for r in await db.fetch_all("SELECT id FROM events")}
    assert len(event_ids) == EVENTS
    assert set(receiver.ids()) == event_ids  # none lost
    assert await _count(db, "SELECT count(*) FROM webhook_deliveries") == EVENTS  # fanned once
    assert await _count(db, f"{SUCCEEDED}") == EVENTS
    await db.disconnect()


async def _done(db: Database) -> bool:
    return await _count(db, SUCCEEDED) == EVENTS
