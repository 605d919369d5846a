"""Stripe billing end to end over loopback: the official `stripe` SDK against the sandbox's
Stripe fake, Checkout, Stripe's signed webhooks (bad signatures, duplicates, any order),
suspension of live keys, metering and the reconciliation against Stripe's meter."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.billing.helpers import STRIPE_KEY, WEBHOOK_SECRET, Served, emit, insert_receipts
from toolcallstore.app import create_app
from toolcallstore.billing.metering import send_metered_usage
from toolcallstore.bootstrap import bootstrap
from toolcallstore.controls.spend import period_of
from toolcallstore.db import Database
from toolcallstore.db.keys import insert_key
from toolcallstore.ids import now_us
from toolcallstore.sandbox import create_sandbox_app
from toolcallstore.sandbox.stripe import sign_payload
from toolcallstore.settings import Settings


@dataclass
class Billing:
    client: httpx.AsyncClient
    admin: str
    live: str
    tenant_id: str
    stripe: str  # the fake's base URL
    webhook: str  # our webhook's URL
    db: Database
    services: Any

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.admin}"}

    def idem(self, secret: str | None = None) -> dict[str, str]:
        return {**self.auth(secret), "Idempotency-Key": secrets.token_hex(8)}


@pytest.fixture
async def billing(settings: Settings) -> AsyncIterator[Billing]:
    sandbox = await Served(create_sandbox_app()).start()
    stripe_base = f"{sandbox.url}/stripe"
    app = create_app(settings.with_(
        stripe_api_key=STRIPE_KEY, stripe_api_base=stripe_base,
        stripe_webhook_secret=WEBHOOK_SECRET, meter_interval_seconds=1, job_poll_ms=50,
    ))  # fmt: skip
    served = await Served(app).start()
    svc = app.state.services
    created = await bootstrap(svc.db, settings.resolved_admin_key_file())
    assert created is not None
    tenant_id, admin = created
    async with svc.db.transaction() as tx:
        _, live = await insert_key(tx, tenant_id=tenant_id, project_id=None, name="live",
                                   mode="live", scopes=("billing:manage", "llm:chat",
                                                        "quotes:create"),
                                   auto_quote_max_micros=1_000_000)  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            yield Billing(client, admin, live, tenant_id, stripe_base,
                          f"{served.url}/v1/stripe/webhook", svc.db, svc)  # fmt: skip
    finally:
        await served.stop()
        await sandbox.stop()


async def checkout(b: Billing, plan: str = "starter") -> dict[str, Any]:
    response = await b.client.post("/v1/billing/checkout", json={"plan": plan}, headers=b.idem())
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def completed(b: Billing, session_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{b.stripe}/_checkout/{session_id}/complete",
                                     headers={"Authorization": f"Bearer {STRIPE_KEY}"})  # fmt: skip
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


async def account(b: Billing) -> dict[str, Any]:
    response = await b.client.get("/v1/billing/account", headers=b.auth())
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def tenant_cap(b: Billing) -> int | None:
    cap = await b.db.fetch_val("SELECT monthly_cap_micros FROM tenants WHERE id = :t",
                               {"t": b.tenant_id})  # fmt: skip
    return None if cap is None else int(cap)


async def test_a_signed_checkout_completed_activates_the_plan(billing: Billing) -> None:
    session = await checkout(billing)
    assert session["url"].startswith(billing.stripe) and session["id"].startswith("cs_test")
    assert session["customer"].startswith("cus_")
    again = await checkout(billing)  # the same customer, not a second one
    assert again["customer"] == session["customer"]
    assert (await account(billing))["plan"] is None
    done = await completed(billing, session["id"])
    answer = await emit(billing.stripe, billing.webhook, "checkout.session.completed",
                        done["session"])  # fmt: skip
    assert answer["status"] == 200
    shown = await account(billing)
    assert shown["plan"] == "starter" and shown["subscription"] == done["subscription"]["id"]
    assert await tenant_cap(billing) == 100_000_000  # the starter plan's $100.00


async def test_a_bad_signature_is_400_and_changes_nothing(billing: Billing) -> None:
    session = await checkout(billing)
    done = await completed(billing, session["id"])
    event = {"id": "evt_forged", "object": "event", "type": "checkout.session.completed",
             "created": int(time.time()), "data": {"object": done["session"]}}  # fmt: skip
    payload = orjson.dumps(event)
    forged = sign_payload(payload, "whsec_not_ours", int(time.time()))
    for signature in (forged, "", "t=1,v1=00"):
        response = await billing.client.post(
            "/v1/stripe/webhook", content=payload, headers={"Stripe-Signature": signature}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    assert (await account(billing))["plan"] is None
    assert await billing.db.fetch_val("SELECT count(*) FROM stripe_events") == 0
    good = sign_payload(payload, WEBHOOK_SECRET, int(time.time()))
    accepted = await billing.client.post(
        "/v1/stripe/webhook", content=payload, headers={"Stripe-Signature": good}
    )
    assert accepted.status_code == 200  # the same bytes, rightly signed


async def test_the_same_event_twice_changes_nothing_twice(billing: Billing) -> None:
    session = await checkout(billing)
    done = await completed(billing, session["id"])
    first = await emit(billing.stripe, billing.webhook, "checkout.session.completed",
                       done["session"], id="evt_once")  # fmt: skip
    assert first["status"] == 200
    # The tenant lowers its cap after subscribing; a redelivered event must not reset it.
    response = await billing.client.post(
        "/v1/spend_caps", json={"monthly_cap_usd": "5.00"}, headers=billing.auth()
    )
    assert response.status_code == 200, response.text
    second = await emit(billing.stripe, billing.webhook, "checkout.session.completed",
                        done["session"], id="evt_once")  # fmt: skip
    assert second["status"] == 200
    assert await tenant_cap(billing) == 5_000_000
    assert await billing.db.fetch_val("SELECT count(*) FROM stripe_events") == 1


async def test_events_in_any_order_end_in_the_newest_state(billing: Billing) -> None:
    session = await checkout(billing, "pro")
    done = await completed(billing, session["id"])
    subscription = done["subscription"]
    now = int(time.time())
    deleted = {**subscription, "status": "canceled"}
    await emit(billing.stripe, billing.webhook, "customer.subscription.deleted", deleted,
               created=now + 20)  # fmt: skip
    await emit(billing.stripe, billing.webhook, "customer.subscription.updated", subscription,
               created=now + 10)  # fmt: skip
    await emit(billing.stripe, billing.webhook, "checkout.session.completed", done["session"],
               created=now)  # fmt: skip
    shown = await account(billing)
    assert shown["plan"] is None and shown["subscription_status"] == "canceled"


async def test_live_keys_are_suspended_while_payment_fails_past_the_grace(
    billing: Billing,
) -> None:
    session = await checkout(billing)
    done = await completed(billing, session["id"])
    await emit(billing.stripe, billing.webhook, "checkout.session.completed", done["session"])
    invoice = {"id": "in_1", "object": "invoice", "customer": session["customer"],
               "subscription": done["subscription"]["id"]}  # fmt: skip
    now = int(time.time())
    await emit(billing.stripe, billing.webhook, "invoice.payment_failed", invoice, created=now)
    tools = await billing.client.get("/v1/tools", headers=billing.auth(billing.live))
    assert tools.status_code == 200  # failing, but within the 7-day grace
    # An older failure arriving late is stale: it does not move the failure back 8 days.
    await emit(billing.stripe, billing.webhook, "invoice.payment_failed", invoice,
               created=now - 8 * 86_400)  # fmt: skip
    assert await live_status(billing) == 200
    eight_days_ago = now_us() - 8 * 86_400 * 10**6
    await billing.db.run_sync(lambda tx: tx.execute(
        "UPDATE billing_accounts SET payment_failed_at = :t", {"t": eight_days_ago}
    ))  # the grace period passes  # fmt: skip
    billing.services.suspensions.forget_all()  # other processes see it within the key ttl
    refused = await billing.client.get("/v1/tools", headers=billing.auth(billing.live))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "account_suspended"
    assert (await billing.client.get("/v1/tools", headers=billing.auth())).status_code == 200
    shown = await billing.client.get("/v1/billing/account", headers=billing.auth(billing.live))
    assert shown.json()["live_keys_suspended"] is True  # billing stays reachable to fix it
    await emit(billing.stripe, billing.webhook, "invoice.paid", invoice, created=now + 5)
    assert await live_status(billing) == 200


async def live_status(b: Billing) -> int:
    return (await b.client.get("/v1/tools", headers=b.auth(b.live))).status_code


async def test_usage_is_metered_once_and_reconciles_with_stripe(billing: Billing) -> None:
    session = await checkout(billing)
    receipts = []
    for i in range(3):
        response = await billing.client.post(
            "/v1/executions", json={"tool": "sandbox.echo", "params": {"message": f"m{i}"}},
            headers=billing.idem(billing.live),
        )  # fmt: skip
        assert response.status_code == 200, response.text
        receipts.append(response.json()["receipt_id"])
    deadline = time.monotonic() + 20
    while await billing.db.fetch_val("SELECT count(*) FROM meter_reports") < 3:
        assert time.monotonic() < deadline, "metering did not run"
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient() as client:
        listed = await client.get(f"{billing.stripe}/_meter_events",
                                  headers={"Authorization": f"Bearer {STRIPE_KEY}"})  # fmt: skip
    sent = listed.json()
    assert sorted(e["identifier"] for e in sent["data"]) == sorted(receipts)
    assert {e["payload"]["stripe_customer_id"] for e in sent["data"]} == {session["customer"]}
    period = period_of(now_us())
    report = await reconciliation(billing, period)
    stripe_side = report["stripe_metered_usage"]
    assert stripe_side["differences"] == [] and stripe_side["balanced"] is True
    (tenant,) = stripe_side["tenants"]
    assert tenant["ledger_charged_usd"] == tenant["stripe_counted_usd"] == "0.004200"

    async with httpx.AsyncClient() as client:  # someone deletes one meter event at Stripe
        cancelled = await client.post(
            f"{billing.stripe}/v1/billing/meter_event_adjustments",
            data={"event_name": "toolcallstore_usage_micros", "type": "cancel",
                  "cancel[identifier]": receipts[1]},
            headers={"Authorization": f"Bearer {STRIPE_KEY}"},
        )  # fmt: skip
    assert cancelled.status_code == 200, cancelled.text
    report = await reconciliation(billing, period)
    (difference,) = report["stripe_metered_usage"]["differences"]
    assert difference["kind"] == "stripe_differs_from_metered"
    assert difference["difference_usd"] == "-0.001400"


async def reconciliation(b: Billing, period: str) -> dict[str, Any]:
    response = await b.client.get(
        f"/v1/admin/reconciliation?period={period}&livemode=true", headers=b.auth()
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_checkout_refuses_unknown_plans_and_reports_stripe_errors(billing: Billing) -> None:
    response = await billing.client.post(
        "/v1/billing/checkout", json={"plan": "gold"}, headers=billing.idem()
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "plan"
    reader = await billing.client.post(
        "/v1/billing/checkout", json={"plan": "starter"}, headers=billing.idem(billing.live)
    )
    assert reader.status_code == 200  # the live key holds billing:manage


async def test_receipts_older_than_stripe_accepts_are_listed_not_sent(billing: Billing) -> None:
    await checkout(billing)
    forty_days_ago = now_us() - 40 * 86_400 * 1_000_000
    (old,) = await billing.db.run_sync(insert_receipts, billing.tenant_id, 1, forty_days_ago)
    result = await send_metered_usage(billing.db, billing.services.payments)
    assert result == {"metered": 0}
    report = await reconciliation(billing, period_of(forty_days_ago))
    (unmetered,) = report["stripe_metered_usage"]["unmetered"]
    assert unmetered["reason"] == "older_than_stripe_accepts" and unmetered["receipts"] == 1
    (difference,) = report["stripe_metered_usage"]["differences"]
    assert difference["kind"] == "metered_differs_from_ledger"
    assert difference["difference_usd"] == "-0.001000"


async def test_a_checkout_opened_elsewhere_adopts_its_customer(billing: Billing) -> None:
    session = {"id": "cs_test_dashboard", "object": "checkout.session",
               "client_reference_id": billing.tenant_id, "customer": "cus_dashboard",
               "subscription": "sub_dashboard", "metadata": {"plan": "pro"}}  # fmt: skip
    answer = await emit(billing.stripe, billing.webhook, "checkout.session.completed", session)
    assert answer["status"] == 200
    shown = await account(billing)
    assert (shown["customer"], shown["plan"]) == ("cus_dashboard", "pro")
    assert await tenant_cap(billing) == 2_000_000_000
