"""The `prices.refresh` job and the loop that schedules it (see `lanes/prices.py`).

Every process ticks every `TOOLCALLSTORE_PRICE_REFRESH_SECONDS`: it reloads the price table
(rows another process refreshed) and enqueues a refresh unless the table is younger than half
a period; the job's unique key keeps one queued at a time however many processes ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from toolcallstore.ids import now_us
from toolcallstore.lanes.prices import refresh_prices
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, Registry
from toolcallstore.services import Services

log = logging.getLogger("toolcallstore.prices")

PRICE_JOB_TYPE = "prices.refresh"
PRICE_JOB_ATTEMPTS = 3
# The default source is this server's own sandbox, which is not listening yet at start-up.
FIRST_REFRESH_DELAY_SECONDS = 5.0


def register_price_job(registry: Registry, svc: Services) -> None:
    async def refresh(ctx: JobContext) -> dict[str, int]:
        assert svc.http is not None, "the lifespan opens the http client before the workers"
        url = svc.settings.price_source()
        written = await refresh_prices(svc.db, svc.http, url, svc.lanes)
        loaded = await svc.prices.load(svc.db)
        return {"written": written, "loaded": loaded}

    registry.register(PRICE_JOB_TYPE, refresh, max_attempts=PRICE_JOB_ATTEMPTS)


async def schedule_price_refresh(svc: Services) -> None:
    """Reload the price table and enqueue a refresh when it is due, every period; a period of
    0 turns live prices off (quotes then use config/models.json only)."""
    period = svc.settings.price_refresh_seconds
    if period <= 0:
        await svc.stopping.wait()  # idle, not stopped: /readyz counts a stopped task as broken
        return
    job = NewJob(PRICE_JOB_TYPE, {}, unique_key=PRICE_JOB_TYPE, max_attempts=PRICE_JOB_ATTEMPTS)
    delay = min(FIRST_REFRESH_DELAY_SECONDS, period)
    while not await _stopped_within(svc, delay):
        delay = period
        try:
            await svc.prices.load(svc.db)
            freshest = svc.prices.freshest()
            # Half a period: a process's own refresh lands a little after its tick, and must
            # not make it skip its next one.
            if freshest is not None and now_us() - freshest < period * 500_000:
                continue
            if svc.settings.workers > 0:
                await svc.jobs.enqueue(job)
        except Exception:
            log.exception("could not reload prices or enqueue their refresh; will retry")


async def _stopped_within(svc: Services, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(svc.stopping.wait(), seconds)
    return svc.stopping.is_set()
