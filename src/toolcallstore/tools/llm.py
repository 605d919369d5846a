"""`llm.chat`: a chat completion as a tool, so it can be quoted, approved and run through
`/v1/executions` like any other; `/v1/chat/completions` uses the same params, price and quotes.
Priced by tokens (lanes/plan.py) rather than by a fixed `tools` entry in models.json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from toolcallstore.controls.ledger import receipt_id_for
from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.lanes.base import StreamError
from toolcallstore.lanes.catalog import Catalog
from toolcallstore.lanes.health import ProviderHealth
from toolcallstore.lanes.openai_out import Assembly
from toolcallstore.lanes.plan import plan_call, plan_quoted_call
from toolcallstore.lanes.prices import LivePrices
from toolcallstore.lanes.request import CHAT_SCHEMA, TRANSPORT, budget_of, parse_chat_params
from toolcallstore.lanes.router import AllProvidersFailed, LaneCall, Refused
from toolcallstore.lanes.sender import Sender
from toolcallstore.lanes.settlement import settlement_of
from toolcallstore.tools.registry import CostlyFailure, Outcome, Tool, ToolCall, ToolRegistry

CHAT_TOOL = "llm.chat"
TIMEOUT_S = 600.0


def register_llm_tool(
    tools: ToolRegistry,
    catalog: Catalog,
    sender: Callable[[], Sender],
    health: Callable[[], ProviderHealth],
    prices: LivePrices,
    sandbox_url: str,
    tenant_keys: Callable[[str], Awaitable[dict[str, str]]],
) -> None:
    """Register `llm.chat`; `sender` gives the shared sender once the lifespan opened it,
    `tenant_keys` a tenant's own provider keys (BYOK) for its live calls."""

    def price(params: dict[str, Any], pricing: Pricing) -> Estimate:
        # Quoted over every target of the lane: a live call uses those with keys, a subset,
        # so its worst case is never above the quote's.
        plan = plan_call(catalog, params, livemode=False, budget_micros=budget_of(params),
                         prices=prices)  # fmt: skip
        return plan.estimate(plan.lane.id)

    async def execute(call: ToolCall) -> Outcome:
        byok = await tenant_keys(call.tenant_id) if call.livemode else {}
        plan = plan_quoted_call(catalog, call.params, held_micros=call.estimate.max_cost_micros,
                                livemode=call.livemode, prices=prices,
                                byok_providers=frozenset(byok))  # fmt: skip
        lane_call = LaneCall(sender(), plan, call.params, call.livemode, sandbox_url, health(),
                             byok, plain=True)  # fmt: skip
        assembly = Assembly(f"chatcmpl-{call.execution_id}", int(time.time()))
        cut: StreamError | None = None
        refused: Refused | None = None
        try:
            async with contextlib.aclosing(lane_call.events()) as events:
                async for event in events:
                    if isinstance(event, StreamError):
                        cut = event
                    else:
                        assembly.add(event)
        except AllProvidersFailed:
            cut = StreamError("all_providers_failed", "Every target failed before its first token.")
        except Refused as refusal:
            refused = refusal
        answered = cut is None and refused is None
        # The result is the execution's, which the tenant reads: no provider costs in it.
        receipt_id = receipt_id_for(call.execution_id)
        outcome, usage, toolcall = settlement_of(lane_call, plan, receipt_id, operator=False,
                                                 charge=answered)  # fmt: skip
        if refused is not None:
            raise CostlyFailure(f"The target refused the request: {refused.error.message}"[:500],
                                outcome, code="content_policy_violation", status=400,
                                attempts=toolcall["attempts"])  # fmt: skip
        if cut is not None or lane_call.winner is None:
            code = cut.code if cut else "all_providers_failed"
            kind = code if code == "all_providers_failed" else "stream_interrupted"
            raise CostlyFailure(f"The call failed ({code}); nothing was charged.", outcome,
                                code=kind, attempts=toolcall["attempts"])  # fmt: skip
        assembly.model = lane_call.winner.target
        result = assembly.completion(usage, toolcall)
        return Outcome(result, outcome.price_micros, outcome.provider_cost_micros,
                       outcome.provider, outcome.usage, outcome.attempts, outcome.estimated,
                       outcome.provider_costs)  # fmt: skip

    def describe() -> dict[str, Any]:
        return {
            "basis": "per_token",
            # Our prices only: the markup would give the provider's cost away.
            "description": "usage x the answering target's price per million tokens (GET"
            f" /v1/models) + a {catalog.fee} USD fee per call; at most max_cost_usd",
        }

    tools.register(
        Tool(
            name=CHAT_TOOL,
            description="A chat completion on a lane, an alias or one target (GET /v1/models).",
            scope="llm:chat",
            risk="low",
            billable=True,
            irreversible=False,
            mode="sync",
            parse_params=parse_chat_params,
            price=price,
            execute=execute,
            params_doc={
                "model": "a lane, alias or target",
                "messages": "OpenAI chat messages",
                "max_tokens": "optional; derived from max_cost_usd when absent",
                "max_cost_usd": "optional cap on the price",
                "tools": "optional OpenAI function tools",
            },
            params_schema=tool_params_schema(),
            timeout_s=TIMEOUT_S,
            describe_price=describe,
        )
    )


def tool_params_schema() -> dict[str, Any]:
    """The chat request less its transport fields (quote, approval, streaming: the flow's)."""
    properties = {name: schema for name, schema in CHAT_SCHEMA["properties"].items()
                  if name not in TRANSPORT}  # fmt: skip
    return {**CHAT_SCHEMA, "properties": properties}
