"""Live prices end to end: the app's sandbox serves OpenRouter's price list over a real socket,
the refresh stores our openrouter targets' prices with when they were fetched, lookups honour
the max age, and a failing source leaves the table as it was."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from tests.chat.helpers import Live, live_server
from tests.conftest import free_port
from toolcallstore.ids import now_us
from toolcallstore.lanes.price_jobs import PRICE_JOB_TYPE
from toolcallstore.lanes.prices import LivePrice, LivePrices, PriceSourceError, refresh_prices
from toolcallstore.sandbox.openrouter import SNAPSHOT
from toolcallstore.services import Services
from toolcallstore.settings import Settings

GEMINI = "openrouter/google/gemini-3.8-flash"
OPENROUTER_TARGETS = {
    "openrouter/openai/gpt-6-luna": ("0.1", "0.5"),
    "openrouter/anthropic/claude-sonnet-5.5": ("2", "10"),
    GEMINI: ("0.7", "3.5"),  # config/models.json says 0.75 / 3.75
}
HOUR_US = 3600 * 1_000_000


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    # No scheduled refresh: each test decides when prices are fetched.
    async with live_server(settings.with_(price_refresh_seconds=0)) as running:
        yield running


def services_of(live: Live) -> Services:
    svc: Services = live.app.state.services
    return svc


def source_url(live: Live, fault: str | None = None) -> str:
    prefix = f"/fault/{fault}" if fault else ""
    return f"{live.base_url}/sandbox{prefix}/openrouter/api/v1/models"


async def refresh(live: Live, url: str | None = None) -> int:
    svc = services_of(live)
    assert svc.http is not None
    return await refresh_prices(svc.db, svc.http, url or source_url(live), svc.lanes)


async def table(live: Live) -> dict[str, dict[str, Any]]:
    rows = await services_of(live).db.fetch_all("SELECT * FROM provider_prices")
    return {row["target_id"]: dict(row) for row in rows}


async def test_the_sandbox_serves_the_stored_price_list_without_credentials(live: Live) -> None:
    r = await live.client.get("/sandbox/openrouter/api/v1/models")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == SNAPSHOT.read_bytes()
    failed = await live.client.get("/sandbox/fault/status=503/openrouter/api/v1/models")
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == 503


async def test_a_refresh_stores_each_openrouter_target_with_when_it_was_fetched(
    live: Live,
) -> None:
    before = now_us()
    assert await refresh(live) == len(OPENROUTER_TARGETS)
    rows = await table(live)
    assert set(rows) == set(OPENROUTER_TARGETS)
    for target_id, (input_price, output_price) in OPENROUTER_TARGETS.items():
        row = rows[target_id]
        assert row["source"] == "openrouter"
        assert (row["input_usd_per_mtok"], row["output_usd_per_mtok"]) == (
            input_price,
            output_price,
        )
        assert before <= row["fetched_at"] <= now_us()


async def test_a_refresh_replaces_older_prices(live: Live) -> None:
    db = services_of(live).db
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO provider_prices VALUES (:id, 'openrouter', '9', '99', :at)",
            {"id": GEMINI, "at": now_us() - HOUR_US},
        )
    await refresh(live)
    row = (await table(live))[GEMINI]
    assert (row["input_usd_per_mtok"], row["output_usd_per_mtok"]) == ("0.7", "3.5")
    assert row["fetched_at"] > now_us() - 60 * 1_000_000


async def test_lookups_use_a_price_only_within_its_max_age(live: Live) -> None:
    await refresh(live)
    prices = LivePrices(max_age_seconds=60)
    assert await prices.load(services_of(live).db) == len(OPENROUTER_TARGETS)
    now = now_us()
    found = prices.lookup(GEMINI, now)
    assert found is not None
    assert found == LivePrice(Decimal("0.7"), Decimal("3.5"), "openrouter", found.fetched_at)
    assert now - 5_000_000 <= found.fetched_at <= now
    assert prices.lookup(GEMINI, found.fetched_at + 60 * 1_000_000) == found
    assert prices.lookup(GEMINI, found.fetched_at + 60 * 1_000_000 + 1) is None
    assert prices.lookup("openai/gpt-6-luna", now) is None  # direct, not on the price list


async def test_a_price_fetched_long_ago_is_not_used(live: Live) -> None:
    db = services_of(live).db
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO provider_prices VALUES (:id, 'openrouter', '0.7', '3.5', :at)",
            {"id": GEMINI, "at": now_us() - 25 * HOUR_US},
        )
    prices = LivePrices(max_age_seconds=86_400)
    await prices.load(db)
    assert prices.lookup(GEMINI, now_us()) is None


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("status=500", "HTTP 500"),
        ("status=429,retry_after=1", "HTTP 429"),
        ("malformed_at=1", "JSON"),
    ],
)
async def test_a_failing_source_changes_nothing(live: Live, fault: str, says: str) -> None:
    await refresh(live)
    before = await table(live)
    with pytest.raises(PriceSourceError, match=says):
        await refresh(live, source_url(live, fault))
    assert await table(live) == before


async def test_an_unreachable_source_changes_nothing(live: Live) -> None:
    await refresh(live)
    before = await table(live)
    url = f"http://127.0.0.1:{free_port()}/api/v1/models"
    with pytest.raises(PriceSourceError, match="price list http://127.0.0.1"):
        await refresh(live, url)
    assert await table(live) == before


async def test_a_running_server_refreshes_prices_by_itself(settings: Settings) -> None:
    async with live_server(settings.with_(price_refresh_seconds=1)) as live:
        svc = services_of(live)
        deadline = time.monotonic() + 20
        while svc.prices.lookup(GEMINI, now_us()) is None:
            assert time.monotonic() < deadline, "no live price 20 s after start"
            await asyncio.sleep(0.1)
        assert set(await table(live)) == set(OPENROUTER_TARGETS)
        job = await svc.db.fetch_one(
            "SELECT state, result FROM jobs WHERE type = :type", {"type": PRICE_JOB_TYPE}
        )
        assert job is not None and job["state"] == "succeeded"


def test_the_default_source_is_the_sandbox_price_list(settings: Settings) -> None:
    local = settings.with_(host="127.0.0.1", port=8123)
    assert local.price_source() == "http://127.0.0.1:8123/sandbox/openrouter/api/v1/models"
    production = local.with_(price_source_url="https://openrouter.ai/api/v1/models")
    assert production.price_source() == "https://openrouter.ai/api/v1/models"
