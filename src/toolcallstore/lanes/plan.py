"""What a chat call may cost before it starts (DESIGN §7): the targets it may use, the
`max_tokens` each gets, and the worst case held against the caps.

Worst case of an attempt = estimated prompt tokens x input price + max_tokens x output price,
marked up. No tokenizer can be downloaded here, so prompt tokens are estimated from bytes on the
high side (a token is rarely shorter than 3 bytes of JSON); settlement uses the provider's
reported usage and is clamped to the hold. When the caller sends no `max_tokens`, it is derived
from the budget. Targets whose worst case cannot fit the budget are left out; if none fits, the
call is refused with 422 `max_cost_too_low` naming the minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import orjson

from toolcallstore.controls.pricing import Estimate, to_micros_up
from toolcallstore.errors import (
    InvalidRequest,
    NotFound,
    StateConflict,
    Unavailable,
    Unprocessable,
)
from toolcallstore.ids import now_us
from toolcallstore.lanes.catalog import MILLION, Catalog, Lane, Model
from toolcallstore.lanes.prices import LivePrices
from toolcallstore.money import micros_to_usd

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
TOKENS_PER_CALL = 8


def estimate_prompt_tokens(params: dict[str, Any]) -> int:
    """An upper estimate of the prompt's tokens from its JSON size."""
    size = len(orjson.dumps(params["messages"]))
    if params.get("tools"):
        size += len(orjson.dumps(params["tools"]))
    messages = len(params["messages"])
    return math.ceil(size / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_CALL


def estimate_output_tokens(text_bytes: int) -> int:
    return math.ceil(text_bytes / BYTES_PER_TOKEN)


@dataclass(frozen=True)
class Candidate:
    model: Model  # with the prices this call uses (live ones when fresh)
    max_tokens: int
    worst_cost: Decimal  # the provider's price of the worst case, USD
    worst_price_micros: int  # the customer's
    price_source: str = "models.json"


@dataclass(frozen=True)
class CallPlan:
    lane: Lane
    prompt_tokens: int  # estimated
    candidates: list[Candidate]
    # What all attempts together may commit, in customer prices: the budget, or (without one)
    # every candidate's worst case; it is what the call holds against the caps.
    hold_micros: int
    catalog: Catalog

    def price_of(self, cost: Decimal) -> int:
        return self.catalog.price_of(cost)

    def estimate(self, name: str) -> Estimate:
        worst = max(self.candidates, key=lambda c: c.worst_price_micros)
        lines = [
            {
                "description": f"{c.model.id}: up to {self.prompt_tokens} prompt +"
                f" {c.max_tokens} completion tokens",
                "target": c.model.id,
                "max_tokens": c.max_tokens,
                # Our prices: quotes are the tenant's to read.
                "input_usd_per_mtok": self.catalog.list_price(c.model.input_per_mtok),
                "output_usd_per_mtok": self.catalog.list_price(c.model.output_per_mtok),
                "amount_usd": micros_to_usd(c.worst_price_micros),
                "price_source": c.price_source,
            }
            for c in self.candidates
        ]
        cost = to_micros_up(worst.worst_cost)
        hold = self.hold_micros
        return Estimate(hold, hold, cost, name, lines)


def plan_call(
    catalog: Catalog,
    params: dict[str, Any],
    *,
    livemode: bool,
    budget_micros: int | None,
    prices: LivePrices | None = None,
    byok_providers: frozenset[str] = frozenset(),
) -> CallPlan:
    """The candidates of a call under `budget_micros` (None: no budget but the model limits),
    priced from `prices` where a fresh live price exists, else from models.json."""
    resolved = catalog.resolve(params["model"])
    if resolved is None:
        raise NotFound(f"No lane, alias or target '{params['model'][:200]}'; GET /v1/models"
                       " lists them.", code="model_not_found", param="model")  # fmt: skip
    lane, models = resolved
    if livemode:
        models = [
            m for m in models
            if (m.api_key is not None or m.target.provider in byok_providers) and m.base_url_ready
        ]  # fmt: skip
        if not models:
            raise Unavailable(
                f"No target of '{params['model'][:200]}' has a provider key configured on this"
                " server; test-mode keys use the sandbox.",
                code="provider_not_configured",
            )
    prompt = estimate_prompt_tokens(params)
    wanted = params.get("max_tokens")
    candidates, cheapest = [], None
    now = now_us()
    for listed in models:
        model, source = priced(listed, prices, now)
        if params.get("tools") and not model.supports_tools:
            continue
        room = min(model.max_output_tokens, model.context_tokens - prompt)
        if room < 1 or (wanted is not None and wanted > room):
            continue
        tokens = wanted if wanted is not None else room
        # With the tenant's own key its provider bills the tenant: the call costs us nothing
        # and is charged the fee alone, so that is its worst case, whatever the tokens.
        own_key = livemode and listed.target.provider in byok_providers
        least = catalog.price_of(
            Decimal(0) if own_key else model.cost(prompt, min(tokens, wanted or 1))
        )
        cheapest = least if cheapest is None else min(cheapest, least)
        if budget_micros is not None:
            if own_key:
                tokens = tokens if least <= budget_micros else 0
            else:
                tokens = min(tokens, _affordable(catalog, model, prompt, budget_micros))
            if tokens < 1 or (wanted is not None and tokens < wanted):
                continue
        cost = Decimal(0) if own_key else model.cost(prompt, tokens)
        candidates.append(Candidate(model, tokens, cost, catalog.price_of(cost), source))
    if candidates:
        every = sum(c.worst_price_micros for c in candidates)
        hold = every if budget_micros is None else min(budget_micros, every)
        return CallPlan(lane, prompt, candidates, hold, catalog)
    if cheapest is None:
        raise InvalidRequest(
            f"No target of '{params['model'][:200]}' can take this prompt (about {prompt} tokens"
            + (f" plus max_tokens {wanted}" if wanted else "")
            + (" with tools" if params.get("tools") else "")
            + "): it exceeds their context or output limits.",
            code="context_length_exceeded",
            param="messages",
        )
    assert budget_micros is not None
    raise Unprocessable(
        f"max_cost_usd {micros_to_usd(budget_micros)} cannot pay for this call: its cheapest"
        f" target needs at least {micros_to_usd(cheapest)} USD"
        + (f" for max_tokens {wanted}." if wanted else " for one completion token."),
        code="max_cost_too_low",
        param="max_cost_usd",
        minimum_usd=micros_to_usd(cheapest),
    )


def plan_quoted_call(
    catalog: Catalog,
    params: dict[str, Any],
    *,
    held_micros: int,
    livemode: bool,
    prices: LivePrices | None,
    byok_providers: frozenset[str] = frozenset(),
) -> CallPlan:
    """The plan of a quoted call, within what its quote holds: prices may have moved since the
    quote, and a call may never charge more than its hold. If they rose beyond it: 409."""
    try:
        return plan_call(catalog, params, livemode=livemode, budget_micros=held_micros,
                         prices=prices, byok_providers=byok_providers)  # fmt: skip
    except Unprocessable as refused:
        if refused.code != "max_cost_too_low":
            raise
        raise StateConflict(
            f"Prices rose since this quote was made: its {micros_to_usd(held_micros)} USD no"
            f" longer pays for the call (it needs at least {refused.details['minimum_usd']}"
            " USD now). Create a new quote.",
            code="quote_stale",
            param="quote_id",
            minimum_usd=refused.details["minimum_usd"],
        ) from None


def priced(model: Model, prices: LivePrices | None, now: int) -> tuple[Model, str]:
    """The model at the price a call made now pays (a fresh live price, else models.json),
    and where that price comes from."""
    live = None if prices is None else prices.lookup(model.id, now)
    if live is None:
        return model, "models.json"
    fresh = replace(model, input_per_mtok=live.input_per_mtok,
                    output_per_mtok=live.output_per_mtok)  # fmt: skip
    return fresh, f"{live.source}@{live.fetched_at // 1_000_000}"


def _affordable(catalog: Catalog, model: Model, prompt: int, budget_micros: int) -> int:
    """The most completion tokens whose worst case the budget pays for (0 if none)."""
    # An exact price within the budget stays within it once rounded up to the micro, as the
    # budget is a whole number of micros.
    budget = Decimal(budget_micros) / MILLION
    spendable = (budget - catalog.fee) / (1 + catalog.markup) - prompt * model.input_per_mtok / (
        MILLION
    )
    if spendable <= 0:
        return 0
    if model.output_per_mtok == 0:
        return model.max_output_tokens
    tokens = int((spendable * MILLION / model.output_per_mtok).to_integral_value(ROUND_FLOOR))
    tokens = min(tokens, model.max_output_tokens)
    while tokens > 0 and catalog.price_of(model.cost(prompt, tokens)) > budget_micros:
        tokens -= 1  # not reached unless Decimal's precision rounded the division up
    return tokens
