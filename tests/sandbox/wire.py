"""The three protocols from the client side: one request shape and one stream summary per
protocol, so a fault test can run against all three; sample tool definitions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city"],
}
WEATHER_ARGS = {"city": "sandbox", "days": 1, "metric": True, "unit": "c"}
LOOKUP_SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}}

OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP_SCHEMA}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "input_schema": WEATHER_SCHEMA},
    {"name": "lookup", "input_schema": LOOKUP_SCHEMA},
]
GEMINI_TOOLS = [
    {
        "functionDeclarations": [
            {"name": "get_weather", "parameters": WEATHER_SCHEMA},
            {
                "name": "lookup",
                "parameters": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}},
            },
        ]
    }
]


def tokens(text: str) -> int:
    """The documented rule, restated independently of the implementation."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# --- a reader per protocol: one request shape, one stream summary -----------------------------


@dataclass
class Stream:
    content: list[str] = field(default_factory=list)  # one entry per content chunk
    finish: str | None = None
    terminal: bool = False
    usage: tuple[int, int] | None = None  # (prompt, completion)
    errors: list[Any] = field(default_factory=list)
    keepalives: int = 0
    malformed: list[int] = field(default_factory=list)  # content chunks seen before each
    order: list[str] = field(default_factory=list)  # event names / frame kinds in order


def frames(raw: str) -> list[tuple[str | None, str | None, str | None]]:
    """(event, data, comment) per SSE frame."""
    out = []
    for block in re.split(r"\r?\n\r?\n", raw):
        if not block.strip():
            continue
        event = data = comment = None
        for line in block.splitlines():
            if line.startswith(":"):
                comment = line[1:].strip()
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        out.append((event, data, comment))
    return out


def load(data: str | None) -> Any:
    try:
        return orjson.loads(data or "")
    except orjson.JSONDecodeError:
        return None


class OpenAI:
    name = "openai"
    model = "gpt-4o-mini"
    finishes = {"stop": "stop", "length": "length", "tool": "tool_calls"}
    error_status = 503

    def url(self, *, stream: bool, spec: str | None = None) -> str:
        return (f"/fault/{spec}" if spec else "") + "/openai/v1/chat/completions"

    headers = {"authorization": "Bearer sk-sandbox"}

    def body(self, text: str, *, stream: bool, max_tokens: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if max_tokens:
            body["max_tokens"] = max_tokens
        return body

    def read(self, raw: str) -> Stream:
        out = Stream()
        for _, data, comment in frames(raw):
            if comment == "keep-alive":
                out.keepalives += 1
            elif data == "[DONE]":
                out.terminal = True
            elif (chunk := load(data)) is None:
                out.malformed.append(len(out.content))
            elif "error" in chunk:
                out.errors.append(chunk["error"])
            else:
                self._chunk(chunk, out)
        return out

    def _chunk(self, chunk: dict[str, Any], out: Stream) -> None:
        if chunk.get("usage"):
            out.usage = (chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
        if not chunk["choices"]:
            return
        choice = chunk["choices"][0]
        delta = choice["delta"]
        out.finish = choice["finish_reason"] or out.finish
        if delta.get("content"):
            out.content.append(delta["content"])
        elif delta.get("tool_calls") and "id" not in delta["tool_calls"][0]:
            out.content.append(delta["tool_calls"][0]["function"]["arguments"])

    def answer_text(self, body: Any) -> str:
        return str(body["choices"][0]["message"]["content"])

    def error(self, body: Any) -> tuple[str, str]:
        """(type, message) of an error body, whose shape is checked."""
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return error["type"], error["message"]

    def answer_usage(self, body: Any) -> tuple[int, int] | None:
        usage = body.get("usage")
        return (usage["prompt_tokens"], usage["completion_tokens"]) if usage else None


class Anthropic:
    name = "anthropic"
    model = "claude-sonnet-4-5"
    finishes = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}
    error_status = 529

    def url(self, *, stream: bool, spec: str | None = None) -> str:
        return (f"/fault/{spec}" if spec else "") + "/anthropic/v1/messages"

    headers = {"x-api-key": "sk-ant-sandbox", "anthropic-version": "2023-06-01"}

    def body(self, text: str, *, stream: bool, max_tokens: int | None = None) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": max_tokens or 1024,
            "messages": [{"role": "user", "content": text}],
            "stream": stream,
        }

    def read(self, raw: str) -> Stream:
        out = Stream()
        prompt = 0
        for event, data, _ in frames(raw):
            body = load(data)
            if body is None:
                out.malformed.append(len(out.content))
                continue
            out.order.append(str(event))
            if event == "ping":
                out.keepalives += 1
            elif event == "message_start":
                prompt = body["message"].get("usage", {}).get("input_tokens", 0)
            elif event == "content_block_delta":
                delta = body["delta"]
                out.content.append(delta.get("text") or delta.get("partial_json"))
            elif event == "message_delta":
                out.finish = body["delta"]["stop_reason"]
                if "usage" in body:
                    out.usage = (prompt, body["usage"]["output_tokens"])
            elif event == "message_stop":
                out.terminal = True
            elif event == "error":
                out.errors.append(body["error"])
        out.keepalives -= 1  # the one ping every stream has after content_block_start
        return out

    def answer_text(self, body: Any) -> str:
        return str(body["content"][0]["text"])

    def error(self, body: Any) -> tuple[str, str]:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        return body["error"]["type"], body["error"]["message"]

    def answer_usage(self, body: Any) -> tuple[int, int] | None:
        usage = body.get("usage")
        return (usage["input_tokens"], usage["output_tokens"]) if usage else None


