"""The Stripe fake as the official SDK sees it: objects, error classes and codes, idempotent
replays and meter-event deduplication, the way Stripe answers them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import stripe

from tests.billing.helpers import STRIPE_KEY, Served
from toolcallstore.billing.stripe_api import _HTTPXClient
from toolcallstore.sandbox import create_sandbox_app


@pytest.fixture
async def client() -> AsyncIterator[stripe.StripeClient]:
    sandbox = await Served(create_sandbox_app()).start()
    http = _HTTPXClient(timeout=10)
    try:
        yield stripe.StripeClient(STRIPE_KEY, base_addresses={"api": f"{sandbox.url}/stripe"},
                                  http_client=http)  # fmt: skip
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]
        await sandbox.stop()


async def test_errors_arrive_as_the_sdk_classes_with_stripe_codes(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.customers.retrieve_async("cus_nope")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    customer = await client.v1.customers.create_async(params={"name": "t"})
    with pytest.raises(stripe.InvalidRequestError) as price:
        await client.v1.checkout.sessions.create_async(params={
            "mode": "subscription", "customer": customer.id, "success_url": "https://x/ok",
            "line_items": [{"price": "price_nope", "quantity": 1}]})  # fmt: skip
    assert price.value.code == "resource_missing" and price.value.param == "line_items[0][price]"
    with pytest.raises(stripe.InvalidRequestError) as quantity:
        await client.v1.checkout.sessions.create_async(params={
            "mode": "subscription", "customer": customer.id, "success_url": "https://x/ok",
            "line_items": [{"price": "price_usage_micros", "quantity": 1}]})  # fmt: skip
    assert quantity.value.param == "line_items[0][quantity]"
    http = _HTTPXClient(timeout=10)
    bases = client._requestor.base_addresses
    unauthenticated = stripe.StripeClient("rk_wrong", base_addresses=bases, http_client=http)
    try:
        with pytest.raises(stripe.AuthenticationError):
            await unauthenticated.v1.customers.create_async(params={})
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


async def test_a_meter_event_identifier_counts_once(client: stripe.StripeClient) -> None:
    customer = await client.v1.customers.create_async(params={"name": "t"})
    params = {"event_name": "toolcallstore_usage_micros", "identifier": "rcpt_1",
              "payload": {"stripe_customer_id": customer.id, "value": "250"}}  # fmt: skip
    first = await client.v1.billing.meter_events.create_async(params=params)  # type: ignore[arg-type]
    again = await client.v1.billing.meter_events.create_async(params=params)  # type: ignore[arg-type]
    assert first.identifier == again.identifier == "rcpt_1"
    summaries = await client.v1.billing.meters.event_summaries.list_async(
        "mtr_toolcallstore_usage",
        params={"customer": customer.id, "start_time": first.timestamp - 60,
                "end_time": first.timestamp + 60},
    )  # fmt: skip
    assert [s.aggregated_value for s in summaries.data] == [250]


async def test_an_idempotency_key_replays_the_first_answer(client: stripe.StripeClient) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "same"}
    first = await client.v1.customers.create_async(params={"name": "a"}, options=options)
    again = await client.v1.customers.create_async(params={"name": "a"}, options=options)
    assert first.id == again.id
