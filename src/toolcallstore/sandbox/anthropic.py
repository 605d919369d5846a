"""The Anthropic Messages fake: `POST /anthropic/v1/messages`.

A model whose name ends in `-t1` plays one of the models that accept only temperature 1.0:
any other temperature is refused with a 400, as those models refuse it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from toolcallstore.sandbox.endpoint import ErrorText, bad_request, json_response
from toolcallstore.sandbox.faults import ErrorCode
from toolcallstore.sandbox.replies import Conversation, LastKind, Tool, Turn, json_text
from toolcallstore.sandbox.streams import Framing, StreamPlan

ONLY_TEMPERATURE_1 = "-t1"  # the name suffix of models that refuse any other temperature
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS_TEXTS = {
    429: ErrorText("Number of request tokens has exceeded your per-minute rate limit (sandbox)."),
    500: ErrorText("Internal server error"),
    529: ErrorText("Overloaded"),
}
_CODE_TEXTS: dict[ErrorCode, ErrorText] = {
    "context_length_exceeded": ErrorText("prompt is too long: 210000 tokens > 200000 maximum"),
    "content_policy": ErrorText("Output blocked by content filtering policy"),
}
_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _event(body: Mapping[str, Any]) -> bytes:
    name: str = body["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _blocks_text(content: Any) -> str:
    """The text of a content string or block list: text, tool_use input, tool_result content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    text = ""
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text += block["text"]
        elif kind == "tool_use":
            text += json_text(block.get("input", {}))
        elif kind == "tool_result":
            text += _blocks_text(block.get("content", ""))
    return text


def _is_tool_result(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(block, Mapping) and block.get("type") == "tool_result" for block in content
    )


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise bad_request(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    last = messages[-1]
    if last["role"] == "assistant":  # a prefill, as the real API checks it
        content = last.get("content")
        text = content if isinstance(content, str) else _blocks_text(content)
        if text != text.rstrip():
            raise bad_request(
                "messages: final assistant content cannot end with trailing whitespace"
            )
    return messages


def _sampling(body: Mapping[str, Any], model: str) -> None:
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or not 0 <= temperature <= 1
    ):
        raise bad_request("temperature: Input should be less than or equal to 1")
    if model.endswith(ONLY_TEMPERATURE_1) and temperature not in (None, 1):
        raise bad_request(f"temperature: {model} only supports temperature 1.0")


def _tools(body: Mapping[str, Any]) -> list[Tool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_request("tools: Input should be a valid list")
    found = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise bad_request(f"tools.{index}.name: Field required")
        schema = tool.get("input_schema")
        found.append(Tool(tool["name"], schema if isinstance(schema, Mapping) else {}))
    return found


def _max_tokens(body: Mapping[str, Any]) -> int:
    value = body.get("max_tokens")
    if value is None:
        raise bad_request("max_tokens: Field required")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request("max_tokens: Input should be greater than or equal to 1")
    return value


def _last(messages: list[Mapping[str, Any]]) -> tuple[LastKind, str, str]:
    """The kind of the last message, the last user text, and the prefill (if that is last)."""
    last = messages[-1]
    if last["role"] == "user" and _is_tool_result(last):
        return "tool_result", _blocks_text(last["content"]), ""
    kind: LastKind = "user" if last["role"] == "user" else "prefill"
    prefill = _blocks_text(last.get("content")) if kind == "prefill" else ""
    users = [m for m in messages if m["role"] == "user"]
    return kind, _blocks_text(users[-1].get("content")) if users else "", prefill


class AnthropicDialect:
    framing = Framing(
        error=_event(_OVERLOADED),
        keepalive=_event({"type": "ping"}),
        malformed=b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,\n\n',
    )
    unauthenticated_status = 401
    unauthenticated = ErrorText("x-api-key header is required")
    bad_json = ErrorText("There was an error parsing the body of your request as JSON.")

    def authenticated(self, request: Request) -> bool:
        return bool(request.headers.get("x-api-key", "").strip())

    def error(
        self,
        status: int,
        text: ErrorText | None = None,
        *,
        code: ErrorCode | None = None,
        retry_after: float | None = None,
    ) -> Response:
        if text is None:
            text = _CODE_TEXTS[code] if code else _STATUS_TEXTS.get(status, ErrorText(""))
        message = text.message or f"Sandbox fault: HTTP {status}."
        error = {"type": text.type or _error_type(status), "message": message}
        headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
        return json_response({"type": "error", "error": error}, status, headers)

    def conversation(self, body: dict[str, Any], request: Request) -> Conversation:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("model: Field required")
        max_tokens = _max_tokens(body)
        messages = _messages(body)
        _sampling(body, model)
        tools = _tools(body)
        texts = [_blocks_text(message.get("content")) for message in messages]
        if body.get("system") is not None:
            texts.insert(0, _blocks_text(body["system"]))
        choice = body.get("tool_choice")
        choice = choice if isinstance(choice, Mapping) else {}
        last_kind, last_text, prefill = _last(messages)
        return Conversation(
            model=model,
            message_texts=texts,
            last_kind=last_kind,
            last_text=last_text,
            prefill=prefill,
            max_tokens=max_tokens,
            tools=tools,
            tools_json=json_text(body["tools"]) if tools else "",
            tools_enabled=choice.get("type") != "none",
            forced_tool=choice.get("name") if choice.get("type") == "tool" else None,
            mode="sse" if body.get("stream") is True else "json",
        )

    def answer(self, turn: Turn) -> Any:
        reply = turn.reply
        if reply.tool_call:
            tool = reply.tool_call
            input_ = orjson.loads(tool.arguments)
            block = {"type": "tool_use", "id": _tool_id(turn), "name": tool.name, "input": input_}
        else:
            block = {"type": "text", "text": reply.text}
        body = _message(turn, [block], STOP_REASONS[reply.finish])
        if not turn.faults.no_usage:
            body["usage"] = _usage(turn, turn.reply.completion_tokens)
        return body

    def plan(self, turn: Turn) -> StreamPlan:
        reply = turn.reply
        start = _message(turn, [], None)
        delta: dict[str, Any] = {"stop_reason": STOP_REASONS[reply.finish], "stop_sequence": None}
        message_delta: dict[str, Any] = {"type": "message_delta", "delta": delta}
        if not turn.faults.no_usage:
            start["usage"] = _usage(turn, 1)
            message_delta["usage"] = {"output_tokens": reply.completion_tokens}
        block: dict[str, Any]
        if reply.tool_call:
            call = reply.tool_call
            block = {"type": "tool_use", "id": _tool_id(turn), "name": call.name, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": fragment}
                for fragment in reply.tool_call.fragments
            ]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": chunk} for chunk in reply.chunks]
        return StreamPlan(
            head=[
                _event({"type": "message_start", "message": start}),
                _event({"type": "content_block_start", "index": 0, "content_block": block}),
                _event({"type": "ping"}),
            ],
            content=[
                _event({"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas
            ],
            finish=[_event({"type": "content_block_stop", "index": 0}), _event(message_delta)],
            terminal=[_event({"type": "message_stop"})],
        )


def _tool_id(turn: Turn) -> str:
    return f"toolu_sandbox_{turn.serial}"


def _message(turn: Turn, content: list[Any], stop_reason: str | None) -> dict[str, Any]:
    return {
        "id": f"msg_sandbox_{turn.serial}",
        "type": "message",
        "role": "assistant",
        "model": turn.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }


def _usage(turn: Turn, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": turn.reply.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }
