"""Live LLM prices: OpenRouter's price list (`GET /api/v1/models`, USD per token as decimal
strings) read into USD per million tokens, stored in `provider_prices` by the `prices.refresh`
job (`price_jobs.py`), and held in memory by `LivePrices` for quotes.

A row is trusted only while it is younger than the max age; past it, or for a target the list
does not price, quotes use config/models.json. Rows are never deleted: a target the list stops
pricing simply ages out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

from toolcallstore.db import Database
from toolcallstore.errors import ToolCallError
from toolcallstore.ids import now_us
from toolcallstore.lanes.catalog import Catalog

log = logging.getLogger("toolcallstore.prices")

OPENROUTER = "openrouter"  # the provider name of config/models.json, and the rows' source

_UPSERT = """
INSERT INTO provider_prices
    (target_id, source, input_usd_per_mtok, output_usd_per_mtok, fetched_at)
VALUES (:target_id, :source, :input, :output, :fetched_at)
ON CONFLICT (target_id) DO UPDATE SET
    source = excluded.source,
    input_usd_per_mtok = excluded.input_usd_per_mtok,
    output_usd_per_mtok = excluded.output_usd_per_mtok,
    fetched_at = excluded.fetched_at
"""


class PriceSourceError(ToolCallError):
    """The price list could not be fetched or is not a price list; nothing was written."""


@dataclass(frozen=True)
class LivePrice:
    input_per_mtok: Decimal  # USD per million tokens
    output_per_mtok: Decimal
    source: str
    fetched_at: int  # epoch microseconds


def parse_openrouter(body: bytes) -> dict[str, tuple[Decimal, Decimal]]:
    """OpenRouter model id -> (input, output) USD per million tokens. Entries without a usable
    prompt and completion price (missing, negative, not a decimal string) are skipped and
    counted in the log; a body that is no price list raises PriceSourceError."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PriceSourceError(f"the price list is not JSON: {exc}") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise PriceSourceError('the price list has no "data" array')
    prices: dict[str, tuple[Decimal, Decimal]] = {}
    skipped: list[str] = []
    for entry in entries:
        found = _entry_price(entry)
        if found is None:
            model_id = entry.get("id") if isinstance(entry, dict) else None
            skipped.append(model_id if isinstance(model_id, str) else "?")
        else:
            prices[found[0]] = found[1]
    if skipped:
        fields = {"skipped": len(skipped), "ids": skipped[:20]}
        log.info("price list entries without usable prices skipped", extra={"fields": fields})
    return prices


def _entry_price(entry: Any) -> tuple[str, tuple[Decimal, Decimal]] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        return None
    prompt = per_mtok(pricing.get("prompt"))
    completion = per_mtok(pricing.get("completion"))
    if prompt is None or completion is None:
        return None
    return entry["id"], (prompt, completion)


def per_mtok(per_token: Any) -> Decimal | None:
    """USD per token as a decimal string -> USD per million tokens, exactly; None if unusable
    (a float is refused too: it may already have lost the price's digits)."""
    if not isinstance(per_token, str):
        return None
    try:
        value = Decimal(per_token)
        if not value.is_finite() or value.is_signed():  # OpenRouter prices "-1": varies by route
            return None
        # Moving the exponent keeps every digit, where a multiplication could round.
        scaled = value.scaleb(6)
        # Whole numbers come out as "3E+1"; written "30" they read like config/models.json.
        return scaled.quantize(Decimal(1)) if scaled == scaled.to_integral_value() else scaled
    except InvalidOperation:
        return None


async def refresh_prices(db: Database, http: httpx.AsyncClient, url: str, catalog: Catalog) -> int:
    """Fetch the price list at `url` and upsert the price of every openrouter target it lists,
    stamped now; returns the rows written. Raises PriceSourceError, writing nothing, when the
    fetch fails or the body is no price list."""
    listed = parse_openrouter(await _fetch(http, url))
    fetched_at = now_us()
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for model in catalog.models.values():
        if model.target.provider != OPENROUTER:
            continue
        price = listed.get(model.target.model)
        if price is None:
            missing.append(model.id)
            continue
        row = {"target_id": model.id, "source": OPENROUTER, "fetched_at": fetched_at}
        rows.append({**row, "input": str(price[0]), "output": str(price[1])})
    if missing:
        # Their last rows age out and quotes fall back to config/models.json.
        fields = {"url": url, "targets": missing}
        log.warning("the price list does not price these targets", extra={"fields": fields})
    async with db.transaction() as tx:
        for row in rows:
            await tx.execute(_UPSERT, row)
    return len(rows)


async def _fetch(http: httpx.AsyncClient, url: str) -> bytes:
    try:
        response = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise PriceSourceError(f"price list {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise PriceSourceError(f"price list {url} answered HTTP {response.status_code}")
    return response.content


class LivePrices:
    """`provider_prices` in memory, so a quote reads its price without a query. Each process
    reloads after its own refresh and on every scheduler tick, for rows other processes wrote."""

    def __init__(self, max_age_seconds: int) -> None:
        self.max_age_us = max_age_seconds * 1_000_000
        self._prices: dict[str, LivePrice] = {}

    async def load(self, db: Database) -> int:
        """Replace what is held with the table's rows; returns how many."""
        rows = await db.fetch_all("SELECT * FROM provider_prices")
        self._prices = {
            row["target_id"]: LivePrice(
                input_per_mtok=Decimal(row["input_usd_per_mtok"]),
                output_per_mtok=Decimal(row["output_usd_per_mtok"]),
                source=row["source"],
                fetched_at=int(row["fetched_at"]),
            )
            for row in rows
        }
        return len(self._prices)

    def lookup(self, target_id: str, now_us: int) -> LivePrice | None:
        """The target's live price if it was fetched within the max age, else None."""
        price = self._prices.get(target_id)
        if price is None or now_us - price.fetched_at > self.max_age_us:
            return None
        return price

    def freshest(self) -> int | None:
        """When the newest row was fetched (epoch µs); None for an empty table."""
        return max((p.fetched_at for p in self._prices.values()), default=None)
