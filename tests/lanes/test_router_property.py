"""Property: over random lanes, fault sequences and budgets, the provider costs of all attempts
never exceed the budget, and exactly one attempt's output reaches the caller (or none, and the
call fails before any output).

The upstreams are scripted httpx transports (the router is what is under test); their streams
are real OpenAI-protocol bytes with real delays, so hedge timers and cancellations happen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolcallstore.lanes.base import Target, TextDelta
from toolcallstore.lanes.catalog import Catalog, Lane, Model
from toolcallstore.lanes.health import DEFAULT_POLICY, ProviderHealth
from toolcallstore.lanes.plan import plan_call
from toolcallstore.lanes.router import AllProvidersFailed, LaneCall, Refused
from toolcallstore.lanes.sender import Sender

FAULTS = ["ok", "slow", "stall", "500", "429", "cut", "in_band"]
PARAMS = {"model": "lane", "messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 40}


class Script(httpx.AsyncByteStream):
    def __init__(self, tag: str, fault: str) -> None:
        self.tag, self.fault = tag, fault

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.fault == "slow":
            await asyncio.sleep(0.03)
        if self.fault == "stall":
            await asyncio.sleep(1.0)  # beyond the first-token timeout
        for i in range(4):
            if self.fault == "cut" and i == 2:
                return
            if self.fault == "in_band" and i == 0:
                yield b'data: {"error": {"code": "server_error", "message": "boom"}}\n\n'
                return
            yield _chunk({"content": f"{self.tag} "})
            await asyncio.sleep(0.002)
        yield _chunk({}, finish="stop")
        usage = {"prompt_tokens": 90, "completion_tokens": 4, "total_tokens": 94}
        yield b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def upstream(faults: dict[str, str]) -> httpx.AsyncClient:
    async def handle(request: httpx.Request) -> httpx.Response:
        provider = request.url.path.split("/")[1]
        fault = faults[provider]
        if fault in ("500", "429"):
            headers = {"retry-after": "5"} if fault == "429" else {}
            body = {"error": {"message": fault, "type": "x", "code": None}}
            return httpx.Response(int(fault), headers=headers, json=body)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Script(provider, fault))  # fmt: skip

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


def catalog(prices: list[tuple[int, int, bool]], lane: Lane) -> Catalog:
    models = {}
    for i, (input_price, output_price, bills) in enumerate(prices):
        target = Target(f"p{i}/m", f"p{i}", "m", "openai", f"http://127.0.0.1:9/p{i}")
        models[target.id] = Model(target, Decimal(input_price), Decimal(output_price), 100_000,
                                  1000, True, False, bills, False, DEFAULT_POLICY,
                                  "key", True)  # fmt: skip
    lane = replace(lane, targets=tuple(models))
    return Catalog(models, {"lane": lane}, {}, Decimal("0.2"), Decimal("0"), lane)


scenario = st.fixed_dictionaries(
    {
        "prices": st.lists(
            st.tuples(st.integers(1, 30), st.integers(1, 60), st.booleans()),
            min_size=1,
            max_size=4,
        ),  # fmt: skip
        "faults": st.lists(st.sampled_from(FAULTS), min_size=4, max_size=4),
        "hedge_after_ms": st.sampled_from([0, 5, 20]),
        "max_parallel": st.integers(1, 3),
        "budget_factor": st.floats(0.9, 3.0),
    }
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario)
def test_attempts_never_cost_more_than_the_budget_and_one_answer_reaches_the_caller(
    case: dict[str, Any],
) -> None:
    asyncio.run(_run(case))


async def _run(case: dict[str, Any]) -> None:
    lane = Lane("lane", "", (), "listed", case["hedge_after_ms"], case["max_parallel"], False,
                100, 100, "absorb")  # fmt: skip
    cat = catalog(case["prices"], lane)
    worst = [plan_call(cat, {**PARAMS, "model": m}, livemode=False, budget_micros=None)
             .hold_micros for m in cat.models]  # fmt: skip
    budget = int(max(min(worst), min(worst) * case["budget_factor"]))
    plan = plan_call(cat, PARAMS, livemode=False, budget_micros=budget)
    faults = {f"p{i}": case["faults"][i] for i in range(len(case["prices"]))}
    async with upstream(faults) as http:
        call = LaneCall(Sender(http), plan, PARAMS, livemode=True, sandbox_url="",
                        health=ProviderHealth())  # fmt: skip
        received: list[str] = []
        failed = False
        try:
            async for event in call.events():
                if isinstance(event, TextDelta):
                    received.append(event.text)
        except (AllProvidersFailed, Refused):
            failed = True
    spent = sum((a.cost for a in call.attempts), Decimal(0))
    assert spent * 1_000_000 <= budget, (spent, budget, [a.record() for a in call.attempts])
    assert sum(plan.price_of(a.cost) for a in call.attempts if a.cost) <= plan.hold_micros
    delivered = [a for a in call.attempts if a.delivered]
    if failed:
        assert not received and not delivered
        return
    assert len(delivered) == 1
    tag = delivered[0].provider
    assert received and all(text == f"{tag} " for text in received)
    assert all(a.outcome != "running" for a in call.attempts), [a.record() for a in call.attempts]
