"""Each upstream fault ends in the outcome a caller must see (failover, in-band error, 402,
422), with its hold settled or released and the ledger balanced: the whole app on a real
socket, its sandbox providers injecting the faults."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.chat.helpers import (
    Live,
    live_server,
    models_file,
    price_micros,
    sse_payloads,
    target_id,
)
from toolcallstore.lanes import attempt as attempt_module
from toolcallstore.lanes.openai_out import Assembly
from toolcallstore.lanes.plan import estimate_output_tokens
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

PROVIDERS = {
    "ok-openai": ("openai", None),
    "ok-anthropic": ("anthropic", None),
    "ok-gemini": ("gemini", None),
    "down-500": ("openai", "status=500"),
    "down-500b": ("gemini", "status=500"),
    "overloaded": ("anthropic", "status=529"),
    "limited": ("openai", "status=429,retry_after=30"),
    "stalls": ("openai", "stall_ms=5000"),
    "cuts": ("anthropic", "cut_after=3,words=20"),
    "errs": ("openai", "error_after=2,words=20"),
    "garbles": ("gemini", "malformed_at=2"),
    "too-long": ("openai", "code=context_length_exceeded"),
    "refuses": ("anthropic", "code=content_policy"),
    "no-usage": ("openai", "no_usage=1"),
    "no-done": ("openai", "no_done=1"),
    "pings": ("anthropic", "keepalive=1"),
    "gemini-keepalive": ("gemini", "keepalive=1,no_done=1"),
    "long": ("openai", "words=4000"),
}
LANES = {
    "fails-over-500": ["down-500", "ok-anthropic"],
    "fails-over-529": ["overloaded", "ok-openai"],
    "fails-over-429": ["limited", "ok-gemini"],
    "fails-over-stall": ["stalls", "ok-openai"],
    "cut": ["cuts", "ok-openai"],
    "in-band": ["errs", "ok-openai"],
    "malformed": ["garbles"],
    "context": ["too-long", "ok-gemini"],
    "refusal": ["refuses", "ok-openai"],
    "all-down": ["down-500", "down-500b"],
    "no-usage": ["no-usage"],
    "no-done": ["no-done"],
    "pings": ["pings"],
    "gemini-keepalive": ["gemini-keepalive"],
    "healthy": ["ok-openai"],
    "long": ["long"],
    "waits": ["limited"],
}
MESSAGES = [{"role": "user", "content": "tell me about the weather"}]


@pytest.fixture
async def live(settings: Settings, tmp_path: Path) -> AsyncIterator[Live]:
    file = models_file(tmp_path, PROVIDERS, LANES, first_token_timeout_ms=400)
    async with live_server(settings.with_(models_file=str(file))) as server:
        yield server


async def chat(live: Live, key: str, lane: str, **extra: Any) -> httpx.Response:
    body = {"model": lane, "messages": MESSAGES, "max_tokens": 50, **extra}
    return await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))


def outcomes(toolcall: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["target"], a["outcome"]) for a in toolcall["attempts"]]


@pytest.mark.parametrize(
    ("lane", "failed", "winner"),
    [
        ("fails-over-500", ["down-500", "down-500"], "ok-anthropic"),  # one quick retry
        ("fails-over-529", ["overloaded"], "ok-openai"),
        ("fails-over-429", ["limited"], "ok-gemini"),  # Retry-After: not retried in this call
        ("fails-over-stall", ["stalls"], "ok-openai"),  # no first token in time
        ("context", ["too-long"], "ok-gemini"),
    ],
)
async def test_a_failure_before_the_first_token_moves_to_the_next_target(
    live: Live, lane: str, failed: list[str], winner: str
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, lane)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == target_id(winner)
    assert body["choices"][0]["message"]["content"].startswith("Sandbox reply from sandbox-model")
    toolcall = body["toolcall"]
    expected = [(target_id(p), "failed") for p in failed] + [(target_id(winner), "succeeded")]
    assert outcomes(toolcall) == expected
    usage = body["usage"]
    # Only the answer that reached the caller is charged.
    charged = price_micros(usage["prompt_tokens"], usage["completion_tokens"])
    assert toolcall["cost_usd"] == micros_to_usd(charged)
    receipt = await live.receipt(toolcall["receipt_id"])
    assert receipt["amount_usd"] == micros_to_usd(charged)
    assert [a["outcome"] for a in receipt["attempts"]] == [o for _, o in expected]
    await live.balanced()


async def test_a_stalled_loser_is_cancelled_and_costed(live: Live) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "fails-over-stall")
    assert r.status_code == 200, r.text
    receipt = await live.receipt(r.json()["toolcall"]["receipt_id"])
    stalled, won = receipt["attempts"]
    assert stalled["error"]["code"] == "first_token_timeout"
    # The silent target may have read the prompt: its estimated prompt cost is ours, not the
    # caller's (the operator sees it as provider cost beyond the winner's).
    assert stalled["usage_estimated"] is True
    assert float(stalled["provider_cost_usd"]) > 0
    assert float(receipt["provider_cost_usd"]) > float(won["provider_cost_usd"])
    report = await live.balanced()
    # One receipt with costs at two providers: once under each, once in the total.
    assert {p["provider"]: p["receipts"] for p in report["providers"]} == {
        "stalls": 1, "ok-openai": 1}  # fmt: skip
    assert report["total"]["receipts"] == 1


async def test_a_lane_whose_every_target_asked_us_to_wait_says_when_to_retry(
    live: Live,
) -> None:
    key = await live.agent_key()
    first = await chat(live, key, "waits")  # its one target answers 429, Retry-After: 30
    assert first.status_code == 502
    second = await chat(live, key, "waits")  # inside that wait: no target is tried
    assert second.status_code == 502 and second.json()["error"]["attempts"] == []
    assert second.headers["Retry-After"] == "1"
    await live.balanced()


async def test_every_target_down_is_a_502_listing_attempts_and_releases_the_hold(
    live: Live,
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "all-down")
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "all_providers_failed"
    assert [a["target"] for a in error["attempts"]] == [target_id("down-500")] * 2 + [
        target_id("down-500b")
    ] * 2
    assert all(a["error"]["status"] == 500 for a in error["attempts"])
    assert "provider_cost_usd" not in error["attempts"][0]  # tenants never see provider cost
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["status"] == "failed"
    assert receipt["amount_usd"] == "0.000000"
    await live.balanced()


@pytest.mark.parametrize(("lane", "code"), [("cut", "stream_cut"), ("in-band", "server_error")])
async def test_a_failure_after_the_first_token_ends_the_stream_in_band_and_settles_what_was_sent(
    live: Live, lane: str, code: str
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, lane, stream=True)
    assert r.status_code == 200
    payloads = sse_payloads(r.content)
    assert "[DONE]" not in payloads  # a cut stream is never a clean finish
    last = payloads[-1]
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["code"] == "stream_interrupted"
    assert code in last["error"]["message"]
    delivered = "".join(
        p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1] if p["choices"]
    )
    assert delivered.startswith("Sandbox reply")
    assert outcomes(last["toolcall"]) == [(target_id(lane_first(lane)), "cut")]
    assert last["usage"]["incomplete"] is True
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["status"] == "succeeded"
    # Charged for the delivered part only, counted from its text (no provider sends the count
    # of a cut stream; Anthropic's message_start carries a placeholder of 1) and flagged.
    usage = last["usage"]
    assert usage["completion_tokens"] == estimate_output_tokens(len(delivered.encode()))
    assert 1 < usage["completion_tokens"] < 20
    assert last["toolcall"]["usage_estimated"] is True
    assert receipt["amount_usd"] == last["toolcall"]["cost_usd"] != "0.000000"
    await live.balanced()


async def test_a_cut_stream_replays_as_it_went(live: Live) -> None:
    # 200, the delivered part, the same in-band error chunk; not a 502 JSON it never was.
    key = await live.agent_key()
    idem = {**live.auth(key), "Idempotency-Key": secrets.token_hex(8)}
    body = {"model": "cut", "messages": MESSAGES, "max_tokens": 50, "stream": True}
    first = await live.client.post("/v1/chat/completions", json=body, headers=idem)
    again = await live.client.post("/v1/chat/completions", json=body, headers=idem)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    original, replayed = ended_in_band(first), ended_in_band(again)

    def text(payloads: list[Any]) -> str:
        return "".join(p["choices"][0]["delta"].get("content") or ""
                       for p in payloads[:-1] if p["choices"])  # fmt: skip

    assert text(replayed) == text(original) != ""
    for field in ("error", "usage", "toolcall"):
        assert replayed[-1][field] == original[-1][field]
    await live.balanced()


def lane_first(lane: str) -> str:
    return LANES[lane][0]


async def test_a_non_stream_call_cut_mid_answer_is_a_502_and_costs_the_caller_nothing(
    live: Live,
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "cut")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "stream_interrupted"
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["status"] == "failed" and receipt["amount_usd"] == "0.000000"
    assert float(receipt["provider_cost_usd"]) > 0  # the provider's partial work is ours
    await live.balanced()


async def test_a_malformed_event_is_skipped_never_forwarded(live: Live) -> None:
    key = await live.agent_key()
    plain = await chat(live, key, "malformed")
    streamed = await chat(live, key, "malformed", stream=True)
    assert plain.status_code == streamed.status_code == 200
    payloads = sse_payloads(streamed.content)
    assert payloads[-1] == "[DONE]"
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]
                   if isinstance(p, dict) and p["choices"])  # fmt: skip
    assert text == plain.json()["choices"][0]["message"]["content"]
    assert text.startswith("Sandbox reply from sandbox-model")
    await live.balanced()


async def test_a_content_refusal_is_final_no_other_target_is_tried(live: Live) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "refusal")
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert [a["target"] for a in error["toolcall"]["attempts"]] == [target_id("refuses")]
    await live.balanced()


async def test_missing_usage_is_estimated_and_flagged_on_the_receipt(live: Live) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "no-usage", stream=True)
    assert r.status_code == 200
    last = sse_payloads(r.content)[-2]
    assert last["toolcall"]["usage_estimated"] is True
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["estimated"] is True
    assert receipt["amount_usd"] != "0.000000"
    await live.balanced()


async def test_a_spend_cap_refuses_with_402_before_any_upstream_call(live: Live) -> None:
    key = await live.agent_key()
    cap = {"monthly_cap_usd": "0.000010"}
    r = await live.client.post("/v1/spend_caps", json=cap, headers=live.auth())
    assert r.status_code == 200, r.text
    r = await chat(live, key, "fails-over-500")
    assert r.status_code == 402
    error = r.json()["error"]
    assert error["code"] == "spend_cap_exceeded" and error["limit_source"] == "tenant"
    assert "Retry-After" not in r.headers  # nothing in flight could free room
    await live.balanced()


async def test_a_budget_too_small_for_any_target_is_a_422_naming_the_minimum(live: Live) -> None:
    key = await live.agent_key()
    r = await chat(live, key, "fails-over-500", max_cost_usd="0.000001")
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "max_cost_too_low" and error["param"] == "max_cost_usd"
    minimum = error["minimum_usd"]
    r = await chat(live, key, "fails-over-500", max_cost_usd=minimum)
    assert r.status_code == 200, r.text
    assert r.json()["toolcall"]["cost_usd"] <= minimum
    await live.balanced()


@pytest.mark.parametrize("lane", ["no-done", "pings", "gemini-keepalive"])
async def test_keep_alives_and_a_missing_end_marker_still_finish_cleanly_with_usage(
    live: Live, lane: str
) -> None:
    key = await live.agent_key()
    r = await chat(live, key, lane, stream=True)
    assert r.status_code == 200
    payloads = sse_payloads(r.content)
    assert payloads[-1] == "[DONE]"
    finish = [p["choices"][0]["finish_reason"] for p in payloads[:-2] if p["choices"]]
    assert finish[-1] == "stop" and all(f is None for f in finish[:-1])
    usage = payloads[-2]["usage"]
    assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] > 0
    assert payloads[-2]["toolcall"]["usage_estimated"] is False
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == micros_to_usd(
        price_micros(usage["prompt_tokens"], usage["completion_tokens"])
    )
    await live.balanced()


async def test_llm_chat_executions_report_a_refusal_as_such_and_charge_nothing(
    live: Live,
) -> None:
    key = await live.agent_key()
    params = {"model": "refusal", "messages": MESSAGES, "max_tokens": 50}
    r = await live.client.post("/v1/executions", json={"tool": "llm.chat", "params": params},
                               headers={**live.auth(key), "Idempotency-Key": "x1"})  # fmt: skip
    assert r.status_code == 502  # a failed tool, as every failed execution
    error = r.json()["error"]
    assert error["code"] == "content_policy_violation"
    receipt = await live.receipt(error["receipt_id"])
    assert receipt["status"] == "failed" and receipt["amount_usd"] == "0.000000"
    assert [a["target"] for a in receipt["attempts"]] == [target_id("refuses")]
    await live.balanced()


# --- our own bugs -----------------------------------------------------------------------------
# A fault injected into our code (not the provider's): whatever breaks, the caller gets a clean
# answer and pays for nothing it did not receive, and the hold never stays open.


def ended_in_band(r: httpx.Response) -> list[Any]:
    """The payloads of a stream that failed after its first token: it ends with an error
    chunk, never with [DONE]."""
    assert r.status_code == 200
    payloads = sse_payloads(r.content)
    assert "[DONE]" not in payloads
    assert payloads[-1]["choices"][0]["finish_reason"] == "error"
    return payloads


def break_on_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, nth: int) -> None:
    """Make `owner.name` raise RuntimeError from its `nth` call on."""
    real = getattr(owner, name)
    calls = 0

    def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls >= nth:
            raise RuntimeError("injected bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, broken)


async def test_our_bug_before_the_answer_is_a_500_envelope_and_costs_nothing(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_on_call(monkeypatch, Assembly, "add", 1)
    key = await live.agent_key()
    idem = {**live.auth(key), "Idempotency-Key": "our-bug-1"}
    body = {"model": "healthy", "messages": MESSAGES, "max_tokens": 50}
    r = await live.client.post("/v1/chat/completions", json=body, headers=idem)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["status"] == "failed" and receipt["amount_usd"] == "0.000000"
    # The stored answer is the one the caller got, not a "client disconnected".
    replay = await live.client.post("/v1/chat/completions", json=body, headers=idem)
    assert replay.status_code == 500 and replay.json() == r.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    await live.balanced()


async def test_our_bug_mid_stream_ends_it_in_band_and_charges_what_was_sent(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_on_call(monkeypatch, Assembly, "add", 4)
    key = await live.agent_key()
    r = await chat(live, key, "healthy", stream=True)
    last = ended_in_band(r)[-1]
    assert last["error"]["code"] == "internal_error"
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == last["toolcall"]["cost_usd"] != "0.000000"
    await live.balanced()


async def test_our_bug_in_an_attempt_after_its_first_token_is_a_cut_not_a_free_finish(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attempt's own bookkeeping fails on its third event: the answer so far was delivered,
    # so the call must end in-band and charge it, not finish cleanly at no cost.
    break_on_call(monkeypatch, attempt_module, "_account", 3)
    key = await live.agent_key()
    r = await chat(live, key, "healthy", stream=True)
    payloads = ended_in_band(r)
    last = payloads[-1]
    assert last["error"]["code"] == "stream_interrupted"
    assert "internal_error" in last["error"]["message"]
    assert outcomes(last["toolcall"]) == [(target_id("ok-openai"), "cut")]
    delivered = "".join(
        p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1] if p["choices"]
    )
    assert last["usage"]["completion_tokens"] == estimate_output_tokens(len(delivered.encode()))
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == last["toolcall"]["cost_usd"] != "0.000000"
    await live.balanced()


async def test_a_client_too_slow_to_read_is_cut_off_at_the_time_limit_and_charged(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The call's hold lasts its time limit plus a grace period; a client that stops reading
    # must not keep the call open past it (the sweep would release the hold unpaid).
    svc = live.app.state.services
    tool = svc.tools.get("llm.chat")
    monkeypatch.setitem(svc.tools._tools, "llm.chat", dataclasses.replace(tool, timeout_s=1.0))
    key = await live.agent_key()
    body = orjson.dumps({"model": "long", "messages": MESSAGES, "max_tokens": 1000,
                         "stream": True})  # fmt: skip
    # Tiny socket buffers on both sides: once they are full, our writes wait.
    for listening in live.server.servers[0].sockets:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted ones inherit it
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")  # then reads nothing more
        assert head.startswith(b"HTTP/1.1 200")
        receipt_id = re.search(rb"toolcall-receipt-id: (\S+)", head, re.I)[1].decode()  # type: ignore[index]
        db = svc.db
        for _ in range(50):
            await asyncio.sleep(0.1)
            row = await db.fetch_one("SELECT * FROM receipts WHERE id = :id", {"id": receipt_id})
            if row is not None:
                break
    finally:
        writer.close()
    assert row is not None, "the call was still open after 5 s (time limit 1 s)"
    execution = await db.fetch_one(
        "SELECT state, price_micros, error FROM executions WHERE receipt_id = :id",
        {"id": receipt_id},
    )
    # What reached the socket before it stalled is charged, as for a client that hangs up.
    assert execution["state"] == "succeeded" and execution["price_micros"] > 0
    receipt = await live.receipt(receipt_id)
    assert receipt["amount_usd"] != "0.000000"
    await live.balanced()
