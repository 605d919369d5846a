"""Servers on real loopback sockets inside the test's event loop: the sandbox (whose Stripe
fake the official `stripe` SDK talks to) and the app itself (which the fake's signed events
reach over HTTP)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import uvicorn

from tests.conftest import free_port
from toolcallstore.controls.spend import period_of
from toolcallstore.db import SyncTransaction
from toolcallstore.ids import new_id, now_us

STRIPE_KEY = "sk_test_sandbox"
WEBHOOK_SECRET = "whsec_test_" + "s3cr3t" * 4


class Served:
    """`app` served by uvicorn on a free loopback port until `stop()`."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Served:
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 20
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task


async def emit(stripe_base: str, target: str, type_: str, obj: dict[str, Any],
               **event: Any) -> dict[str, Any]:  # fmt: skip
    """Have the fake sign a Stripe event and POST it to our webhook; its answer."""
    spec = {"type": type_, "object": obj, "url": target, "secret": WEBHOOK_SECRET, **event}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stripe_base}/_emit", json=spec)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def insert_receipts(
    tx: SyncTransaction, tenant_id: str, count: int, created_at: int | None = None
) -> list[str]:
    """Settled live receipts with their ledger entries, as executions leave them."""
    now = now_us() if created_at is None else created_at
    period = period_of(now)
    receipts, entries = [], []
    for i in range(count):
        receipt_id, price = new_id("rcpt"), 1000 + i
        receipts.append(
            (
                receipt_id,
                tenant_id,
                new_id("exe"),
                new_id("q"),
                "sandbox.echo",
                "succeeded",
                price,
                0,
                price,
                "[]",
                "[]",
                "{}",
                0,
                1,
                period,
                now,
            )
        )
        entries.append((new_id("le"), tenant_id, receipt_id, "charge", price, "sandbox.echo",
                        "sandbox", period, 1, now))  # fmt: skip
    tx.insert_many("receipts", (
        "id", "tenant_id", "execution_id", "quote_id", "tool", "status", "price_micros",
        "provider_cost_micros", "margin_micros", "providers", "attempts", "usage", "estimated",
        "livemode", "period", "created_at"), receipts)  # fmt: skip
    tx.insert_many("ledger_entries", (
        "id", "tenant_id", "receipt_id", "kind", "amount_micros", "tool", "provider", "period",
        "livemode", "created_at"), entries)  # fmt: skip
    return [r[0] for r in receipts]
