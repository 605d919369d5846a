"""The `billing.meter` job: every settled live receipt with a price, of a tenant with a Stripe
customer, goes to the Billing Meter once, as an event whose `identifier` is the receipt id.

A batch of receipts is sent concurrently, then recorded in `meter_reports` in one
transaction. A crash between the two resends the batch: Stripe counts an identifier once, so a
resend can never bill twice. A failed send leaves its receipt for the next run (the job fails
and the queue retries it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from toolcallstore.billing.base import MeterEvent, PaymentsProvider
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import ProviderError
from toolcallstore.ids import now_us
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, Registry

log = logging.getLogger("toolcallstore.billing")

METER_JOB_TYPE = "billing.meter"
BATCH = 500
CONCURRENCY = 32
_UNMETERED = (
    "SELECT r.id, r.tenant_id, r.price_micros, r.period, r.created_at, a.stripe_customer_id"
    " FROM receipts r JOIN billing_accounts a ON a.tenant_id = r.tenant_id"
    " WHERE r.livemode = 1 AND r.price_micros > 0"
    " AND r.created_at > :oldest AND r.id > :after"
    " AND NOT EXISTS (SELECT 1 FROM meter_reports m WHERE m.receipt_id = r.id)"
    " ORDER BY r.id LIMIT :n"
)
# Stripe takes meter events up to 35 days old; a day's margin for a run that lags.
METER_WINDOW_US = 34 * 86_400 * 1_000_000
_REPORT_COLUMNS = (
    "receipt_id", "tenant_id", "stripe_customer_id", "value_micros", "period", "sent_at"
)  # fmt: skip


async def _send_batch(payments: PaymentsProvider, rows: list[Row]) -> tuple[list[Row], str]:
    """Send each row's meter event; returns the rows Stripe accepted and the first error."""
    gate = asyncio.Semaphore(CONCURRENCY)
    errors: list[str] = []

    async def send(row: Row) -> Row | None:
        event = MeterEvent(row["id"], row["stripe_customer_id"], int(row["price_micros"]),
                           int(row["created_at"]) // 1_000_000)  # fmt: skip
        async with gate:
            try:
                await payments.send_meter_event(event)
            except ProviderError as error:
                errors.append(f"{row['id']}: {error.message}")
                return None
        return row

    sent = [r for r in await asyncio.gather(*(send(r) for r in rows)) if r is not None]
    return sent, errors[0] if errors else ""


def _record(tx: SyncTransaction, rows: list[Row]) -> None:
    now = now_us()
    tx.insert_many("meter_reports", _REPORT_COLUMNS, [
        (r["id"], r["tenant_id"], r["stripe_customer_id"], int(r["price_micros"]), r["period"],
         now) for r in rows
    ])  # fmt: skip


async def send_metered_usage(db: Database, payments: PaymentsProvider) -> dict[str, Any]:
    """Meter every unmetered receipt of the last 34 days, a batch at a time, once over; raises
    at the end, after recording what was accepted, if Stripe refused any."""
    total, refused, first_error, after = 0, 0, "", ""
    oldest = now_us() - METER_WINDOW_US
    while True:
        rows = await db.fetch_all(_UNMETERED, {"n": BATCH, "oldest": oldest, "after": after})
        if not rows:
            break
        sent, error = await _send_batch(payments, rows)
        if sent:
            await db.run_sync(_record, sent)
        total += len(sent)
        refused += len(rows) - len(sent)
        first_error = first_error or error
        after = rows[-1]["id"]  # refused rows wait for the next run instead of blocking this one
    if refused:
        raise RuntimeError(f"{refused} meter events were refused; first: {first_error}")
    return {"metered": total}


def register_meter_job(registry: Registry, db: Database, payments: PaymentsProvider) -> None:
    async def run(ctx: JobContext) -> dict[str, Any]:
        return await send_metered_usage(db, payments)

    registry.register(METER_JOB_TYPE, run, queue="billing", max_attempts=5)


async def schedule_metering(enqueue: Any, stopping: asyncio.Event, interval_s: float) -> None:
    """Enqueue a metering run every `interval_s`; its unique key keeps one queued at a time."""
    job = NewJob(METER_JOB_TYPE, {}, queue="billing", unique_key=METER_JOB_TYPE, max_attempts=5)
    while not stopping.is_set():
        try:
            await enqueue(job)
        except Exception:
            log.exception("could not enqueue metering; will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
