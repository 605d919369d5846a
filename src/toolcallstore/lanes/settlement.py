"""What a finished lane call costs: the winner's answer at its target's price (never above
what was held for it) and every attempt's provider cost, split by provider for the ledger."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from toolcallstore.lanes.catalog import Catalog
from toolcallstore.lanes.plan import CallPlan, customer_price
from toolcallstore.lanes.router import Attempt, LaneCall
from toolcallstore.money import micros_to_usd
from toolcallstore.pricing import to_micros_up
from toolcallstore.tools.registry import Outcome


def settlement_of(
    call: LaneCall,
    plan: CallPlan,
    catalog: Catalog,
    receipt_id: str | None,
    operator: bool = True,
    *,
    charge: bool = True,
    incomplete: bool = False,
) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """The outcome to settle, the OpenAI `usage` and our `toolcall` object of a call; with
    `charge` False the customer pays nothing (the answer never reached them); `incomplete`
    marks an answer that ended early (a cut stream, a client that hung up)."""
    winner = call.winner
    by_provider: dict[str, Decimal] = defaultdict(Decimal)
    for attempt in call.attempts:
        by_provider[attempt.provider] += attempt.cost
    costs = {p: to_micros_up(c) for p, c in by_provider.items()}
    price = 0
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if winner is not None:
        prompt, completion = winner.input_tokens or 0, winner.output_tokens or 0
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}  # fmt: skip
        if charge:
            price = min(customer_price(catalog, winner.cost), winner.worst_price_micros)
    if incomplete:
        usage["incomplete"] = True
    estimated = winner is not None and winner.estimated
    outcome = Outcome(
        result={"object": "chat.completion", "target": winner.target if winner else None,
                "finish_reason": winner.finish if winner else None, "usage": usage},
        price_micros=price,
        provider_cost_micros=sum(costs.values()),
        provider=winner.provider if winner else plan.lane.id,
        usage={**usage, "estimated": estimated},
        attempts=[a.record() for a in call.attempts],
        estimated=estimated,
        provider_costs=costs,
    )  # fmt: skip
    toolcall = {
        "receipt_id": receipt_id,
        "cost_usd": micros_to_usd(price),
        "target": winner.target if winner else None,
        "lane": plan.lane.id,
        "usage_estimated": estimated,
        "attempts": [attempt_record(a, operator) for a in call.attempts],
    }
    return outcome, usage, toolcall


def attempt_record(attempt: Attempt, operator: bool) -> dict[str, Any]:
    record = attempt.record()
    if not operator:
        record.pop("provider_cost_usd")
    return record
