"""Sandbox tools: exercise quote -> approval -> hold -> run -> receipt with no provider.

`sandbox.echo` stands in for a cheap low-risk call (it borrows the `llm:chat` scope);
`sandbox.irreversible` for a domain purchase (`domains:register`, high risk, run as a job, its
effect recorded once per execution however often the job runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.db import Database
from toolcallstore.errors import ProviderError
from toolcallstore.ids import now_us
from toolcallstore.site.fields import body_schema
from toolcallstore.tools.registry import CostlyFailure, Outcome, Tool, ToolCall, ToolRegistry
from toolcallstore.validation import Field, invalid, validate

MAX_DELAY_MS = 3000

ECHO_PARAMS = {
    "message": Field(str, required=True, max_length=2000),
    "delay_ms": Field(int),
    "fail": Field(bool),
}
IRREVERSIBLE_PARAMS = {
    "action": Field(str, required=True, max_length=200),
    "delay_ms": Field(int),
    "fail_times": Field(int),
    "failures_billed": Field(bool),
}


def _checked(params: dict[str, Any], fields: dict[str, Field]) -> dict[str, Any]:
    clean = validate(params, {name: spec for name, spec in fields.items()})
    for name in ("delay_ms", "fail_times"):
        if name in clean and not 0 <= clean[name] <= MAX_DELAY_MS:
            raise invalid(f"params.{name}", f"'{name}' must be from 0 to {MAX_DELAY_MS}.")
    return clean


def _per_call(name: str) -> Callable[[dict[str, Any], Pricing], Estimate]:
    def price(params: dict[str, Any], pricing: Pricing) -> Estimate:
        return pricing.for_tool(name).quote()

    return price


def _settled(call: ToolCall, result: dict[str, Any]) -> Outcome:
    return Outcome(
        result=result,
        price_micros=call.estimate.price_micros,
        provider_cost_micros=call.estimate.provider_cost_micros,
        provider=call.estimate.provider,
        usage={"calls": 1},
        attempts=[{"provider": call.estimate.provider, "outcome": "succeeded"}],
    )


def _billed_failure(call: ToolCall) -> Outcome:
    return Outcome(
        result={},
        price_micros=0,
        provider_cost_micros=call.estimate.provider_cost_micros,
        provider=call.estimate.provider,
        usage={"calls": 1},
        attempts=[{"provider": call.estimate.provider, "outcome": "failed"}],
    )


def register_sandbox_tools(tools: ToolRegistry, db: Database) -> None:
    async def echo(call: ToolCall) -> Outcome:
        await asyncio.sleep(call.params.get("delay_ms", 0) / 1000)
        if call.params.get("fail"):
            raise ProviderError("sandbox.echo failed on request ('fail': true).")
        return _settled(call, {"message": call.params["message"]})

    async def irreversible(call: ToolCall) -> Outcome:
        await asyncio.sleep(call.params.get("delay_ms", 0) / 1000)
        async with db.transaction() as tx:
            runs = await tx.fetch_val(
                "INSERT INTO sandbox_effects (job_id, worker, runs, created_at)"
                " VALUES (:id, 'tool', 1, :now) ON CONFLICT (job_id)"
                " DO UPDATE SET runs = sandbox_effects.runs + 1 RETURNING runs",
                {"id": call.execution_id, "now": now_us()},
            )
        if runs <= call.params.get("fail_times", 0):
            message = f"sandbox.irreversible failing on purpose (run {runs})."
            if call.params.get("failures_billed"):  # as a provider that bills a failed call
                raise CostlyFailure(message, _billed_failure(call))
            raise ProviderError(message)
        return _settled(call, {"action": call.params["action"], "effect_id": call.execution_id})

    tools.register(
        Tool(
            name="sandbox.echo",
            description="Echoes 'message' back. Low risk, priced per call; try the flow with it.",
            scope="llm:chat",
            risk="low",
            billable=True,
            irreversible=False,
            mode="sync",
            parse_params=lambda p: _checked(p, ECHO_PARAMS),
            price=_per_call("sandbox.echo"),
            execute=echo,
            params_doc={"message": "string, required", "delay_ms": "0-3000", "fail": "boolean"},
            params_schema=body_schema(ECHO_PARAMS),
            timeout_s=5.0,
        )
    )
    tools.register(
        Tool(
            name="sandbox.irreversible",
            description="Pretends to buy something that cannot be undone. High risk: needs a"
            " human approval; runs as a job.",
            scope="domains:register",
            risk="high",
            billable=True,
            irreversible=True,
            mode="job",
            parse_params=lambda p: _checked(p, IRREVERSIBLE_PARAMS),
            price=_per_call("sandbox.irreversible"),
            execute=irreversible,
            params_doc={
                "action": "string, required",
                "delay_ms": "0-3000",
                "fail_times": "fail the first N runs",
                "failures_billed": "boolean: the provider bills each failed run",
            },  # fmt: skip
            params_schema=body_schema(IRREVERSIBLE_PARAMS),
            timeout_s=30.0,
        )
    )
