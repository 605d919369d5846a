"""`create_app(settings)`: routes, middleware and the lifespan that opens what they share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore import api
from toolcallstore.audit import AuditWriter
from toolcallstore.auth import AuthMiddleware, KeyCache
from toolcallstore.billing.accounts import Suspensions
from toolcallstore.billing.config import load_billing_config
from toolcallstore.billing.metering import register_meter_job, schedule_metering
from toolcallstore.billing.stripe_api import StripePayments
from toolcallstore.byok import Keyring, tenant_keys
from toolcallstore.context import context_of
from toolcallstore.controls.executions import SWEEP_JOB_TYPE
from toolcallstore.controls.pricing import load_pricing
from toolcallstore.controls.sweeper import register_control_jobs
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.domains.tools import DOMAINS_QUEUE, register_domain_tools
from toolcallstore.errors import APIError, MethodNotAllowed, NotFound
from toolcallstore.idempotency import Idempotency, prune_idempotency_keys
from toolcallstore.ids import now_us
from toolcallstore.lanes.catalog import load_catalog
from toolcallstore.lanes.price_jobs import register_price_job, schedule_price_refresh
from toolcallstore.lanes.prices import LivePrices
from toolcallstore.lanes.sender import Sender, upstream_client
from toolcallstore.logs import AccessLog
from toolcallstore.mail.dns import DomainsDns
from toolcallstore.mail.months import register_month_job, schedule_month_charges
from toolcallstore.mail.tools import MailTools, mail_tool_list
from toolcallstore.mcp_endpoint.server import McpEndpoint
from toolcallstore.metrics import Metrics
from toolcallstore.middleware import InputLimitsMiddleware, ObserveMiddleware, SandboxMount
from toolcallstore.queue.sandbox import register_sandbox_handlers
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import PoolConfig, Registry, WorkerPool
from toolcallstore.ratelimit import Limits, RateLimiter, RateLimitMiddleware
from toolcallstore.responses import error_response
from toolcallstore.sandbox import create_sandbox_app
from toolcallstore.services import Services
from toolcallstore.settings import Settings, parse_queue_limits
from toolcallstore.site.build import build_site, load_site
from toolcallstore.site.serve import PublicFiles
from toolcallstore.storage import load_signing_keys, open_storage
from toolcallstore.storage.assets import PRUNE_JOB_TYPE, Assets, register_asset_jobs
from toolcallstore.tools import ToolRegistry
from toolcallstore.tools.llm import register_llm_tool
from toolcallstore.tools.media import build_media
from toolcallstore.tools.sandbox import register_sandbox_tools
from toolcallstore.webhooks.delivery import register_delivery_job
from toolcallstore.webhooks.dispatch import QUEUE as WEBHOOK_QUEUE
from toolcallstore.webhooks.dispatch import run_dispatcher
from toolcallstore.webhooks.http import HttpPoster

log = logging.getLogger("toolcallstore.app")

STOP_GRACE_SECONDS = 10.0

# The services of this process's running apps, for `begin_drain` (server.py calls it when a
# SIGTERM or SIGINT starts the shutdown, before the open requests are waited for).
_RUNNING: list[Services] = []


def begin_drain() -> None:
    """Shutdown has begun: the listening socket is closing, so claim no more jobs and start
    the grace period now; running jobs and open streams share it (`stop_services`)."""
    for svc in _RUNNING:
        if svc.drain_deadline is None:
            svc.drain_deadline = time.monotonic() + svc.settings.shutdown_grace_seconds
            svc.jobs.drain()
            log.info("draining", extra={"fields": {"grace_s": svc.settings.shutdown_grace_seconds}})


def create_app(settings: Settings) -> Starlette:
    db = Database(settings.database_url, readers=settings.db_readers)
    metrics = Metrics()
    pricing = load_pricing(settings.models_file or None)
    tools = ToolRegistry(pricing)
    register_sandbox_tools(tools, db)
    lanes = load_catalog(pricing, os.environ)
    registry = Registry()
    register_sandbox_handlers(registry, db)
    register_control_jobs(registry, db, tools, job_hold_seconds=settings.job_hold_seconds)
    job_store = SqlJobStore(db)
    queue_limits = parse_queue_limits(settings.queue_limits)
    # Slow receivers (up to 15 s each) must not take every worker from tool and billing jobs.
    queue_limits.setdefault(WEBHOOK_QUEUE, max(1, settings.workers // 2))
    # dns.verify polls nameservers for minutes: it must not take every worker either.
    queue_limits.setdefault(DOMAINS_QUEUE, max(1, settings.workers // 2))
    pool_config = PoolConfig(
        concurrency=settings.workers,
        queue_limits=queue_limits,
        lease_s=settings.job_lease_seconds,
        poll_s=settings.job_poll_ms / 1000,
        grace_s=settings.shutdown_grace_seconds,
    )
    svc = Services(
        settings=settings,
        db=db,
        keys=KeyCache(db, settings.key_cache_seconds),
        audit=AuditWriter(
            db,
            flush_ms=settings.audit_flush_ms,
            batch_size=settings.audit_batch_size,
            access_log=AccessLog() if settings.access_log else None,
        ),
        idempotency=Idempotency(db, lock_seconds=settings.idempotency_lock_seconds),
        metrics=metrics,
        jobs=WorkerPool(job_store, registry, pool_config, metrics),
        job_store=job_store,
        tools=tools,
        lanes=lanes,
        prices=LivePrices(settings.price_max_age_seconds),
        assets=Assets(
            db,
            open_storage(settings),
            public_url=settings.public_url,
            url_ttl_s=settings.asset_url_ttl_seconds,
            retention_days=settings.asset_retention_days,
            max_bytes=settings.asset_max_bytes,
        ),
        rate_limiter=RateLimiter(limits_of(settings)),
    )
    register_asset_jobs(registry, svc.assets)
    register_price_job(registry, svc)
    if settings.master_key:  # parsed here so a bad key stops start-up (ConfigError)
        svc.keyring = Keyring.parse(settings.master_key, cache_seconds=settings.key_cache_seconds)

    def sender() -> Sender:
        assert svc.sender is not None, "the lifespan opens the sender"
        return svc.sender

    async def keys_of(tenant_id: str) -> dict[str, str]:
        return await tenant_keys(db, svc.keyring, tenant_id)

    poster = HttpPoster()
    register_delivery_job(registry, db, svc.keyring, poster)
    setup_billing(svc, registry)
    register_llm_tool(tools, lanes, sender, lambda: svc.health, svc.prices,
                      settings.sandbox_base(), keys_of)  # fmt: skip
    svc.media = build_media(svc, registry_tools=tools)
    register_domain_tools(tools, registry, svc)
    sandbox = create_sandbox_app()
    svc.domains.sandbox = sandbox.state.domains
    svc.mail = MailTools(svc, DomainsDns(svc))
    for tool in mail_tool_list(svc.mail):
        tools.register(tool)
    register_month_job(registry, db, pricing)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        close_listener: Callable[[], Awaitable[None]] | None = None
        await db.connect()
        try:
            await migrate(db)
            await svc.prices.load(db)
            svc.assets.use_keys(await load_signing_keys(db, settings, svc.keyring))
            svc.http = upstream_client()
            svc.sender = Sender(svc.http)
            if settings.sandbox_dns_port >= 0 and svc.domains.sandbox is not None:
                await svc.domains.sandbox.dns.start(settings.sandbox_dns_host,
                                                    settings.sandbox_dns_port)  # fmt: skip
            svc.tasks["audit"] = asyncio.create_task(svc.audit.run(), name="audit-writer")
            svc.tasks["maintenance"] = asyncio.create_task(maintain(svc), name="maintenance")
            svc.tasks["sweeper"] = asyncio.create_task(schedule_sweeps(svc), name="sweeper")
            svc.tasks["prices"] = asyncio.create_task(schedule_price_refresh(svc), name="prices")
            svc.tasks["webhooks"] = asyncio.create_task(dispatch_webhooks(svc), name="webhooks")
            svc.tasks["metering"] = asyncio.create_task(meter_usage(svc), name="metering")
            svc.tasks["assets"] = asyncio.create_task(schedule_asset_pruning(svc), name="assets")
            svc.tasks["mail"] = asyncio.create_task(charge_mailboxes(svc), name="mail")
            if db.is_postgres and svc.media is not None:
                await svc.media.watch.listen(db.url)
            if settings.workers > 0:
                if db.is_postgres:
                    close_listener = await svc.jobs.listen(db.url)
                svc.tasks.update(svc.jobs.start())
            _RUNNING.append(svc)
            async with mcp.running():
                yield
        finally:
            with contextlib.suppress(ValueError):
                _RUNNING.remove(svc)
            await stop_services(svc)
            await poster.aclose()
            await close_clients(svc, close_listener)

    app = Starlette(
        routes=api.routes(),
        middleware=[
            Middleware(ObserveMiddleware, metrics=svc.metrics, audit=svc.audit),
            Middleware(InputLimitsMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(AuthMiddleware, keys=svc.keys, suspended=suspended_of(svc)),
            Middleware(RateLimitMiddleware, limiter=svc.rate_limiter),
        ],
        exception_handlers={APIError: handle_api_error, HTTPException: handle_http_exception},
        lifespan=lifespan,
    )
    app.state.services = svc
    site = load_site()
    mcp = app.state.mcp = McpEndpoint(tools, site.name, frozenset({site.base_url}))
    app.add_middleware(PublicFiles, build=lambda: build_site(app, site))  # no auth
    app.add_middleware(SandboxMount, sandbox=sandbox)  # outermost: no auth, no audit
    return app


async def close_clients(
    svc: Services, close_listener: Callable[[], Awaitable[None]] | None
) -> None:
    """What the lifespan opened besides the services' tasks: clients, listeners, servers."""
    if svc.payments is not None:
        await svc.payments.aclose()
    if close_listener is not None:
        await close_listener()
    if svc.media is not None:
        await svc.media.watch.close()
    if svc.domains.sandbox is not None:
        await svc.domains.sandbox.dns.stop()


