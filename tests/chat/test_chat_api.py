"""`/v1/chat/completions` under the controls: quotes, executions of `llm.chat`, idempotent
replays, refusals of bad input, `/v1/models`, and a client that hangs up mid-stream."""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from httpx_aiohttp.transport import AiohttpResponseStream
from starlette.requests import Request
from starlette.responses import StreamingResponse

from tests.chat.helpers import (
    Live,
    live_server,
    loopback_upstream,
    models_file,
    point_provider,
    price_micros,
    sse_payloads,
)
from toolcallstore.lanes.prices import refresh_prices
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

BODY = {"model": "lane", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30}


@pytest.fixture
async def live(settings: Settings, tmp_path: Path) -> AsyncIterator[Live]:
    file = models_file(tmp_path, {"sb": ("openai", None)}, {"lane": ["sb"]})
    async with live_server(settings.with_(models_file=str(file))) as server:
        yield server


async def post(live: Live, key: str, body: dict[str, Any], **headers: str) -> Any:
    return await live.client.post(
        "/v1/chat/completions", json=body, headers={**live.auth(key), **headers}
    )


async def test_a_quote_pays_for_exactly_the_quoted_call_once(live: Live) -> None:
    key = await live.agent_key(auto_quote_max_usd=None)
    r = await live.client.post("/v1/quotes", json={"tool": "llm.chat", "params": BODY},
                               headers={**live.auth(key), "Idempotency-Key": "q1"})  # fmt: skip
    assert r.status_code == 200, r.text
    quote = r.json()
    assert quote["breakdown"]["lines"][0]["max_tokens"] == 30
    r = await post(live, key, {**BODY, "messages": [{"role": "user", "content": "bye"}],
                               "quote_id": quote["id"]})  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "quote_mismatch"
    r = await post(live, key, {**BODY, "quote_id": quote["id"], "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["ToolCall-Quote-Id"] == quote["id"]
    last = sse_payloads(r.content)[-2]
    assert float(last["toolcall"]["cost_usd"]) <= float(quote["max_cost_usd"])
    again = await post(live, key, {**BODY, "quote_id": quote["id"]})
    assert again.status_code == 409 and again.json()["error"]["code"] == "quote_already_used"
    await live.balanced()


async def test_without_auto_quote_a_key_must_quote_first(live: Live) -> None:
    key = await live.agent_key(auto_quote_max_usd=None)
    r = await post(live, key, BODY)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "quote_required"


@pytest.mark.parametrize(
    ("max_cost_usd", "status", "code"),
    [
        ("1.00", 403, "quote_required"),  # the caller's budget pays, the key's limit does not
        (None, 403, "quote_required"),
        ("0.0001", 422, "max_cost_too_low"),  # the caller's own budget cannot pay
    ],
)
async def test_a_call_over_the_keys_inline_limit_needs_a_quote(
    live: Live, max_cost_usd: str | None, status: int, code: str
) -> None:
    key = await live.agent_key(auto_quote_max_usd="0.0003")
    body = {**BODY, "max_tokens": 1000, "max_cost_usd": max_cost_usd}
    r = await post(live, key, {k: v for k, v in body.items() if v is not None})
    error = r.json()["error"]
    assert (r.status_code, error["code"]) == (status, code), error
    if code == "max_cost_too_low":
        assert error["message"].startswith("max_cost_usd 0.000100 cannot pay")
    else:
        assert "auto_quote_max_usd of 0.000300" in error["message"]


async def test_llm_chat_runs_through_executions_like_any_tool(live: Live) -> None:
    key = await live.agent_key()
    r = await live.client.post("/v1/executions", json={"tool": "llm.chat", "params": BODY},
                               headers={**live.auth(key), "Idempotency-Key": "e1"})  # fmt: skip
    assert r.status_code == 200, r.text
    execution = r.json()
    completion = execution["result"]
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"].startswith("Sandbox reply")
    usage = completion["usage"]
    charged = micros_to_usd(price_micros(usage["prompt_tokens"], usage["completion_tokens"]))
    assert execution["amount_usd"] == charged
    receipt = await live.receipt(execution["receipt_id"])
    assert receipt["amount_usd"] == charged and receipt["tool"] == "llm.chat"
    # The completion names the receipt it was charged on, as a chat call's last chunk does.
    assert completion["toolcall"]["receipt_id"] == execution["receipt_id"]
    # Provider cost is the operator's: not in the tenant's answer, nor when fetched again.
    again = await live.client.get(f"/v1/executions/{execution['id']}", headers=live.auth(key))
    assert again.json()["result"] == completion
    assert "provider_cost" not in r.text and "provider_cost" not in again.text
    await live.balanced()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_idempotent_retry_replays_the_answer_and_charges_once(
    live: Live, stream: bool
) -> None:
    key = await live.agent_key()
    idem = secrets.token_hex(8)
    first = await post(live, key, {**BODY, "stream": stream}, **{"Idempotency-Key": idem})
    second = await post(live, key, {**BODY, "stream": stream}, **{"Idempotency-Key": idem})
    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    for header in ("ToolCall-Receipt-Id", "ToolCall-Quote-Id"):
        assert second.headers[header] == first.headers[header]
    if stream:
        text = [streamed_text(r.content) for r in (first, second)]
        assert text[0] == text[1] != ""
        assert sse_payloads(second.content)[-1] == "[DONE]"
    else:
        assert first.json() == second.json()
    r = await live.client.get("/v1/receipts", headers=live.auth())
    assert len(r.json()["data"]) == 1  # one call, one receipt
    other = await post(live, key, {**BODY, "max_tokens": 31}, **{"Idempotency-Key": idem})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    await live.balanced()


def streamed_text(body: bytes) -> str:
    chunks = [p for p in sse_payloads(body) if isinstance(p, dict) and p["choices"]]
    return "".join(p["choices"][0]["delta"].get("content") or "" for p in chunks)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({**BODY, "temprature": 1}, 400, "temprature"),
        ({**BODY, "messages": []}, 400, "messages"),
        ({**BODY, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({**BODY, "max_tokens": 0}, 400, "max_tokens"),
        ({**BODY, "max_cost_usd": "-1"}, 400, "max_cost_usd"),
        ({**BODY, "tools": [{"type": "function"}]}, 400, "tools[0]"),
        ({**BODY, "tool_choice": {"type": "function", "function": {"name": "x"}}}, 400,
         "tool_choice"),
        ({**BODY, "stream": "yes"}, 400, "stream"),
        ({**BODY, "model": "no-such-model"}, 404, "model"),
        ({**BODY, "max_tokens": 5000}, 400, "messages"),  # above the target's 1000 output
        ({**BODY, "response_format": {"type": "json_schema", "json_schema": "oops"}}, 400,
         "response_format"),
        ({**BODY, "response_format": {"type": "yaml"}}, 400, "response_format"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_clear_error_naming_the_field_and_holds_nothing(
    live: Live, body: dict[str, Any], status: int, param: str
) -> None:
    key = await live.agent_key()
    r = await post(live, key, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    count = await live.app.state.services.db.fetch_val("SELECT COUNT(*) FROM holds")
    assert count == 0


async def test_a_key_without_llm_chat_is_refused(live: Live) -> None:
    r = await live.client.post("/v1/keys", json={"scopes": ["receipts:read"]},
                               headers={**live.auth(), "Idempotency-Key": "k"})  # fmt: skip
    r = await post(live, r.json()["secret"], BODY)
    assert r.status_code == 403 and r.json()["error"]["required_scope"] == "llm:chat"


async def test_models_lists_lanes_aliases_and_targets_at_our_prices(live: Live) -> None:
    key = await live.agent_key()
    r = await live.client.get("/v1/models", headers=live.auth(key))
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["data"]}
    assert {"premium", "breadth", "low-cost", "lane"} <= set(models)
    assert models["lane"]["targets"] == ["sb/sandbox-model"]
    # $1 per million from the provider, marked up 20%: the customer's price, not the cost.
    assert models["sb/sandbox-model"]["pricing"]["input_usd_per_mtok"] == "1.2"


# --- a client that hangs up -------------------------------------------------------------------


class SlowUpstream:
    """An OpenAI-protocol upstream streaming one word every 50 ms for 30 s, which records how
    much it sent and when its stream was closed."""

    def __init__(self) -> None:
        self.sent = 0
        self.closed = asyncio.Event()
        self.closed_at = 0.0

    async def handle(self, request: Request) -> StreamingResponse:
        async def words() -> AsyncIterator[bytes]:
            try:
                for _ in range(600):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0,
                             "model": "slow", "choices": [{"index": 0, "delta":
                             {"content": "word "}, "finish_reason": None}]}  # fmt: skip
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    self.sent += 1
                    await asyncio.sleep(0.05)
            finally:
                self.closed_at = time.monotonic()
                self.closed.set()

        return StreamingResponse(words(), media_type="text/event-stream")


async def test_a_client_disconnect_closes_the_upstream_and_settles_what_was_delivered(
    settings: Settings, tmp_path: Path
) -> None:
    upstream = SlowUpstream()
    file = models_file(tmp_path, {"slow": ("openai", None)}, {"lane": ["slow"]})
    async with loopback_upstream(upstream.handle) as base_url:
        point_provider(file, "slow", base_url)
        async with live_server(settings.with_(models_file=str(file))) as live:
            key = await live.agent_key()
            body = {**BODY, "stream": True, "max_tokens": 1000}
            async with live.client.stream("POST", "/v1/chat/completions", json=body,
                                          headers=live.auth(key)) as r:  # fmt: skip
                assert r.status_code == 200
                receipt_id = r.headers["ToolCall-Receipt-Id"]
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen == 3:
                        break
            hung_up = time.monotonic()
            # Leaving the block hung up; the gateway must close its upstream stream, within
            # 1 s (the bound; in practice milliseconds).
            await asyncio.wait_for(upstream.closed.wait(), 10)
            assert upstream.closed_at - hung_up < 1.0
            assert upstream.sent < 100  # of 600: it was stopped, not drained
            receipt = await wait_for_receipt(live, receipt_id)
            (attempt,) = receipt["attempts"]
            assert attempt["outcome"] == "cancelled"
            assert receipt["usage"]["incomplete"] is True
            assert receipt["amount_usd"] != "0.000000"  # the words delivered are charged
            await live.balanced()


async def wait_for_receipt(live: Live, receipt_id: str) -> dict[str, Any]:
    for _ in range(200):
        r = await live.client.get(f"/v1/receipts/{receipt_id}", headers=live.auth())
        if r.status_code == 200:
            body: dict[str, Any] = r.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"receipt {receipt_id} was never written")


async def test_quotes_use_a_fresh_live_price_and_say_so_else_models_json(live: Live) -> None:
    svc = live.app.state.services
    key = await live.agent_key()
    body = {**BODY, "model": "openrouter/google/gemini-3.8-flash"}

    async def quoted() -> dict[str, Any]:
        headers = {**live.auth(key), "Idempotency-Key": secrets.token_hex(8)}
        quote = {"tool": "llm.chat", "params": body}
        r = await live.client.post("/v1/quotes", json=quote, headers=headers)
        assert r.status_code == 200, r.text
        breakdown: dict[str, Any] = r.json()["breakdown"]
        return breakdown

    before = await quoted()
    assert before["price_source"] == "models.json"
    # Our prices (the provider's 0.75 and, fresh, 0.7 USD, marked up 20%): a quote is the
    # tenant's to read, and the provider's price stays the operator's.
    assert before["lines"][0]["input_usd_per_mtok"] == "0.9"
    assert await refresh_prices(svc.db, svc.http, svc.settings.price_source(), svc.lanes) >= 1
    await svc.prices.load(svc.db)
    fresh = await quoted()
    assert fresh["price_source"].startswith("openrouter@")
    assert fresh["lines"][0]["input_usd_per_mtok"] == "0.84"  # the snapshot's 0.0000007/token
    r = await post(live, key, body)  # the call itself is priced the same way
    assert r.status_code == 200, r.text

    async def listed() -> dict[str, Any]:  # and GET /v1/models shows that same price
        models = (await live.client.get("/v1/models", headers=live.auth(key))).json()["data"]
        model = next(m for m in models if m["id"] == body["model"])
        pricing: dict[str, Any] = model["pricing"]
        return pricing

    assert (await listed())["input_usd_per_mtok"] == "0.84"
    assert (await listed())["price_source"].startswith("openrouter@")
    async with svc.db.transaction() as tx:
        await tx.execute("UPDATE provider_prices SET fetched_at = 0")
    await svc.prices.load(svc.db)
    assert (await quoted())["price_source"] == "models.json"  # too old: the fallback
    assert ((await listed())["input_usd_per_mtok"], (await listed())["price_source"]) == (
        "0.9", "models.json")  # fmt: skip
    await live.balanced()


async def test_clients_hanging_up_around_settlement_leave_no_call_open(live: Live) -> None:
    key = await live.agent_key()
    body = {**BODY, "stream": True, "max_tokens": 3}

    async def hang_up(after: int) -> None:
        async with live.client.stream("POST", "/v1/chat/completions", json=body,
                                      headers=live.auth(key)) as r:  # fmt: skip
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= after:
                    break

    await asyncio.gather(*(hang_up(after) for after in [1, 2, 3, 4, 5] * 8))
    db = live.app.state.services.db
    for _ in range(100):
        running = await db.fetch_val("SELECT COUNT(*) FROM executions WHERE state = 'running'")
        if running == 0:
            break
        await asyncio.sleep(0.05)
    assert running == 0
    assert await db.fetch_val("SELECT COUNT(*) FROM receipts") == 40
    await live.balanced()


async def test_the_catalog_lists_llm_chat_priced_by_tokens(live: Live) -> None:
    key = await live.agent_key()
    r = await live.client.get("/v1/tools", headers=live.auth(key))
    assert r.status_code == 200
    tool = next(t for t in r.json()["data"] if t["name"] == "llm.chat")
    assert tool["scope"] == "llm:chat" and tool["risk"] == "low" and tool["mode"] == "sync"
    assert tool["price"]["basis"] == "per_token"
    assert "GET /v1/models" in tool["price"]["description"]
    assert "0.20" not in tool["price"]["description"]  # the markup would reveal provider costs


async def test_a_finished_call_leaves_nothing_for_the_cycle_collector(live: Live) -> None:
    # What a call built (its race, attempts, events, the upstream response) is freed by
    # reference counting as soon as it ends; cycles would wait for the collector, which at
    # load cost the gateway ~9% of its CPU. DEBUG_SAVEALL keeps what the collector would free.
    from toolcallstore.lanes.router import LaneCall, _Race

    key = await live.agent_key()
    await post(live, key, BODY)  # warm
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for stream in (False, True, False, True):
            r = await post(live, key, {**BODY, "stream": stream})
            assert r.status_code == 200, r.text
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, LaneCall | _Race | AiohttpResponseStream)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []


async def test_a_gemini_3_tool_round_trip_passes_its_signature_check(
    settings: Settings, tmp_path: Path
) -> None:
    # Gemini 3 refuses a function call in the history without its thoughtSignature, which an
    # OpenAI-format client cannot send back (the sandbox refuses it as Gemini does).
    file = models_file(tmp_path, {"g3": ("gemini", None)}, {"lane": ["g3"]})
    data = orjson.loads(file.read_bytes())
    data["models"]["g3/sandbox-model"]["model"] = "gemini-3.5-pro"
    file.write_bytes(orjson.dumps(data))
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    async with live_server(settings.with_(models_file=str(file))) as live:
        key = await live.agent_key()

        async def ask() -> dict[str, Any]:
            body = {"model": "lane", "messages": messages, "tools": tools, "max_tokens": 100}
            r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
            assert r.status_code == 200, r.text
            message: dict[str, Any] = r.json()["choices"][0]["message"]
            return message

        asked = await ask()
        call = asked["tool_calls"][0]
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 21}'},
        ]
        answered = await ask()
    assert answered["content"].startswith("Sandbox received the tool result")


