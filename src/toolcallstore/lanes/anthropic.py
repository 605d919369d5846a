"""Anthropic Messages: OpenAI-shaped requests in, named SSE events out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from toolcallstore.lanes.base import (
    ChatRequest,
    Done,
    Event,
    Finish,
    FinishReason,
    Target,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from toolcallstore.lanes.openai_compat import (
    body_message,
    code_for_status,
    content_text,
    header,
    image_url,
    json_object,
    load_json,
    split_data_url,
    stream_cut,
    stream_error,
    upstream_error,
)
from toolcallstore.lanes.sse import JSONEventParser, as_int

API_VERSION = "2023-06-01"

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}


class Anthropic:
    name = "anthropic"

    def build(self, target: Target, request: ChatRequest, api_key: str) -> UpstreamRequest:
        system, messages = _messages(request.messages)
        body: dict[str, Any] = {
            "model": target.model,
            "max_tokens": request.max_tokens,
            "stream": True,
        }
        if system:
            body["system"] = system
        body["messages"] = messages
        if request.tools:
            body["tools"] = [_tool(tool["function"]) for tool in request.tools]
            choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
            if choice:
                body["tool_choice"] = choice
        if request.stop:
            body["stop_sequences"] = request.stop
        # Anthropic's temperature runs 0-1 where OpenAI's runs 0-2 (its maximum, 1, is the most
        # varied), and recent models refuse temperature and top_p together: temperature wins.
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
        elif request.top_p is not None:
            body["top_p"] = request.top_p
        if request.user:
            body["metadata"] = {"user_id": request.user}
        return UpstreamRequest(
            method="POST",
            url=f"{target.base_url.rstrip('/')}/messages",
            headers={
                "x-api-key": api_key,
                "anthropic-version": API_VERSION,
                "content-type": "application/json",
            },
            body=body,
        )

    def parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        payload = load_json(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return upstream_error(
                status, headers, code_for_status(status), body_message(status, body)
            )
        message = str(error.get("message") or body_message(status, body))
        details = {"type": error["type"]} if error.get("type") else {}
        request_id = header(headers, "request-id")
        if request_id:
            details["request_id"] = request_id
        return upstream_error(status, headers, _error_code(status, message), message, details)


def _error_code(status: int, message: str) -> str:
    code = code_for_status(status)
    if code != "invalid_request":
        return code
    lowered = message.lower()
    if "prompt is too long" in lowered or "exceed context limit" in lowered:
        return "context_length_exceeded"
    if "content filtering policy" in lowered:  # a refusal: no other target is tried
        return "content_policy"
    if "credit balance is too low" in lowered:  # a 400, but it is the account, not the request
        return "quota_exceeded"
    return code


# --- request ---------------------------------------------------------------------------------


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt, and the turns merged so that user and assistant alternate."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = content_text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            role, blocks = "user", _content_blocks(message.get("content"))
        if not blocks:  # Anthropic rejects empty turns; dropping one keeps alternation
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if turns and turns[-1]["role"] == "assistant":
        # A prefill (an answer to continue) may not end in whitespace: Anthropic refuses it.
        blocks = turns[-1]["content"]
        if blocks[-1].get("type") == "text":
            blocks[-1]["text"] = blocks[-1]["text"].rstrip()
            if not blocks[-1]["text"]:
                blocks.pop()
                if not blocks:
                    turns.pop()
    return "\n\n".join(system), turns


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": _image_source(image_url(part))})
    return blocks


def _image_source(url: str) -> dict[str, str]:
    inline = split_data_url(url)
    if inline:  # Anthropic fetches http(s) URLs only; inline images travel as base64
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    return {"type": "url", "url": url}


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = _content_blocks(message.get("content"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": json_object(function.get("arguments")),
            }
        )
    return blocks


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    content = message.get("content")
    if isinstance(content, list):
        content = _content_blocks(content)
    if content:
        block["content"] = content
    return block


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        tool["description"] = function["description"]
    # Anthropic requires a schema; OpenAI lets a tool without parameters omit it.
    tool["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return tool


def _tool_choice(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    result: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        result = {"type": _TOOL_CHOICE[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        result = {"type": "tool", "name": choice["function"]["name"]}
    if parallel is False:
        if result is None:
            result = {"type": "auto"}
        if result["type"] != "none":  # the flag does not exist on "none"
            result["disable_parallel_tool_use"] = True
    return result


# --- response --------------------------------------------------------------------------------


class AnthropicStreamParser(JSONEventParser):
    def __init__(self) -> None:
        super().__init__()
        # Anthropic numbers content blocks (text and tool_use together); OpenAI numbers calls.
        self._tool_index: dict[int, int] = {}

    def take(self, event: str, data: str, out: list[Event]) -> None:
        payload = orjson.loads(data)
        if event == "message":  # a proxy dropped the event names: the payload repeats them
            event = payload.get("type", "")
        if event == "content_block_delta":
            self._take_delta(payload, out)
        elif event == "content_block_start":
            self._take_block_start(payload, out)
        elif event == "message_start":
            # Its output_tokens is a placeholder (1): the count comes with message_delta. Kept,
            # a stream cut before that would cost its delivered words as one token.
            usage = _usage(payload["message"].get("usage"))
            if usage and usage.input_tokens is not None:
                out.append(Usage(usage.input_tokens, None))
        elif event == "message_delta":
            _take_message_delta(payload, out)
        elif event == "message_stop":
            out.append(Done())
        elif event == "error":
            out.append(stream_error(payload.get("error")))
        # ping, content_block_stop and events added later carry nothing we forward

    def finish(self, out: list[Event]) -> None:
        # A stop reason without message_stop is a complete answer whose last event was lost.
        if not self.done and not self.finished and not self.failed:
            out.append(stream_cut())

    def _take_block_start(self, payload: dict[str, Any], out: list[Event]) -> None:
        block = payload["content_block"]
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            out.append(TextDelta(block["text"]))
        elif kind == "tool_use":
            index = len(self._tool_index)
            self._tool_index[payload["index"]] = index
            given = block.get("input")  # `{}` when streamed; whole only from some proxies
            arguments = orjson.dumps(given).decode() if given else ""
            out.append(ToolCallDelta(index, block.get("id"), block.get("name"), arguments))

    def _take_delta(self, payload: dict[str, Any], out: list[Event]) -> None:
        delta = payload["delta"]
        kind = delta.get("type")
        if kind == "text_delta":
            if delta["text"]:
                out.append(TextDelta(delta["text"]))
        elif kind == "input_json_delta":
            index = self._tool_index.get(payload["index"])
            if index is not None and delta["partial_json"]:
                out.append(ToolCallDelta(index, arguments=delta["partial_json"]))
        # thinking, signature and citation deltas are not part of the OpenAI answer


def _take_message_delta(payload: dict[str, Any], out: list[Event]) -> None:
    usage = _usage(payload.get("usage"))
    if usage:
        out.append(usage)
    reason = (payload.get("delta") or {}).get("stop_reason")
    if reason:
        out.append(Finish(_FINISH.get(reason, "stop"), raw=reason))


def _usage(usage: Any) -> Usage | None:
    """Usage with input counted as OpenAI counts prompt tokens: cache reads and writes included."""
    if not usage:
        return None
    input_tokens = as_int(usage.get("input_tokens"))
    if input_tokens is not None:
        for cached in ("cache_creation_input_tokens", "cache_read_input_tokens"):
            input_tokens += as_int(usage.get(cached)) or 0
    output_tokens = as_int(usage.get("output_tokens"))
    if input_tokens is None and output_tokens is None:
        return None
    return Usage(input_tokens, output_tokens)
