"""A plain call on a lane of one target asks its upstream for the whole answer (issue 21): there
is nothing to hedge or resume, so streaming it only to assemble it again is wasted work. Streamed
calls, and plain calls on lanes that can hedge, still stream from the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.chat.helpers import (
    Live,
    live_server,
    loopback_upstream,
    models_file,
    point_provider,
    price_micros,
    sse_payloads,
    target_id,
)
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

MESSAGES = [{"role": "user", "content": "hello"}]
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


class Upstream:
    """An OpenAI-protocol provider answering as OpenAI does: whole when `stream` is absent or
    false, as SSE otherwise. It remembers each request body; `plain_answer` overrides the whole
    answer's bytes."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.message: dict[str, Any] = {"role": "assistant", "content": "the whole answer"}
        self.finish = "stop"
        self.plain_answer: bytes | None = None

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        if not body.get("stream"):
            if self.plain_answer is not None:
                return Response(self.plain_answer, media_type="application/json")
            choice = {"index": 0, "message": self.message, "finish_reason": self.finish}
            completion = {"id": "chatcmpl-up", "object": "chat.completion", "choices": [choice],
                          "usage": USAGE}  # fmt: skip
            return Response(orjson.dumps(completion), media_type="application/json")

        async def events() -> AsyncIterator[bytes]:
            for word in ("the ", "whole ", "answer"):
                chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield b"data: " + orjson.dumps(end) + b"\n\n"
            yield b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
async def setup(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Live, Upstream]]:
    upstream = Upstream()
    file = models_file(
        tmp_path,
        {"up": ("openai", None), "other": ("openai", None)},
        {"solo": ["up"], "pair": ["up", "other"]},
    )
    async with loopback_upstream(upstream.handle) as base_url:
        point_provider(file, "up", base_url)
        point_provider(file, "other", base_url)
        async with live_server(settings.with_(models_file=str(file))) as live:
            yield live, upstream


async def call(live: Live, key: str, model: str, **extra: Any) -> Any:
    body = {"model": model, "messages": MESSAGES, "max_tokens": 50, **extra}
    return await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))


async def test_a_plain_call_on_a_lane_of_one_target_asks_for_the_whole_answer(
    setup: tuple[Live, Upstream],
) -> None:
    live, upstream = setup
    key = await live.agent_key()
    r = await call(live, key, "solo")
    assert r.status_code == 200, r.text
    sent = upstream.bodies[-1]
    assert "stream" not in sent and "stream_options" not in sent
    completion = r.json()
    assert completion["choices"][0]["message"]["content"] == "the whole answer"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["prompt_tokens"] == 12
    assert completion["usage"]["completion_tokens"] == 7
    assert completion["model"] == target_id("up")
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == micros_to_usd(price_micros(12, 7))
    await live.balanced()


async def test_streamed_calls_and_lanes_that_can_hedge_still_stream_upstream(
    setup: tuple[Live, Upstream],
) -> None:
    live, upstream = setup
    key = await live.agent_key()
    r = await call(live, key, "solo", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200, r.text
    assert upstream.bodies[-1]["stream"] is True
    text = "".join(
        p["choices"][0]["delta"].get("content") or ""
        for p in sse_payloads(r.content)
        if isinstance(p, dict) and p.get("choices")
    )
    assert text == "the whole answer"
    r = await call(live, key, "pair")  # two targets: a hedge needs the first token's time
    assert r.status_code == 200, r.text
    assert upstream.bodies[-1]["stream"] is True
    assert r.json()["choices"][0]["message"]["content"] == "the whole answer"
    await live.balanced()


async def test_a_whole_answer_with_tool_calls_reaches_the_caller_as_sent(
    setup: tuple[Live, Upstream],
) -> None:
    live, upstream = setup
    upstream.message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q": "a"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "fetch", "arguments": '{"url": "b"}'}},
        ],
    }  # fmt: skip
    upstream.finish = "tool_calls"
    key = await live.agent_key()
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("lookup", "fetch")]  # fmt: skip
    r = await call(live, key, "solo", tools=tools)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
             for c in choice["message"]["tool_calls"]]  # fmt: skip
    assert calls == [("call_1", "lookup", {"q": "a"}), ("call_2", "fetch", {"url": "b"})]
    await live.balanced()


@pytest.mark.parametrize(
    "answer",
    [b"data: not json\n\n", b'{"choices": []}', b'{"choices": [{"message": {"content": 7}}]}'],
    ids=["sse-bytes", "no-choice", "wrong-type"],
)
async def test_an_unreadable_whole_answer_charges_nothing_and_says_so(
    setup: tuple[Live, Upstream], answer: bytes
) -> None:
    live, upstream = setup
    upstream.plain_answer = answer
    key = await live.agent_key()
    r = await call(live, key, "solo")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "all_providers_failed"
    assert [a["error"]["code"] for a in error["attempts"]] == ["malformed_answer"]
    assert error["toolcall"]["cost_usd"] == "0.000000"
    receipt = await live.receipt(r.headers["ToolCall-Receipt-Id"])
    assert receipt["amount_usd"] == "0.000000"
    await live.balanced()