async def stop_services(svc: Services) -> None:
    # Ask background loops to finish what they are doing rather than cancelling them
    # mid-query: a cancellation landing inside a driver call can be lost on Python 3.11.
    svc.stopping.set()
    # Jobs get what is left of the grace period that began with the signal (begin_drain),
    # not a second one after the open requests were waited for.
    grace = svc.settings.shutdown_grace_seconds
    if svc.drain_deadline is not None:
        grace = max(0.0, svc.drain_deadline - time.monotonic())
    await svc.jobs.stop(grace)
    for name in ("workers", "heartbeat", "rescuer", "completer"):
        svc.tasks.pop(name, None)
    for name in ("maintenance", "sweeper", "prices", "webhooks", "metering", "assets", "mail"):
        task = svc.tasks.pop(name, None)
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(task, STOP_GRACE_SECONDS)
            except (TimeoutError, asyncio.CancelledError):
                log.error("%s task did not stop in time; abandoned", name)
    audit = svc.tasks.pop("audit", None)
    await svc.audit.close()
    if audit is not None:
        await audit
    if svc.http is not None:
        await svc.http.aclose()
        svc.http = None
        svc.sender = None
    await svc.db.disconnect()


async def maintain(svc: Services) -> None:
    """Periodic upkeep: prune idempotency keys past their 24 h window and finished jobs past
    their retention."""
    settings = svc.settings
    while not svc.stopping.is_set():
        cutoff = now_us() - settings.idempotency_ttl_seconds * 1_000_000
        try:
            pruned = await prune_idempotency_keys(svc.db, cutoff)
            retention_us = settings.job_retention_days * 86_400 * 1_000_000
            pruned_jobs = await svc.jobs.store.prune_finished(now_us() - retention_us)
            if pruned or pruned_jobs:
                counts = {"idempotency_keys": pruned, "jobs": pruned_jobs}
                log.info("pruned", extra={"fields": counts})
        except Exception:
            log.exception("pruning failed; will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.stopping.wait(), settings.prune_interval_seconds)


async def schedule_sweeps(svc: Services) -> None:
    """Enqueue the controls' sweep (expired holds and approvals) every HOLD_SWEEP_SECONDS; its
    unique key keeps one queued at a time however many processes schedule it."""
    sweep = NewJob(SWEEP_JOB_TYPE, {}, unique_key=SWEEP_JOB_TYPE, max_attempts=1)
    while not svc.stopping.is_set():
        if svc.settings.workers > 0:
            try:
                await svc.jobs.enqueue(sweep)
            except Exception:
                log.exception("could not enqueue the sweep; will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.stopping.wait(), svc.settings.hold_sweep_seconds)


async def schedule_asset_pruning(svc: Services) -> None:
    """Enqueue `assets.prune` every TOOLCALLSTORE_PRUNE_INTERVAL_SECONDS while a retention is
    set; its unique key keeps one queued at a time however many processes schedule it."""
    prune = NewJob(PRUNE_JOB_TYPE, {}, unique_key=PRUNE_JOB_TYPE, max_attempts=1)
    while not svc.stopping.is_set():
        if svc.settings.workers > 0 and svc.settings.asset_retention_days > 0:
            try:
                await svc.jobs.enqueue(prune)
            except Exception:
                log.exception("could not enqueue the asset pruning; will retry")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.stopping.wait(), svc.settings.prune_interval_seconds)


async def dispatch_webhooks(svc: Services) -> None:
    """Fan new events out to webhook deliveries (only where this process runs jobs)."""
    if svc.settings.workers <= 0:
        await svc.stopping.wait()  # idle, not stopped: /readyz counts a stopped task as broken
        return
    interval = svc.settings.webhook_dispatch_ms / 1000
    await run_dispatcher(svc.db, svc.stopping, interval, svc.jobs.wake)


def setup_billing(svc: Services, registry: Registry) -> None:
    """Stripe billing when TOOLCALLSTORE_STRIPE_API_KEY is set: the client, the metering job,
    and the suspension check of live keys."""
    settings = svc.settings
    if not settings.stripe_api_key and os.environ.get("STRIPE_API_KEY"):
        settings = settings.with_(stripe_api_key=os.environ["STRIPE_API_KEY"])
    if not settings.stripe_webhook_secret and os.environ.get("STRIPE_WEBHOOK_SECRET"):
        settings = settings.with_(stripe_webhook_secret=os.environ["STRIPE_WEBHOOK_SECRET"])
    svc.settings = settings
    svc.billing = load_billing_config(settings.billing_file)
    if not settings.stripe_api_key:
        return
    svc.payments = StripePayments(settings.stripe_api_key, settings.stripe_api_base, svc.billing)
    svc.suspensions = Suspensions(svc.db, svc.billing.payment_grace_days,
                                  ttl=settings.key_cache_seconds)  # fmt: skip
    register_meter_job(registry, svc.db, svc.payments)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        key_per_s=settings.rate_limit_key_per_s,
        key_burst=settings.rate_limit_key_burst,
        tenant_per_s=settings.rate_limit_tenant_per_s,
        tenant_burst=settings.rate_limit_tenant_burst,
        processes=settings.processes,
    )


