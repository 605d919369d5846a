"""Stripe through the official SDK (async, on httpx), at TOOLCALLSTORE_STRIPE_API_BASE when
set (the sandbox fake in tests). Stripe's errors become `ProviderError` here, at the boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import stripe

from toolcallstore.billing.base import MeterEvent
from toolcallstore.billing.config import BillingConfig
from toolcallstore.errors import NotFound, ProviderError

NETWORK_RETRIES = 2
TIMEOUT_S = 30.0


class _HTTPXClient(stripe.HTTPXClient):
    """The SDK's httpx client, sending its form body as `content`: httpx deprecates raw bytes
    passed as `data`, which the SDK does (stripe-python, httpx >= 0.28)."""

    def _get_request_args_kwargs(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers: Any, post_data: Any
    ):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        body = kwargs.pop("data", None)
        if body:
            kwargs["content"] = body
        return args, kwargs


@contextlib.contextmanager
def stripe_errors() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as exc:
        raise ProviderError(
            f"Stripe refused the request: {exc.user_message or exc}",
            provider="stripe",
            provider_status=exc.http_status,
            provider_code=exc.code,
        ) from None


class StripePayments:
    def __init__(self, api_key: str, api_base: str, config: BillingConfig) -> None:
        self._http = _HTTPXClient(timeout=TIMEOUT_S)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base.rstrip("/")} if api_base else None,
            http_client=self._http,
            max_network_retries=NETWORK_RETRIES,
        )
        self._config = config

    async def create_customer(self, tenant_id: str) -> str:
        with stripe_errors():
            customer = await self._client.v1.customers.create_async(
                params={"name": tenant_id, "metadata": {"tenant_id": tenant_id}},
                options={"idempotency_key": f"toolcallstore-customer-{tenant_id}"},
            )
        return customer.id

    async def create_checkout(
        self, customer_id: str, tenant_id: str, plan: str, idempotency_key: str
    ) -> tuple[str, str]:
        chosen = self._config.plans.get(plan)
        if chosen is None:
            raise NotFound(f"No such plan: {plan}.", param="plan")
        metadata = {"tenant_id": tenant_id, "plan": plan}
        with stripe_errors():
            session = await self._client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": tenant_id,
                    # The metered price takes no quantity: usage comes from the meter.
                    "line_items": [
                        {"price": chosen.flat_price, "quantity": 1},
                        {"price": chosen.metered_price},
                    ],  # fmt: skip
                    "success_url": self._config.success_url,
                    "cancel_url": self._config.cancel_url,
                    "metadata": metadata,
                    "subscription_data": {"metadata": metadata},
                },
                options={"idempotency_key": idempotency_key},
            )
        return session.id, session.url or ""

    async def send_meter_event(self, event: MeterEvent) -> None:
        with stripe_errors():
            await self._client.v1.billing.meter_events.create_async(
                params={
                    "event_name": self._config.meter_event_name,
                    "identifier": event.identifier,
                    "timestamp": event.timestamp,
                    "payload": {
                        "stripe_customer_id": event.customer_id,
                        "value": str(event.value_micros),
                    },  # fmt: skip
                },
                options={"idempotency_key": f"toolcallstore-meter-{event.identifier}"},
            )

    async def metered_total(self, customer_id: str, start: int, end: int) -> Decimal:
        with stripe_errors():
            summaries = await self._client.v1.billing.meters.event_summaries.list_async(
                self._config.meter_id,
                params={"customer": customer_id, "start_time": start, "end_time": end},
            )
        return sum((Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0))

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]
