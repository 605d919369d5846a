"""A tenant's billing account: its Stripe customer, its plan from Stripe's webhooks, and
whether its live keys are suspended for a payment failing past the grace period.

Stripe's events are applied once each (by event id) and in any order: plan changes
(checkout.session.completed, customer.subscription.*) apply only if newer than the last one
applied, and so do payment outcomes (invoice.paid, invoice.payment_failed).
"""

from __future__ import annotations

import time
from typing import Any

from toolcallstore.billing.base import PaymentsProvider
from toolcallstore.billing.config import BillingConfig, Plan
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.ids import now_us

PLAN_EVENTS = frozenset(
    {"checkout.session.completed", "customer.subscription.created",
     "customer.subscription.updated", "customer.subscription.deleted"}
)  # fmt: skip
PAYMENT_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired", "unpaid"})


async def ensure_customer(db: Database, payments: PaymentsProvider, tenant_id: str) -> str:
    """The tenant's Stripe customer, created on first need (Stripe's idempotency key per
    tenant keeps two racing requests to one customer)."""
    found = await db.fetch_val(
        "SELECT stripe_customer_id FROM billing_accounts WHERE tenant_id = :t", {"t": tenant_id}
    )
    if found is not None:
        return str(found)
    customer_id = await payments.create_customer(tenant_id)

    def store(tx: SyncTransaction) -> str:
        now = now_us()
        tx.execute(
            "INSERT INTO billing_accounts (tenant_id, stripe_customer_id, created_at, updated_at)"
            " VALUES (:t, :c, :now, :now) ON CONFLICT (tenant_id) DO NOTHING",
            {"t": tenant_id, "c": customer_id, "now": now},
        )
        stored = tx.fetch_val(
            "SELECT stripe_customer_id FROM billing_accounts WHERE tenant_id = :t",
            {"t": tenant_id},
        )
        return str(stored)

    return await db.run_sync(store)


def _account_for(tx: SyncTransaction, obj: dict[str, Any]) -> Row | None:
    customer = obj.get("customer")
    if customer is not None:
        row = tx.fetch_one("SELECT * FROM billing_accounts WHERE stripe_customer_id = :c",
                           {"c": customer})  # fmt: skip
        if row is not None:
            return row
    tenant = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("tenant_id")
    if tenant is None:
        return None
    row = tx.fetch_one("SELECT * FROM billing_accounts WHERE tenant_id = :t", {"t": tenant})
    known = tx.fetch_val("SELECT count(*) FROM tenants WHERE id = :t", {"t": tenant})
    if row is None and customer is not None and known:
        # A session opened elsewhere (the dashboard) for one of our tenants: adopt its customer.
        now = now_us()
        tx.execute(
            "INSERT INTO billing_accounts (tenant_id, stripe_customer_id, created_at, updated_at)"
            " VALUES (:t, :c, :now, :now) ON CONFLICT DO NOTHING",
            {"t": tenant, "c": customer, "now": now},
        )
        row = tx.fetch_one("SELECT * FROM billing_accounts WHERE tenant_id = :t", {"t": tenant})
    return row


def _plan_of(config: BillingConfig, type_: str, obj: dict[str, Any]) -> tuple[Plan | None, str]:
    if type_ == "checkout.session.completed":
        return config.plans.get((obj.get("metadata") or {}).get("plan", "")), "active"
    status = "canceled" if type_ == "customer.subscription.deleted" else str(obj.get("status"))
    if status in ENDED_STATUSES:
        return None, status
    prices = {item["price"]["id"] for item in (obj.get("items") or {}).get("data", [])}
    return config.plan_of_prices(prices), status


def _apply_plan(
    tx: SyncTransaction, config: BillingConfig, account: Row, event: dict[str, Any]
) -> str:
    created, obj = int(event["created"]), event["data"]["object"]
    if account["subscription_event_at"] is not None and created < account["subscription_event_at"]:
        return "stale"
    plan, status = _plan_of(config, event["type"], obj)
    subscription = (
        obj.get("subscription") if obj.get("object") == "checkout.session" else obj.get("id")
    )
    tx.execute(
        "UPDATE billing_accounts SET plan = :plan,"
        " subscription_id = coalesce(:sub, subscription_id), subscription_status = :status,"
        " subscription_event_at = :at, updated_at = :now"
        " WHERE tenant_id = :t",
        {"plan": None if plan is None else plan.name, "sub": subscription, "status": status,
         "at": created, "now": now_us(), "t": account["tenant_id"]},
    )  # fmt: skip
    if plan is not None:  # the plan's default spend cap (live and test spend alike)
        tx.execute("UPDATE tenants SET monthly_cap_micros = :cap WHERE id = :t",
                   {"cap": plan.monthly_cap_micros, "t": account["tenant_id"]})  # fmt: skip
    return "applied"


def _apply_payment(tx: SyncTransaction, account: Row, event: dict[str, Any]) -> str:
    created = int(event["created"])
    if account["payment_event_at"] is not None and created < account["payment_event_at"]:
        return "stale"
    failed = event["type"] == "invoice.payment_failed"
    tx.execute(
        "UPDATE billing_accounts SET payment_failed_at = CASE WHEN :failed = 1"
        " THEN coalesce(payment_failed_at, :failed_at) ELSE NULL END,"
        " payment_event_at = :at, updated_at = :now WHERE tenant_id = :t",
        {"failed": int(failed), "failed_at": created * 1_000_000, "at": created,
         "now": now_us(), "t": account["tenant_id"]},
    )  # fmt: skip
    return "applied"


def apply_stripe_event(tx: SyncTransaction, config: BillingConfig, event: dict[str, Any]) -> str:
    """Apply a verified Stripe event once: 'duplicate', 'ignored', 'stale' or 'applied'."""
    inserted = tx.fetch_one(
        "INSERT INTO stripe_events (id, type, created, received_at) VALUES (:id, :type,"
        " :created, :now) ON CONFLICT (id) DO NOTHING RETURNING id",
        {"id": event["id"], "type": event["type"], "created": int(event["created"]),
         "now": now_us()},
    )  # fmt: skip
    if inserted is None:
        return "duplicate"
    if event["type"] not in PLAN_EVENTS | PAYMENT_EVENTS:
        return "ignored"
    account = _account_for(tx, event["data"]["object"])
    if account is None:
        return "ignored"
    if event["type"] in PLAN_EVENTS:
        return _apply_plan(tx, config, account, event)
    return _apply_payment(tx, account, event)


class Suspensions:
    """Which tenants' live keys are suspended (payment failing past the grace period), read at
    most every `ttl` seconds per tenant."""

    MAX_CACHED = 10_000

    def __init__(self, db: Database, grace_days: int, ttl: float = 2.0) -> None:
        self._db = db
        self._grace_us = grace_days * 86_400 * 1_000_000
        self._ttl = ttl
        self._cache: dict[str, tuple[float, bool]] = {}

    async def suspended(self, tenant_id: str) -> bool:
        hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        failed_at = await self._db.fetch_val(
            "SELECT payment_failed_at FROM billing_accounts WHERE tenant_id = :t",
            {"t": tenant_id},
        )
        verdict = failed_at is not None and now_us() - int(failed_at) > self._grace_us
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[tenant_id] = (time.monotonic() + self._ttl, verdict)
        return verdict

    def forget_all(self) -> None:
        """Drop cached verdicts (this process applied a payment event); others see it in ttl."""
        self._cache.clear()