@pytest.mark.parametrize(("per_mtok", "runs"), [(("0.5", "1"), True), (("10", "20"), False)])
async def test_a_quoted_call_stays_within_its_hold_whatever_prices_did_since(
    live: Live, per_mtok: tuple[str, str], runs: bool
) -> None:
    svc = live.app.state.services
    key = await live.agent_key(auto_quote_max_usd=None)
    headers = {**live.auth(key), "Idempotency-Key": secrets.token_hex(8)}
    r = await live.client.post("/v1/quotes", json={"tool": "llm.chat", "params": BODY},
                               headers=headers)  # fmt: skip
    quote = r.json()
    async with svc.db.transaction() as tx:  # a price refresh after the quote: half, or 10x
        await tx.execute(
            "INSERT INTO provider_prices (target_id, source, input_usd_per_mtok,"
            " output_usd_per_mtok, fetched_at) VALUES ('sb/sandbox-model', 'openrouter',"
            " :i, :o, :t)",
            {"i": per_mtok[0], "o": per_mtok[1], "t": int(time.time() * 1_000_000)},
        )
    await svc.prices.load(svc.db)
    r = await post(live, key, {**BODY, "quote_id": quote["id"]})
    if runs:
        assert r.status_code == 200, r.text
        receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
        assert r.json()["toolcall"]["cost_usd"] == receipt["amount_usd"]
        assert float(receipt["amount_usd"]) <= float(quote["max_cost_usd"])
    else:  # its hold cannot pay for the call any more: refused before anything is held
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("quote_stale", "quote_id")
        assert float(error["minimum_usd"]) > float(quote["max_cost_usd"])
        assert await svc.db.fetch_val("SELECT count(*) FROM holds") == 0
    await live.balanced()