def suspended_of(svc: Services) -> Callable[[str], Awaitable[bool]] | None:
    suspensions = svc.suspensions
    return None if suspensions is None else suspensions.suspended


async def meter_usage(svc: Services) -> None:
    """Send settled live usage to Stripe's meter every METER_INTERVAL_SECONDS."""
    if svc.payments is None or svc.settings.workers <= 0:
        await svc.stopping.wait()  # idle, not stopped: /readyz counts a stopped task as broken
        return
    await schedule_metering(svc.jobs.enqueue, svc.stopping, svc.settings.meter_interval_seconds)


async def charge_mailboxes(svc: Services) -> None:
    """Charge mailboxes' months (only where this process runs jobs)."""
    if svc.settings.workers <= 0:
        await svc.stopping.wait()  # idle, not stopped: /readyz counts a stopped task as broken
        return
    interval = svc.settings.mail_charge_interval_seconds
    await schedule_month_charges(svc.jobs.enqueue, svc.stopping, interval)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (a path may be split over routes). A path
    some route names literally (`/v1/domains/check`) is that route's, not also a parameter's
    (`/v1/domains/{name}`)."""
    path = request.url.path
    matching = [route for route in request.app.router.routes
                if isinstance(route, Route) and route.path_regex.match(path)]  # fmt: skip
    literal = [route for route in matching if route.path == path]
    methods: set[str] = set()
    for route in literal or matching:
        methods |= route.methods or set()
    return sorted(methods)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc, context_of(request).request_id)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: APIError
    if exc.status_code == 405:
        allowed = ", ".join(allowed_methods(request))
        error = MethodNotAllowed(
            f"Method {request.method} is not allowed here; use {allowed}.",
            headers={"Allow": allowed},
        )
    elif exc.status_code == 404:
        error = NotFound(f"No such route: {request.method} {request.url.path}.")
    else:
        error = APIError(exc.detail, status=exc.status_code, code="http_error")
    return error_response(error, context_of(request).request_id)
