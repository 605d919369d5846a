"""Hedged failover inside a lane under the call's budget, circuit breakers, mid-stream resume:
the whole app on a real socket, its sandbox providers injecting the faults."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.chat.helpers import Live, live_server, models_file, sse_payloads, target_id
from toolcallstore.controls.pricing import to_micros_up
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

PROVIDERS = {
    "stalls": ("openai", "stall_ms=1500"),
    "fast": ("openai", None),
    "fast-anthropic": ("anthropic", None),
    "down": ("openai", "status=500"),
    "limited": ("gemini", "status=429,retry_after=30"),
    "cuts": ("openai", "cut_after=3,words=20"),
}
HEDGED = {"hedge_after_ms": 200, "max_parallel": 2, "first_token_timeout_ms": 10_000}
MESSAGES = [{"role": "user", "content": "a question worth hedging"}]


def lanes() -> dict[str, dict[str, Any]]:
    return {
        "hedged": {"targets": ["stalls", "fast"], **HEDGED},
        "hedged-pass": {"targets": ["stalls", "fast"], **HEDGED, "loser_costs": "pass"},
        "breaker": {"targets": ["down", "fast"], "hedge_after_ms": 0},
        "retry-after": {"targets": ["limited", "fast"], "hedge_after_ms": 0},
        "resume": {"targets": ["cuts", "fast-anthropic"], "resume_mid_stream": True},
        "resume-no-prefill": {"targets": ["cuts", "fast"], "resume_mid_stream": True},
    }


@pytest.fixture
async def live(settings: Settings, tmp_path: Path) -> AsyncIterator[Live]:
    file = models_file(tmp_path, PROVIDERS, {})
    data = orjson.loads(file.read_bytes())
    for name, spec in lanes().items():
        data["lanes"][name] = {
            "description": name,
            "targets": [target_id(p) for p in spec["targets"]],
            "order": "listed",
            "hedge_after_ms": 0,
            "max_parallel": 1,
            "resume_mid_stream": False,
            **{k: v for k, v in spec.items() if k != "targets"},
        }
    file.write_bytes(orjson.dumps(data))
    async with live_server(settings.with_(models_file=str(file))) as server:
        yield server


async def chat(live: Live, key: str, lane: str, **extra: Any) -> httpx.Response:
    body = {"model": lane, "messages": MESSAGES, "max_tokens": 50, **extra}
    return await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))


def roles(attempts: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(a["target"], a["role"], a["outcome"]) for a in attempts]


async def worst_case(live: Live, key: str, lane: str) -> Decimal:
    """The worst case of one attempt of this call, from a quote of it."""
    body = {"model": lane, "messages": MESSAGES, "max_tokens": 50}
    r = await live.client.post("/v1/quotes", json={"tool": "llm.chat", "params": body},
                               headers={**live.auth(key), "Idempotency-Key": lane})  # fmt: skip
    assert r.status_code == 200, r.text
    return max(Decimal(line["amount_usd"]) for line in r.json()["breakdown"]["lines"])


async def test_a_stalled_target_is_hedged_the_hedge_wins_and_the_loser_is_cancelled_and_costed(
    live: Live,
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "hedged", stream=True)
    assert r.status_code == 200
    payloads = sse_payloads(r.content)
    assert payloads[-1] == "[DONE]"
    assert payloads[0]["model"] == target_id("fast")
    toolcall = payloads[-2]["toolcall"]
    assert roles(toolcall["attempts"]) == [
        (target_id("stalls"), "primary", "cancelled"),
        (target_id("fast"), "hedge", "succeeded"),
    ]
    loser, winner = (await live.receipt(r.headers["ToolCall-Receipt-Id"]))["attempts"]
    assert loser["first_token_ms"] is None and winner["first_token_ms"] is not None
    assert loser["delivered"] is False and winner["delivered"] is True
    # The loser read the prompt: its cost is recorded (ours: the lane absorbs it).
    assert Decimal(loser["provider_cost_usd"]) > 0
    usage = payloads[-2]["usage"]
    assert usage["completion_tokens"] == 12
    await live.balanced()


async def test_a_lane_that_passes_loser_costs_charges_them_within_the_budget(live: Live) -> None:
    key = await live.agent_key()
    absorbed = (await chat(live, key, "hedged")).json()["toolcall"]
    passed = (await chat(live, key, "hedged-pass")).json()["toolcall"]
    assert Decimal(passed["cost_usd"]) > Decimal(absorbed["cost_usd"])
    receipt = await live.receipt(passed["receipt_id"])
    loser_cost = Decimal(receipt["attempts"][0]["provider_cost_usd"])
    winner_cost = Decimal(receipt["attempts"][1]["provider_cost_usd"])
    expected = to_micros_up((loser_cost + winner_cost) * Decimal("1.20"))
    # Within a micro: each attempt's cost was rounded up to the micro on the receipt.
    assert abs(int(Decimal(receipt["amount_usd"]) * 1_000_000) - expected) <= 2
    report = await live.balanced()
    losers = report["losing_attempts"]  # one stalled loser per call: one absorbed, one passed
    assert losers["attempts"] == 2
    assert Decimal(losers["passed_to_customers_usd"]) == loser_cost
    assert Decimal(losers["provider_cost_usd"]) > loser_cost  # plus the absorbed one


async def test_a_budget_that_fits_only_one_attempt_starts_no_hedge(live: Live) -> None:
    key = await live.agent_key()
    one = await worst_case(live, key, "hedged")
    r = await chat(live, key, "hedged", max_cost_usd=str(one * Decimal("1.5")))
    assert r.status_code == 200, r.text
    toolcall = r.json()["toolcall"]
    # The stalled target answered late: waiting was all the budget allowed.
    assert roles(toolcall["attempts"]) == [(target_id("stalls"), "primary", "succeeded")]
    assert Decimal(toolcall["cost_usd"]) <= one
    await live.balanced()


async def test_a_failing_target_opens_its_breaker_and_is_tried_last(live: Live) -> None:
    key = await live.agent_key()
    for _ in range(3):  # each call: two failures (one quick retry), then the healthy target
        r = await chat(live, key, "breaker")
        assert r.status_code == 200
    r = await chat(live, key, "breaker")
    assert roles(r.json()["toolcall"]["attempts"]) == [(target_id("fast"), "primary", "succeeded")]
    r = await live.client.get("/v1/health/providers", headers=live.auth(key))
    assert r.status_code == 200
    health = {t["target"]: t for t in r.json()["targets"]}
    down, fast = health[target_id("down")], health[target_id("fast")]
    assert down["state"] == "open" and down["error_rate"] == 1.0 and down["calls"] == 6
    assert fast["state"] == "closed" and fast["error_rate"] == 0.0 and fast["calls"] == 4
    assert fast["latency_ms"]["p50"] is not None and fast["first_token_ms"]["p95"] is not None
    await live.balanced()


async def test_retry_after_is_honoured_the_target_is_not_touched_again(live: Live) -> None:
    key = await live.agent_key()
    first = (await chat(live, key, "retry-after")).json()["toolcall"]["attempts"]
    assert roles(first) == [
        (target_id("limited"), "primary", "failed"),
        (target_id("fast"), "failover", "succeeded"),
    ]
    second = (await chat(live, key, "retry-after")).json()["toolcall"]["attempts"]
    assert [a["target"] for a in second] == [target_id("fast")]
    r = await live.client.get("/v1/health/providers", headers=live.auth(key))
    limited = next(t for t in r.json()["targets"] if t["target"] == target_id("limited"))
    assert 0 < limited["retry_after_s"] <= 30 and limited["available"] is False
    await live.balanced()


async def test_a_cut_stream_resumes_on_a_prefill_target_as_one_uninterrupted_stream(
    live: Live,
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "resume", stream=True)
    assert r.status_code == 200
    payloads = sse_payloads(r.content)
    assert payloads[-1] == "[DONE]"  # no in-band error: the client saw one stream
    chunks = [p for p in payloads[:-2] if p["choices"]]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in chunks)
    # Exactly the 3 words the cut target delivered, then the 12 words of the continuation,
    # which the prefill fake takes up after the prefix it received (a prefix it does not
    # recognise as the answer's beginning is answered from the start: the answer twice).
    answer = ("Sandbox reply from sandbox-model: a question worth hedging"
              " lorem ipsum dolor sit amet consectetur adipiscing elit")  # fmt: skip
    assert text == " ".join(answer.split()[:15])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    toolcall = payloads[-2]["toolcall"]
    assert roles(toolcall["attempts"]) == [
        (target_id("cuts"), "primary", "cut"),
        (target_id("fast-anthropic"), "resume", "succeeded"),
    ]
    assert all(a["delivered"] for a in toolcall["attempts"])
    usage = payloads[-2]["usage"]
    assert usage["completion_tokens"] > 12  # both parts
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == toolcall["cost_usd"] != micros_to_usd(0)
    # The resumed attempt read the question and the whole delivered prefix (as sent: the
    # trailing space trimmed), by the fakes' counting rule.
    prefix_tokens = math.ceil(len("Sandbox reply from") / 4) + 3
    question_tokens = math.ceil(len(MESSAGES[0]["content"]) / 4) + 3
    resumed = receipt["attempts"][1]
    assert resumed["input_tokens"] == question_tokens + prefix_tokens
    await live.balanced()


async def test_a_resumed_answer_names_the_target_that_finished_it_and_keeps_both(
    live: Live,
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "resume", stream=True)
    payloads = sse_payloads(r.content)
    chunks = [p for p in payloads[:-1] if isinstance(p, dict)]
    assert chunks[0]["model"] == target_id("cuts")  # what the first words came from
    assert chunks[-1]["model"] == target_id("fast-anthropic")  # the finish and the usage
    r = await chat(live, key, "resume")
    body = r.json()
    assert body["model"] == target_id("fast-anthropic")
    words = body["choices"][0]["message"]["content"].split()
    assert words[:5] == ["Sandbox", "reply", "from", "sandbox-model:", "a"]  # said once
    assert body["toolcall"]["target"] == target_id("fast-anthropic")
    receipt = await live.receipt(body["toolcall"]["receipt_id"])
    assert [(a["target"], a["delivered"]) for a in receipt["attempts"]] == [
        (target_id("cuts"), True),
        (target_id("fast-anthropic"), True),
    ]
    await live.balanced()


async def test_a_target_without_prefill_is_never_used_to_resume(live: Live) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "resume-no-prefill", stream=True)
    payloads = sse_payloads(r.content)
    assert "[DONE]" not in payloads
    assert payloads[-1]["choices"][0]["finish_reason"] == "error"
    assert "stream_cut" in payloads[-1]["error"]["message"]  # the original failure
    assert [a["target"] for a in payloads[-1]["toolcall"]["attempts"]] == [target_id("cuts")]
    await live.balanced()


async def test_a_stream_that_goes_silent_mid_answer_ends_in_band_within_the_idle_bound(
    settings: Settings, tmp_path: Path
) -> None:
    file = models_file(tmp_path, {"slow": ("openai", "latency_ms=1000,words=5")},
                       {"idle": ["slow"]}, first_token_timeout_ms=5000,
                       idle_timeout_ms=300)  # fmt: skip
    async with live_server(settings.with_(models_file=str(file))) as live:
        key = await live.agent_key()
        r = await chat(live, key, "idle", stream=True)
        payloads = sse_payloads(r.content)
        assert "[DONE]" not in payloads
        last = payloads[-1]
        assert last["choices"][0]["finish_reason"] == "error"
        assert "stream_stalled" in last["error"]["message"]
        text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
        assert text == "Sandbox "  # the one word before the silence
        (attempt,) = last["toolcall"]["attempts"]
        assert attempt["outcome"] == "cut" and attempt["error"]["code"] == "stream_stalled"
        await live.balanced()
