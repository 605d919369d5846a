"""Stripe's side of the month-end reconciliation: for each tenant with a Stripe customer, the
ledger's live charges, what we metered, and what Stripe's meter counts; plus the receipts not
metered yet. Every tenant whose three numbers disagree is listed with the difference."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from toolcallstore.billing.base import PaymentsProvider
from toolcallstore.billing.metering import METER_WINDOW_US
from toolcallstore.db import Database, Row
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd

_CHARGES = (
    "SELECT a.tenant_id, a.stripe_customer_id,"
    " (SELECT coalesce(sum(l.amount_micros), 0) FROM ledger_entries l WHERE l.tenant_id ="
    " a.tenant_id AND l.period = :period AND l.livemode = 1 AND l.kind = 'charge') AS charged,"
    " (SELECT coalesce(sum(m.value_micros), 0) FROM meter_reports m WHERE m.tenant_id ="
    " a.tenant_id AND m.period = :period) AS metered"
    " FROM billing_accounts a ORDER BY a.tenant_id"
)
_UNMETERED = (
    "SELECT r.tenant_id, count(*) AS receipts, sum(r.price_micros) AS amount,"
    " max(CASE WHEN a.tenant_id IS NULL THEN 0 ELSE 1 END) AS has_customer,"
    " min(r.created_at) AS oldest"
    " FROM receipts r LEFT JOIN billing_accounts a ON a.tenant_id = r.tenant_id"
    " WHERE r.period = :period AND r.livemode = 1 AND r.price_micros > 0"
    " AND NOT EXISTS (SELECT 1 FROM meter_reports m WHERE m.receipt_id = r.id)"
    " GROUP BY r.tenant_id ORDER BY r.tenant_id"
)


def _reason(row: Row) -> str:
    if not row["has_customer"]:
        return "no_stripe_customer"
    if int(row["oldest"]) <= now_us() - METER_WINDOW_US:
        return "older_than_stripe_accepts"
    return "awaiting_send"


def month_bounds(period: str) -> tuple[int, int]:
    """[first second of the month, first second of the next) as unix seconds, UTC."""
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def _usd(micros: int | Decimal) -> str:
    return micros_to_usd(int(micros))


async def stripe_side(db: Database, payments: PaymentsProvider, period: str) -> dict[str, Any]:
    values = {"period": period}
    start, end = month_bounds(period)
    unmetered = [
        {"tenant_id": r["tenant_id"], "receipts": int(r["receipts"]),
         "amount_usd": _usd(int(r["amount"])),
         "reason": _reason(r)}
        for r in await db.fetch_all(_UNMETERED, values)
    ]  # fmt: skip
    unsent = {u["tenant_id"]: u for u in unmetered if u["reason"] == "awaiting_send"}
    tenants, differences = [], []
    for row in await db.fetch_all(_CHARGES, values):
        charged, metered = int(row["charged"]), int(row["metered"])
        counted = await payments.metered_total(row["stripe_customer_id"], start, end)
        entry = {"tenant_id": row["tenant_id"], "customer": row["stripe_customer_id"],
                 "ledger_charged_usd": _usd(charged), "metered_usd": _usd(metered),
                 "stripe_counted_usd": _usd(counted)}  # fmt: skip
        tenants.append(entry)
        if counted != metered:
            differences.append({**entry, "kind": "stripe_differs_from_metered",
                                "difference_usd": _usd(counted - metered)})  # fmt: skip
        elif metered != charged and row["tenant_id"] not in unsent:
            differences.append({**entry, "kind": "metered_differs_from_ledger",
                                "difference_usd": _usd(metered - charged)})  # fmt: skip
    return {
        "period": period,
        "tenants": tenants,
        "unmetered": unmetered,
        "differences": differences,
        "balanced": not differences and not unsent,
    }
