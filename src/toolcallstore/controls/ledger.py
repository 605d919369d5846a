"""Receipts and the append-only ledger (DESIGN §5, receipts and ledger).

A receipt is written once per execution, in the transaction that settles or releases its hold;
the same transaction appends the ledger entries (`charge` to the customer, `provider_cost` to
us), so ledger, receipts and spend counters can only change together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from toolcallstore.db import Row, SyncTransaction
from toolcallstore.ids import new_id, now_us
from toolcallstore.money import micros_to_usd

KINDS = ("charge", "provider_cost", "refund", "adjustment")


@dataclass(frozen=True)
class Charge:
    """What one finished execution costs, as the receipt records it."""

    status: str  # succeeded | failed
    price_micros: int
    provider_cost_micros: int
    provider: str | None
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    estimated: bool = False
    # Provider cost split by provider when attempts went to several; else all `provider`'s.
    provider_costs: dict[str, int] = field(default_factory=dict)


def receipt_id_for(execution_id: str) -> str:
    """An execution's receipt id, known before it closes: chat calls announce it in their
    headers, `llm.chat` puts it in its result, and the sweep closes under the same id."""
    return "rcpt_" + execution_id.removeprefix("exe_")


def write_receipt(
    tx: SyncTransaction, execution: Row, charge: Charge, period: str, receipt_id: str | None = None
) -> dict[str, Any]:
    now = now_us()
    common = {
        "tenant_id": execution["tenant_id"],
        "project_id": execution["project_id"],
        "tool": execution["tool"],
        "period": period,
        "livemode": int(execution["livemode"]),
        "created_at": now,
    }
    receipt = {
        "id": receipt_id or receipt_id_for(execution["id"]),
        **common,
        "execution_id": execution["id"],
        "quote_id": execution["quote_id"],
        "approval_id": execution["approval_id"],
        "status": charge.status,
        "price_micros": charge.price_micros,
        "provider_cost_micros": charge.provider_cost_micros,
        "margin_micros": charge.price_micros - charge.provider_cost_micros,
        "providers": _providers(charge),
        "attempts": orjson.dumps(charge.attempts).decode(),
        "usage": orjson.dumps(charge.usage).decode(),
        "estimated": int(charge.estimated),
    }
    columns = ", ".join(receipt)
    tx.execute(
        f"INSERT INTO receipts ({columns}) VALUES ({', '.join(':' + c for c in receipt)})",
        receipt,
    )
    _append_entries(tx, common, receipt["id"], charge, now)
    return receipt


def settle_late(tx: SyncTransaction, receipt_id: str, charge: Charge) -> None:
    """Rewrite the zero receipt of an execution the sweep gave up on, now that its tool has
    finished after all (a job that lost its lease acted anyway): its price and costs, the
    ledger entries for them, and `settled_late` so that the correction shows."""
    row = tx.fetch_one("SELECT * FROM receipts WHERE id = :id", {"id": receipt_id})
    assert row is not None, f"receipt {receipt_id} is missing"
    tx.execute(
        "UPDATE receipts SET status = :status, price_micros = :price, provider_cost_micros ="
        " :cost, margin_micros = :margin, providers = :providers, attempts = :attempts,"
        " usage = :usage, estimated = :estimated, settled_late = 1 WHERE id = :id",
        {"status": charge.status, "price": charge.price_micros,
         "cost": charge.provider_cost_micros,
         "margin": charge.price_micros - charge.provider_cost_micros,
         "providers": _providers(charge), "attempts": orjson.dumps(charge.attempts).decode(),
         "usage": orjson.dumps(charge.usage).decode(), "estimated": int(charge.estimated),
         "id": receipt_id},
    )  # fmt: skip
    common = {k: row[k] for k in ("tenant_id", "project_id", "tool", "period", "livemode")}
    _append_entries(tx, common, receipt_id, charge, now_us())


def _providers(charge: Charge) -> str:
    names = list(charge.provider_costs) or ([charge.provider] if charge.provider else [])
    return orjson.dumps(names).decode()


def _append_entries(
    tx: SyncTransaction, common: dict[str, Any], receipt_id: str, charge: Charge, now: int
) -> None:
    entries = []
    if charge.price_micros:
        entries.append(("charge", charge.price_micros, charge.provider))
    costs = charge.provider_costs or {charge.provider or "": charge.provider_cost_micros}
    for provider, amount in costs.items():
        if amount:
            entries.append(("provider_cost", amount, provider or None))
    if entries:
        tx.insert_many(
            "ledger_entries",
            ("id", "tenant_id", "project_id", "receipt_id", "kind", "amount_micros", "tool",
             "provider", "period", "livemode", "created_at"),
            [
                (new_id("le"), common["tenant_id"], common["project_id"], receipt_id, kind,
                 amount, common["tool"], provider, common["period"], common["livemode"], now)
                for kind, amount, provider in entries
            ],
        )  # fmt: skip


def receipt_object(row: Row, *, operator: bool) -> dict[str, Any]:
    """A receipt as the API shows it; provider cost and margin only to operators."""
    obj: dict[str, Any] = {
        "id": row["id"],
        "object": "receipt",
        "tool": row["tool"],
        "status": row["status"],
        "amount_usd": micros_to_usd(int(row["price_micros"])),
        "currency": "usd",
        "execution_id": row["execution_id"],
        "quote_id": row["quote_id"],
        "approval_id": row["approval_id"],
        "project_id": row["project_id"],
        "providers": orjson.loads(row["providers"]),
        "attempts": orjson.loads(row["attempts"]),
        "usage": orjson.loads(row["usage"]),
        "estimated": bool(row["estimated"]),
        "settled_late": bool(row["settled_late"]),
        "period": row["period"],
        "livemode": bool(row["livemode"]),
        "created": int(row["created_at"]) // 1_000_000,
    }
    if operator:
        obj["tenant_id"] = row["tenant_id"]
        obj["provider_cost_usd"] = micros_to_usd(int(row["provider_cost_micros"]))
        obj["margin_usd"] = micros_to_usd(int(row["margin_micros"]))
    else:
        for attempt in obj["attempts"]:
            attempt.pop("provider_cost_usd", None)
    return obj
