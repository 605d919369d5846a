"""Mailboxes are priced per month: the first month is the creating call's own receipt; the
`mail.charge_months` job charges every later month of each live mailbox once, with a receipt
and ledger entries like any call's (so Stripe metering and reconciliation see it).

Once per (mailbox, month) is the `mailbox_charges` primary key, claimed in the transaction
that writes the receipt: a job run twice, or by two processes, charges nothing twice. A month
already begun is charged whatever the spend cap: the mailbox exists; caps stop new calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from toolcallstore.controls.ledger import Charge, write_receipt
from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.controls.spend import period_of
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.events import record_events
from toolcallstore.ids import new_id, now_us
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, Registry

log = logging.getLogger("toolcallstore.mail")

CHARGE_JOB_TYPE = "mail.charge_months"
BATCH = 200
_UNCHARGED = (
    "SELECT m.id, m.tenant_id, m.project_id, m.livemode, m.execution_id, e.quote_id,"
    " e.approval_id FROM mailboxes m JOIN executions e ON e.id = m.execution_id"
    " WHERE m.state = 'active' AND m.id > :after AND NOT EXISTS (SELECT 1 FROM"
    " mailbox_charges c WHERE c.mailbox_id = m.id AND c.period = :period) ORDER BY m.id LIMIT :n"
)


def charge_month(tx: SyncTransaction, mailbox: Row, period: str, estimate: Estimate) -> bool:
    """Charge `mailbox` for `period` unless it was already; whether this call charged it."""
    receipt_id = new_id("rcpt")
    claimed = tx.fetch_one(
        "INSERT INTO mailbox_charges (mailbox_id, period, receipt_id, amount_micros, created_at)"
        " VALUES (:m, :p, :r, :a, :now) ON CONFLICT (mailbox_id, period) DO NOTHING"
        " RETURNING mailbox_id",
        {"m": mailbox["id"], "p": period, "r": receipt_id, "a": estimate.price_micros,
         "now": now_us()},
    )  # fmt: skip
    if claimed is None:
        return False
    origin = {
        "id": f"{mailbox['execution_id']}:{period}",  # the subscription's month
        "tenant_id": mailbox["tenant_id"], "project_id": mailbox["project_id"],
        "tool": "email.mailbox.create", "livemode": mailbox["livemode"],
        "quote_id": mailbox["quote_id"], "approval_id": mailbox["approval_id"],
    }  # fmt: skip
    usage = {"mailbox_id": mailbox["id"], "mailbox_months": 1, "period": period}
    charge = Charge("succeeded", estimate.price_micros, estimate.provider_cost_micros,
                    estimate.provider, usage, [])  # fmt: skip
    write_receipt(tx, origin, charge, period, receipt_id)
    record_events(tx, mailbox["tenant_id"], [("receipt.created", {
        "receipt_id": receipt_id, "status": "succeeded", "amount_micros": estimate.price_micros,
        "mailbox_id": mailbox["id"]})], livemode=bool(mailbox["livemode"]))  # fmt: skip
    owners = [mailbox["tenant_id"]] + ([mailbox["project_id"]] if mailbox["project_id"] else [])
    for owner_id in owners:  # tenant first, then project: the lock order of holds
        key = {"o": owner_id, "p": period, "l": int(mailbox["livemode"]),
               "a": estimate.price_micros}  # fmt: skip
        tx.execute("INSERT INTO spend_counters (owner_id, period, livemode, spent_micros,"
                   " held_micros) VALUES (:o, :p, :l, 0, 0)"
                   " ON CONFLICT (owner_id, period, livemode) DO NOTHING", key)  # fmt: skip
        tx.execute_last(
            "UPDATE spend_counters SET spent_micros = spent_micros + :a"
            " WHERE owner_id = :o AND period = :p AND livemode = :l",
            key,
        )
    return True


async def charge_mailbox_months(
    db: Database, pricing: Pricing, now: int | None = None
) -> dict[str, Any]:
    """Charge every live mailbox not yet charged for the month of `now` (default: this one)."""
    period = period_of(now_us() if now is None else now)
    estimate = pricing.for_tool("email.mailbox.create").quote()
    charged, after = 0, ""
    while True:
        rows = await db.fetch_all(_UNCHARGED, {"period": period, "after": after, "n": BATCH})
        if not rows:
            break
        for row in rows:  # one transaction each: a mailbox's month is one receipt
            charged += await db.run_sync(charge_month, row, period, estimate)
        after = rows[-1]["id"]
    return {"period": period, "charged": charged}


def register_month_job(registry: Registry, db: Database, pricing: Pricing) -> None:
    async def run(ctx: JobContext) -> dict[str, Any]:
        return await charge_mailbox_months(db, pricing)

    registry.register(CHARGE_JOB_TYPE, run, queue="billing", max_attempts=5)


async def schedule_month_charges(enqueue: Any, stopping: asyncio.Event, interval_s: float
                                 ) -> None:  # fmt: skip
    """Enqueue a charging run every `interval_s` (it finds a new month within that time);
    its unique key keeps one queued at a time across processes."""
    job = NewJob(CHARGE_JOB_TYPE, {}, queue="billing", unique_key=CHARGE_JOB_TYPE, max_attempts=5)
    while not stopping.is_set():
        try:
            await enqueue(job)
        except Exception:
            log.exception("could not enqueue mailbox charges; will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)
