"""What billing needs of a payments provider (Stripe is the one implementation)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class MeterEvent:
    identifier: str  # the receipt id: a resend can never bill twice
    customer_id: str
    value_micros: int
    timestamp: int  # unix seconds


class PaymentsProvider(Protocol):
    async def create_customer(self, tenant_id: str) -> str:
        """A customer for the tenant (idempotent per tenant); returns its id."""

    async def create_checkout(
        self, customer_id: str, tenant_id: str, plan: str, idempotency_key: str
    ) -> tuple[str, str]:
        """A subscription Checkout Session for the plan's prices; returns (id, url)."""

    async def send_meter_event(self, event: MeterEvent) -> None:
        """Record usage on the meter; raises ProviderError when it was not accepted."""

    async def metered_total(self, customer_id: str, start: int, end: int) -> Decimal:
        """The meter's aggregated value for a customer over [start, end) (unix seconds)."""

    async def aclose(self) -> None:
        """Close the connections."""
