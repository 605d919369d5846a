"""What a finished lane call costs: the winner's answer at its target's price (never above
what was held for it) and every attempt's provider cost, split by provider for the ledger."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from toolcallstore.controls.pricing import to_micros_up
from toolcallstore.lanes.attempt import Attempt
from toolcallstore.lanes.plan import CallPlan
from toolcallstore.lanes.router import LaneCall
from toolcallstore.money import micros_to_usd
from toolcallstore.tools.registry import Outcome


def settlement_of(
    call: LaneCall,
    plan: CallPlan,
    receipt_id: str | None,
    operator: bool = True,
    *,
    charge: bool = True,
    incomplete: bool = False,
    quote_id: str | None = None,
) -> tuple[Outcome, dict[str, Any], dict[str, Any]]:
    """The outcome to settle, the OpenAI `usage` and our `toolcall` object of a call; with
    `charge` False the customer pays nothing (the answer never reached them); `incomplete`
    marks an answer that ended early (a cut stream, a client that hung up)."""
    delivered = call.delivered
    by_provider: dict[str, Decimal] = defaultdict(Decimal)
    for attempt in call.attempts:
        by_provider[attempt.provider] += attempt.cost
    costs = {p: to_micros_up(c) for p, c in by_provider.items()}
    price = 0
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    if delivered:
        prompt = delivered[0].input_tokens or 0
        completion = sum(a.output_tokens or 0 for a in delivered)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}  # fmt: skip
        if charge:
            price = _price(call, plan, delivered)
    if incomplete:
        usage["incomplete"] = True
    winner = delivered[-1] if delivered else None
    estimated = any(a.estimated for a in delivered)
    outcome = Outcome(
        result={"object": "chat.completion", "target": winner.target if winner else None,
                "finish_reason": winner.finish if winner else None, "usage": usage},
        price_micros=price,
        provider_cost_micros=sum(costs.values()),
        provider=winner.provider if winner else plan.lane.id,
        usage={**usage, "estimated": estimated},
        attempts=[_with_payer(a, plan) for a in call.attempts],
        estimated=estimated,
        provider_costs=costs,
    )  # fmt: skip
    toolcall = {
        "receipt_id": receipt_id,
        "quote_id": quote_id,
        "cost_usd": micros_to_usd(price),
        "target": winner.target if winner else None,
        "lane": plan.lane.id,
        "usage_estimated": estimated,
        "attempts": [attempt_record(a, operator) for a in call.attempts],
    }
    return outcome, usage, toolcall


def _price(call: LaneCall, plan: CallPlan, delivered: list[Attempt]) -> int:
    """The answer's price (a resumed answer's parts together), plus the attempts that lost
    when the lane passes them on; never above the hold, as every attempt was admitted within
    it. A BYOK attempt is billed to the tenant by its provider: we charge only the fee."""
    cost = sum((a.cost for a in delivered), Decimal(0))
    if plan.lane.loser_costs == "pass":
        cost += sum((a.cost for a in call.attempts if not a.delivered), Decimal(0))
    if all(a.byok for a in delivered) and not cost:
        return to_micros_up(plan.catalog.fee)
    return min(plan.price_of(cost), plan.hold_micros)


def _with_payer(attempt: Attempt, plan: CallPlan) -> dict[str, Any]:
    """The receipt's record of an attempt; one that lost says who paid for it (reconciliation
    sums them)."""
    record = attempt.record()
    if not attempt.delivered:
        record["cost_paid_by"] = "customer" if plan.lane.loser_costs == "pass" else "margin"
    return record


def attempt_record(attempt: Attempt, operator: bool) -> dict[str, Any]:
    record = attempt.record()
    if not operator:
        record.pop("provider_cost_usd")
    return record
