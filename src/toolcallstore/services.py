"""What the app opens in its lifespan and hands to every endpoint, reached via `services()`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request

from toolcallstore.audit import AuditWriter
from toolcallstore.auth import KeyCache
from toolcallstore.billing.accounts import Suspensions
from toolcallstore.billing.base import PaymentsProvider
from toolcallstore.billing.config import BillingConfig
from toolcallstore.byok import Keyring
from toolcallstore.db import Database
from toolcallstore.domains.context import DomainsContext
from toolcallstore.idempotency import Idempotency
from toolcallstore.lanes.catalog import Catalog
from toolcallstore.lanes.health import ProviderHealth
from toolcallstore.lanes.prices import LivePrices
from toolcallstore.lanes.sender import Sender
from toolcallstore.media.service import MediaService
from toolcallstore.metrics import Metrics
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.worker import WorkerPool
from toolcallstore.ratelimit import RateLimiter
from toolcallstore.settings import Settings
from toolcallstore.storage.assets import Assets
from toolcallstore.tools import ToolRegistry

if TYPE_CHECKING:  # mail's tools take the services: imported for the annotation only
    from toolcallstore.mail.tools import MailTools


@dataclass
class Services:
    settings: Settings
    db: Database
    keys: KeyCache
    audit: AuditWriter
    idempotency: Idempotency
    metrics: Metrics
    jobs: WorkerPool
    job_store: SqlJobStore
    tools: ToolRegistry
    lanes: Catalog
    prices: LivePrices  # live LLM prices; quotes fall back to `lanes` past their max age
    assets: Assets  # stored media: objects, rows, signed URLs (signing keys loaded at start)
    rate_limiter: RateLimiter  # per-key and per-tenant token buckets of this process
    http: httpx.AsyncClient | None = None
    sender: Sender | None = None
    keyring: Keyring | None = None  # None: no TOOLCALLSTORE_MASTER_KEY, BYOK is off
    health: ProviderHealth = field(default_factory=ProviderHealth)
    billing: BillingConfig | None = None
    payments: PaymentsProvider | None = None  # None: no TOOLCALLSTORE_STRIPE_API_KEY
    suspensions: Suspensions | None = None
    # OpenProvider's tokens and this process's sandbox DNS server (domains/service.py).
    domains: DomainsContext = field(default_factory=DomainsContext)
    mail: MailTools | None = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    media: MediaService | None = None  # media generation (issue 14)
    # When the shutdown's grace period ends (time.monotonic()); None until a signal starts it.
    drain_deadline: float | None = None


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
