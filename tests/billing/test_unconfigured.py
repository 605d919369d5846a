"""Billing on a server without Stripe: requests are still checked first, then refused with
the reason, and nothing else breaks."""

from __future__ import annotations

from tests.conftest import Api


async def test_checkout_checks_the_request_before_refusing_without_stripe(api: Api) -> None:
    unknown = await api.client.post("/v1/billing/checkout", json={"plan": "starter", "x": 1},
                                    headers=api.idem())  # fmt: skip
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_parameter"
    keyless = await api.client.post("/v1/billing/checkout", json={"plan": "starter"},
                                    headers=api.auth())  # fmt: skip
    assert keyless.json()["error"]["code"] == "idempotency_key_required"
    valid = await api.client.post("/v1/billing/checkout", json={"plan": "starter"},
                                  headers=api.idem())  # fmt: skip
    assert valid.status_code == 503
    assert valid.json()["error"]["code"] == "billing_unavailable"


async def test_stripe_webhook_and_account_without_stripe(api: Api) -> None:
    hook = await api.client.post("/v1/stripe/webhook", content=b'{"id": "evt_1"}',
                                 headers={"Stripe-Signature": "t=1,v1=00"})  # fmt: skip
    assert hook.status_code == 503
    assert hook.json()["error"]["code"] == "billing_unavailable"
    account = await api.client.get("/v1/billing/account", headers=api.auth())
    assert account.status_code == 200
    assert account.json()["plan"] is None and account.json()["live_keys_suspended"] is False