class Gemini:
    name = "gemini"
    model = "gemini-2.5-flash"
    finishes = {"stop": "STOP", "length": "MAX_TOKENS", "tool": "STOP"}
    error_status = 503

    def url(self, *, stream: bool, spec: str | None = None) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return (f"/fault/{spec}" if spec else "") + f"/gemini/v1beta/models/{self.model}:{method}"

    headers = {"x-goog-api-key": "AIza-sandbox"}

    def body(self, text: str, *, stream: bool, max_tokens: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        if max_tokens:
            body["generationConfig"] = {"maxOutputTokens": max_tokens}
        return body

    def read(self, raw: str) -> Stream:
        out = Stream()
        assert "\n\n" not in raw.replace("\r\n\r\n", ""), "Gemini frames end in CRLF CRLF"
        for _, data, comment in frames(raw):
            if comment == "keep-alive":
                out.keepalives += 1
            elif (body := load(data)) is None:
                out.malformed.append(len(out.content))
            elif "error" in body:
                out.errors.append(body["error"])
            else:
                self._frame(body, out)
        out.terminal = out.finish is not None  # Gemini's end is the finishing frame
        return out

    def _frame(self, body: dict[str, Any], out: Stream) -> None:
        candidate = body["candidates"][0]
        for part in candidate["content"]["parts"]:
            if part.get("text"):
                out.content.append(part["text"])
            elif "functionCall" in part:
                out.content.append(dumps(part["functionCall"]["args"]))
        out.finish = candidate.get("finishReason")
        usage = body.get("usageMetadata", {})
        if "candidatesTokenCount" in usage:
            out.usage = (usage["promptTokenCount"], usage["candidatesTokenCount"])

    def answer_text(self, body: Any) -> str:
        return str(body["candidates"][0]["content"]["parts"][0]["text"])

    def error(self, body: Any) -> tuple[str, str]:
        error = body["error"]
        assert set(error) - {"details"} == {"code", "message", "status"}
        assert isinstance(error["code"], int)
        return error["status"], error["message"]

    def answer_usage(self, body: Any) -> tuple[int, int] | None:
        usage = body.get("usageMetadata")
        return (usage["promptTokenCount"], usage["candidatesTokenCount"]) if usage else None


Proto = OpenAI | Anthropic | Gemini
PROTOS = [OpenAI(), Anthropic(), Gemini()]


async def stream(
    client: httpx.AsyncClient, proto: Proto, spec: str | None = None, text: str = "hello world"
) -> tuple[httpx.Response, Stream]:
    body = proto.body(text, stream=True)
    response = await client.post(
        proto.url(stream=True, spec=spec), json=body, headers=proto.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return response, proto.read(response.text)


async def answer(
    client: httpx.AsyncClient, proto: Proto, spec: str | None = None
) -> httpx.Response:
    body = proto.body("hello world", stream=False)
    return await client.post(proto.url(stream=False, spec=spec), json=body, headers=proto.headers)
