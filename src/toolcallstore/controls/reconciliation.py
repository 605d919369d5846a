"""The operator's month-end check: what providers cost us, what customers paid, the margin,
and every receipt or spend counter whose numbers do not add up against the ledger."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from toolcallstore.db import Database
from toolcallstore.money import micros_to_usd

_RECEIPTS_OFF = """
SELECT r.id, r.tenant_id, r.price_micros, r.provider_cost_micros, r.margin_micros,
    COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN l.amount_micros ELSE 0 END), 0) AS charged,
    COALESCE(SUM(CASE WHEN l.kind = 'provider_cost' THEN l.amount_micros ELSE 0 END), 0) AS cost
FROM receipts r LEFT JOIN ledger_entries l ON l.receipt_id = r.id
WHERE r.period = :period AND r.livemode = :livemode
GROUP BY r.id, r.tenant_id, r.price_micros, r.provider_cost_micros, r.margin_micros
HAVING COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN l.amount_micros ELSE 0 END), 0)
        <> r.price_micros
    OR COALESCE(SUM(CASE WHEN l.kind = 'provider_cost' THEN l.amount_micros ELSE 0 END), 0)
        <> r.provider_cost_micros
    OR r.margin_micros <> r.price_micros - r.provider_cost_micros
ORDER BY r.id
"""
_COUNTERS = """
SELECT c.owner_id, c.spent_micros, c.held_micros,
    (SELECT COALESCE(SUM(l.amount_micros), 0) FROM ledger_entries l
     WHERE l.period = c.period AND l.livemode = c.livemode AND l.kind = 'charge'
       AND (l.tenant_id = c.owner_id OR l.project_id = c.owner_id)) AS charged,
    (SELECT COALESCE(SUM(h.amount_micros), 0) FROM holds h
     WHERE h.period = c.period AND h.livemode = c.livemode AND h.state = 'open'
       AND (h.tenant_id = c.owner_id OR h.project_id = c.owner_id)) AS open_held
FROM spend_counters c WHERE c.period = :period AND c.livemode = :livemode
ORDER BY c.owner_id
"""


async def _losing_attempts(db: Database, values: dict[str, Any]) -> dict[str, Any]:
    """LLM attempts that did not answer (hedges that lost, failed or cancelled attempts): how
    many, what providers billed for them, and how much of it the lanes passed to customers."""
    count, cost, passed = 0, Decimal(0), Decimal(0)
    rows = await db.fetch_all(
        "SELECT attempts FROM receipts WHERE period = :period AND livemode = :livemode"
        " AND tool = 'llm.chat'",
        values,
    )
    for row in rows:
        for attempt in orjson.loads(row["attempts"]):
            if "cost_paid_by" not in attempt:
                continue
            count += 1
            amount = Decimal(attempt["provider_cost_usd"])
            cost += amount
            if attempt["cost_paid_by"] == "customer":
                passed += amount
    return {
        "attempts": count,
        "provider_cost_usd": f"{cost:.6f}",
        "passed_to_customers_usd": f"{passed:.6f}",
        "absorbed_usd": f"{cost - passed:.6f}",
    }


def _amounts(price: int, cost: int) -> dict[str, str]:
    return {
        "customer_price_usd": micros_to_usd(price),
        "provider_cost_usd": micros_to_usd(cost),
        "margin_usd": micros_to_usd(price - cost),
    }


async def reconcile(db: Database, period: str, livemode: bool) -> dict[str, Any]:
    values = {"period": period, "livemode": int(livemode)}
    period_entries = " FROM ledger_entries WHERE period = :period AND livemode = :livemode"
    rows = await db.fetch_all(
        f"SELECT provider, kind, SUM(amount_micros) AS total{period_entries}"
        " GROUP BY provider, kind ORDER BY provider, kind",
        values,
    )
    by_provider: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = by_provider.setdefault(row["provider"] or "(none)", {"receipts": 0})
        entry[row["kind"]] = int(row["total"])
    # A receipt counts once per provider it has entries for (a call that failed over has
    # several), and once in the total.
    for row in await db.fetch_all(
        f"SELECT provider, COUNT(DISTINCT receipt_id) AS n{period_entries} GROUP BY provider",
        values,
    ):
        by_provider[row["provider"] or "(none)"]["receipts"] = int(row["n"])
    receipts = int(
        await db.fetch_val(f"SELECT COUNT(DISTINCT receipt_id){period_entries}", values) or 0
    )
    providers = [
        {"provider": name, "receipts": e["receipts"],
         **_amounts(e.get("charge", 0), e.get("provider_cost", 0))}
        for name, e in sorted(by_provider.items())
    ]  # fmt: skip
    price = sum(e.get("charge", 0) for e in by_provider.values())
    cost = sum(e.get("provider_cost", 0) for e in by_provider.values())
    mismatches = [
        {"kind": "receipt", "id": r["id"], "tenant_id": r["tenant_id"],
         "receipt_price_usd": micros_to_usd(int(r["price_micros"])),
         "ledger_charged_usd": micros_to_usd(int(r["charged"])),
         "receipt_provider_cost_usd": micros_to_usd(int(r["provider_cost_micros"])),
         "ledger_provider_cost_usd": micros_to_usd(int(r["cost"])),
         "receipt_margin_usd": micros_to_usd(int(r["margin_micros"]))}
        for r in await db.fetch_all(_RECEIPTS_OFF, values)
    ]  # fmt: skip
    for c in await db.fetch_all(_COUNTERS, values):
        if int(c["spent_micros"]) != int(c["charged"]) or int(c["held_micros"]) != int(
            c["open_held"]
        ):
            mismatches.append(
                {"kind": "spend_counter", "id": c["owner_id"],
                 "counter_spent_usd": micros_to_usd(int(c["spent_micros"])),
                 "ledger_charged_usd": micros_to_usd(int(c["charged"])),
                 "counter_held_usd": micros_to_usd(int(c["held_micros"])),
                 "open_holds_usd": micros_to_usd(int(c["open_held"]))}
            )  # fmt: skip
    return {
        "object": "reconciliation",
        "losing_attempts": await _losing_attempts(db, values),
        "period": period,
        "livemode": livemode,
        "providers": providers,
        "total": {"receipts": receipts, **_amounts(price, cost)},
        "mismatches": mismatches,
        "balanced": not mismatches,
        # Stripe's side (billing/reconciliation.py), filled in for live mode when billing is on.
        "stripe_metered_usage": None,
    }
