"""What a registrar and a DNS host must do for us, whoever they are (OpenProvider, Porkbun).

Failures say what the provider did, because that decides what we may do next:
- `NothingDone`: the request was refused before anything happened (connection refused, 5xx
  before acceptance, maintenance, rate limit): retrying, or another registrar, is safe.
- `Refused`: the provider answered no (taken, invalid, not allowed): no retry, no failover.
- `Ambiguous`: the request was sent and no answer came (a timeout, a dropped connection):
  the provider may have acted. Ask it (`get_domain`) before anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from toolcallstore.domains.records import Record


class RegistrarError(Exception):
    def __init__(self, registrar: str, message: str, **details: Any) -> None:
        super().__init__(f"{registrar}: {message}")
        self.registrar = registrar
        self.message = message
        self.details = details


class NothingDone(RegistrarError):
    """Safe to retry or fail over: the provider did nothing."""


class Refused(RegistrarError):
    """The provider said no; `taken` when the domain belongs to someone else."""

    def __init__(self, registrar: str, message: str, *, taken: bool = False, **d: Any) -> None:
        super().__init__(registrar, message, **d)
        self.taken = taken


class Ambiguous(RegistrarError):
    """Sent, unanswered: the provider may have acted."""


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    premium: bool
    currency: str
    create_price: Decimal | None  # one year, the registrar's price to us
    renewal_price: Decimal | None
    reason: str = ""


@dataclass(frozen=True)
class HeldDomain:
    name: str
    registrar: str
    ref: str
    expires_at: str | None
    nameservers: list[str] = field(default_factory=list)
    cost_usd: Decimal | None = None  # what the registration cost us, when the registrar says


@dataclass(frozen=True)
class Contact:
    first_name: str
    last_name: str
    email: str
    phone: str  # +31.201234567 or +31 20 1234567
    street: str
    city: str
    zipcode: str
    country: str  # ISO 3166-1 alpha-2
    company: str = ""
    state: str = ""


class Registrar(Protocol):
    name: str

    async def check(self, names: list[str]) -> list[Availability]:
        """Availability and the registrar's prices (registration, renewal, premium)."""

    async def register(self, name: str, years: int, contact: Contact, nameservers: list[str],
                       idempotency_key: str, max_cost_usd: Decimal) -> HeldDomain:  # fmt: skip
        """Register `name` for at most `max_cost_usd` (NothingDone when it would cost more);
        raises NothingDone, Refused or Ambiguous."""

    async def get_domain(self, name: str) -> HeldDomain | None:
        """The domain if this account holds it, else None (the ambiguity check)."""

    async def list_domains(self) -> list[HeldDomain]:
        """Every domain this account holds."""


class Dns(Protocol):
    name: str

    async def read_zone(self, domain: str) -> list[Record]:
        """The live records (ours: relative names, unquoted TXT, ints)."""

    async def add(self, domain: str, record: Record) -> None: ...

    async def remove(self, domain: str, record: Record) -> None: ...

    async def replace(self, domain: str, old: Record, new: Record) -> None: ...

    async def delete_zone(self, domain: str) -> None: ...
