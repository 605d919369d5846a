"""Meter events for 10,000 receipts reach Stripe once each although the server running the
metering job is killed (-9) mid-way and the job reruns; the reconciliation then shows no
difference, and a meter event deleted at Stripe shows up as one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from tests.billing.helpers import STRIPE_KEY, Served, insert_receipts
from tests.conftest import kill_server, start_server, stop_server
from toolcallstore.controls.spend import period_of
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.ids import now_us
from toolcallstore.sandbox import create_sandbox_app

RECEIPTS = 10_000
STRIPE_AUTH = {"Authorization": f"Bearer {STRIPE_KEY}"}


async def meter_events(stripe: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{stripe}/_meter_events", headers=STRIPE_AUTH)
    found: dict[str, Any] = response.json()
    return found


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.1)


async def test_10000_receipts_metered_once_each_across_a_kill(
    database_url: str, tmp_path: Path
) -> None:
    sandbox = await Served(create_sandbox_app()).start()
    stripe = f"{sandbox.url}/stripe"
    env = {
        "TOOLCALLSTORE_STRIPE_API_KEY": STRIPE_KEY,
        "TOOLCALLSTORE_STRIPE_API_BASE": stripe,
        "TOOLCALLSTORE_METER_INTERVAL_SECONDS": "1",
        "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2",
        "TOOLCALLSTORE_JOB_POLL_MS": "200",
        "TOOLCALLSTORE_ACCESS_LOG": "false",
    }
    db = Database(database_url)
    await db.connect()
    await migrate(db)
    server = await asyncio.to_thread(start_server, database_url, tmp_path, **env)
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            tenant = (await client.get("/v1/me", headers=auth)).json()["tenant_id"]
            opened = await client.post("/v1/billing/checkout", json={"plan": "starter"},
                                       headers={**auth, "Idempotency-Key": "c1"})  # fmt: skip
            assert opened.status_code == 200, opened.text
        ids = await db.run_sync(insert_receipts, tenant, RECEIPTS)

        async def some_sent() -> bool:
            return int((await meter_events(stripe))["received"]) >= 2000

        await wait_until(some_sent, 60, "2,000 meter events sent")
    finally:
        await asyncio.to_thread(kill_server, server)
    recorded = int(await db.fetch_val("SELECT count(*) FROM meter_reports"))
    assert recorded < RECEIPTS, "metering finished before the kill; the test proves nothing"

    restarted = await asyncio.to_thread(start_server, database_url, tmp_path, **env)
    try:

        async def all_recorded() -> bool:
            count = await db.fetch_val("SELECT count(*) FROM meter_reports")
            return int(count) == RECEIPTS

        await wait_until(all_recorded, 90, "every receipt metered")
        sent = await meter_events(stripe)
        assert len(sent["data"]) == RECEIPTS
        assert sorted(e["identifier"] for e in sent["data"]) == sorted(ids)  # once each
        counted = sum(int(e["payload"]["value"]) for e in sent["data"])
        charged = await db.fetch_val("SELECT sum(amount_micros) FROM ledger_entries")
        assert counted == int(charged)

        period = period_of(now_us())
        report = await reconciliation(restarted.base_url, auth, period)
        assert report["differences"] == [] and report["unmetered"] == []
        assert report["balanced"] is True
        async with httpx.AsyncClient(timeout=30) as client:
            cancelled = await client.post(
                f"{stripe}/v1/billing/meter_event_adjustments", headers=STRIPE_AUTH,
                data={"event_name": "toolcallstore_usage_micros", "type": "cancel",
                      "cancel[identifier]": ids[17]},
            )  # fmt: skip
        assert cancelled.status_code == 200, cancelled.text
        report = await reconciliation(restarted.base_url, auth, period)
        (difference,) = report["differences"]
        assert difference["tenant_id"] == tenant
        assert difference["difference_usd"] == "-0.001017"  # receipt 17's price
    finally:
        out = await asyncio.to_thread(stop_server, restarted)
        await sandbox.stop()
        await db.disconnect()
    assert "Traceback" not in out


async def reconciliation(base: str, auth: dict[str, str], period: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        response = await client.get(
            f"/v1/admin/reconciliation?period={period}&livemode=true", headers=auth
        )
    assert response.status_code == 200, response.text
    side: dict[str, Any] = response.json()["stripe_metered_usage"]
    return side
