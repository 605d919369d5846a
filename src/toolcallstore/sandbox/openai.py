"""The OpenAI Chat Completions fake: `POST /openai/v1/chat/completions`."""

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

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
FINGERPRINT = "fp_sandbox"

_STATUS_TEXTS = {
    429: ErrorText(
        "Rate limit reached for requests (sandbox fault). Please try again later.",
        code="rate_limit_exceeded",
        type="requests",
    ),
    500: ErrorText("The server had an error while processing your request. Sorry about that!"),
    503: ErrorText("The engine is currently overloaded, please try again later."),
}
_CODE_TEXTS: dict[ErrorCode, ErrorText] = {
    "context_length_exceeded": ErrorText(
        "This model's maximum context length is 128000 tokens. However, your messages resulted"
        " in 131072 tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
        param="messages",
    ),
    "content_policy": ErrorText(
        "Your request was rejected as a result of our safety system. Your prompt may contain"
        " text that is not allowed by our safety system.",
        code="content_policy_violation",
    ),
}
_IN_BAND_ERROR = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _message_text(message: Mapping[str, Any]) -> str:
    text = _content_text(message.get("content"))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            text += str(function.get("arguments", ""))
    return text


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise bad_request(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise bad_request(
            "Invalid 'messages': expected a non-empty array of objects.", "messages", "invalid_type"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise bad_request(
                f"Invalid value for 'messages[{index}].role'. Supported values are: "
                + ", ".join(f"'{role}'" for role in ROLES)
                + ".",
                f"messages[{index}].role",
                "invalid_value",
            )
    return messages


def _tools(body: Mapping[str, Any]) -> list[Tool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_request("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    found = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise bad_request(
                f"Missing required parameter: 'tools[{index}].function.name'.",
                f"tools[{index}].function.name",
                "missing_required_parameter",
            )
        parameters = function.get("parameters")
        found.append(Tool(function["name"], parameters if isinstance(parameters, Mapping) else {}))
    return found


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_request(
                f"Invalid '{key}': expected an integer >= 1.", key, "integer_below_min_value"
            )
        return value
    return None


def _forced_tool(choice: Any) -> str | None:
    """The name in `{"type": "function", "function": {"name": ...}}`, if that is the choice."""
    function = choice.get("function") if isinstance(choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    return name if isinstance(name, str) else None


def _last(messages: list[Mapping[str, Any]]) -> tuple[LastKind, str]:
    role = messages[-1]["role"]
    if role in ("tool", "function"):
        return "tool_result", _content_text(messages[-1].get("content"))
    kind: LastKind = "user" if role == "user" else "other"
    users = [m for m in messages if m["role"] == "user"]
    return kind, _content_text(users[-1].get("content")) if users else ""


class OpenAIDialect:
    framing = Framing(
        error=b"data: " + orjson.dumps(_IN_BAND_ERROR) + b"\n\n",
        keepalive=b": keep-alive\n\n",
        malformed=b'data: {"id":"chatcmpl-sandbox","object":"chat.completion.chunk",\n\n',
    )
    unauthenticated_status = 401
    unauthenticated = ErrorText(
        "You didn't provide an API key. You need to provide your API key in an Authorization"
        " header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    bad_json = ErrorText(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't"
        " using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
    )

    def authenticated(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

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
        error = {
            "message": message,
            "type": text.type or _error_type(status),
            "param": text.param,
            "code": text.code,
        }
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
            headers["retry-after-ms"] = str(round(retry_after * 1000))
        if status == 429:
            headers["x-ratelimit-remaining-requests"] = "0"
        return json_response({"error": error}, status, headers)

    def conversation(self, body: dict[str, Any], request: Request) -> Conversation:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("you must provide a model parameter")
        messages = _messages(body)
        tools = _tools(body)
        choice = body.get("tool_choice")
        last_kind, last_text = _last(messages)
        options = body.get("stream_options")
        return Conversation(
            model=model,
            message_texts=[_message_text(message) for message in messages],
            last_kind=last_kind,
            last_text=last_text,
            max_tokens=_max_tokens(body),
            tools=tools,
            tools_json=json_text(body["tools"]) if tools else "",
            tools_enabled=choice != "none",
            forced_tool=_forced_tool(choice),
            mode="sse" if body.get("stream") is True else "json",
            stream_usage=isinstance(options, Mapping) and options.get("include_usage") is True,
        )

    def answer(self, turn: Turn) -> Any:
        reply = turn.reply
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if reply.tool_call else reply.text,
            "refusal": None,
            "annotations": [],
        }
        if reply.tool_call:
            function = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
            message["tool_calls"] = [
                {"id": _call_id(turn), "type": "function", "function": function}
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
        body = {
            "id": _response_id(turn),
            "object": "chat.completion",
            "created": turn.created,
            "model": turn.model,
            "choices": [choice],
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if not turn.faults.no_usage:
            body["usage"] = _usage(turn)
        return body

    def plan(self, turn: Turn) -> StreamPlan:
        reply = turn.reply
        with_usage = turn.conversation.stream_usage
        head: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        content: list[dict[str, Any]]
        if reply.tool_call:
            function = {"name": reply.tool_call.name, "arguments": ""}
            call = {"index": 0, "id": _call_id(turn), "type": "function", "function": function}
            head = {"role": "assistant", "content": None, "tool_calls": [call]}
            content = [
                {"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}
                for fragment in reply.tool_call.fragments
            ]
        else:
            content = [{"content": chunk} for chunk in reply.chunks]
        finish = [_chunk(turn, {}, reply.finish, with_usage)]
        if with_usage and not turn.faults.no_usage:
            finish.append(_usage_chunk(turn))
        return StreamPlan(
            head=[_chunk(turn, head, None, with_usage)],
            content=[_chunk(turn, delta, None, with_usage) for delta in content],
            finish=finish,
            terminal=[b"data: [DONE]\n\n"],
        )


def _response_id(turn: Turn) -> str:
    return f"chatcmpl-sandbox-{turn.serial}"


def _call_id(turn: Turn) -> str:
    return f"call_sandbox_{turn.serial}"


def _usage(turn: Turn) -> dict[str, Any]:
    prompt, completion = turn.reply.prompt_tokens, turn.reply.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _frame(body: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _envelope(turn: Turn) -> dict[str, Any]:
    return {
        "id": _response_id(turn),
        "object": "chat.completion.chunk",
        "created": turn.created,
        "model": turn.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }


def _chunk(turn: Turn, delta: dict[str, Any], finish: str | None, with_usage: bool) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = _envelope(turn) | {"choices": [choice]}
    if with_usage:  # with include_usage every chunk says `usage: null` but the last
        body["usage"] = None
    return _frame(body)


def _usage_chunk(turn: Turn) -> bytes:
    return _frame(_envelope(turn) | {"choices": [], "usage": _usage(turn)})
