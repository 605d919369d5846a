"""The body of `POST /v1/chat/completions` (and the params of the `llm.chat` tool): checked
field by field like every other body, with `param` naming the bad field.

The checked params are what a quote hashes: the OpenAI fields that change what is generated
plus `max_cost_usd`; transport fields (`stream`, `stream_options`) and `quote_id` are not part
of them, so one quote serves a streamed or a plain call.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from toolcallstore.errors import InvalidRequest
from toolcallstore.lanes.base import ChatRequest
from toolcallstore.money import MICROS_PER_USD, micros_to_usd
from toolcallstore.validation import invalid

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal"})
PASSTHROUGH = ("temperature", "top_p", "seed", "parallel_tool_calls", "user", "response_format")
TRANSPORT = frozenset({"stream", "stream_options", "quote_id", "approval_id", "project_id"})
# Accepted for OpenAI compatibility; they do not change what a call costs or returns here.
IGNORED = frozenset({"metadata", "store", "n"})
KNOWN = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "tools", "tool_choice", "stop",
     "max_cost_usd", *PASSTHROUGH, *TRANSPORT, *IGNORED}
)  # fmt: skip
MAX_MESSAGES = 2000


# The request's JSON Schema (openapi.json, the MCP tool); parse_chat_params is the check.
CHAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": False,
    "properties": {
        **{name: {} for name in sorted(KNOWN)},
        "model": {"type": "string", "minLength": 1, "maxLength": 200,
                  "description": "A lane, an alias or a target (GET /v1/models)."},
        "messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "max_cost_usd": {"type": "string", "description": "Never pay more than this (USD)."},
        "quote_id": {"type": "string"},
        "approval_id": {"type": "string"},
    },
}  # fmt: skip


def parse_chat_params(body: dict[str, Any]) -> dict[str, Any]:
    """The checked, normalised params of a chat call; raises InvalidRequest naming the field."""
    for name in body:
        if name not in KNOWN:
            raise invalid(name, f"Unknown or unsupported parameter '{name[:100]}'.",
                          "unknown_parameter")  # fmt: skip
    model = body.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= 200:
        raise invalid("model", "'model' must name a lane, an alias or a target (GET /v1/models).")
    params: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages"))}
    max_tokens = _max_tokens(body)
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if body.get("n", 1) != 1:
        raise invalid("n", "Only n=1 is supported.")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    for name in PASSTHROUGH:
        if body.get(name) is not None:
            params[name] = body[name]
    _typed(body, "seed", int)
    _typed(body, "parallel_tool_calls", bool)
    _typed(body, "user", str)
    _response_format(body.get("response_format"))
    if body.get("stop") is not None:
        params["stop"] = _stop(body["stop"])
    if body.get("tools"):
        params["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"], params.get("tools"))
    if body.get("max_cost_usd") is not None:
        amount = usd(body["max_cost_usd"], "max_cost_usd") * MICROS_PER_USD
        micros = int(amount.to_integral_value(ROUND_FLOOR))  # a cap: never round it up
        if micros < 1:
            raise invalid("max_cost_usd", "'max_cost_usd' must be at least 0.000001.")
        params["max_cost_usd"] = micros_to_usd(micros)
    return params


def budget_of(params: dict[str, Any]) -> int | None:
    """The caller's `max_cost_usd` in micro-USD, if it set one."""
    value = params.get("max_cost_usd")
    return None if value is None else int(Decimal(value) * MICROS_PER_USD)


def chat_request(params: dict[str, Any], max_tokens: int) -> ChatRequest:
    stop = params.get("stop")
    return ChatRequest(
        messages=params["messages"],
        max_tokens=max_tokens,
        tools=params.get("tools"),
        tool_choice=params.get("tool_choice"),
        temperature=params.get("temperature"),
        top_p=params.get("top_p"),
        stop=stop,
        seed=params.get("seed"),
        parallel_tool_calls=params.get("parallel_tool_calls"),
        response_format=params.get("response_format"),
        user=params.get("user"),
    )


def usd(value: Any, param: str) -> Decimal:
    """A positive USD amount sent as a decimal string (or a JSON number)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(param, f"'{param}' must be a decimal string of USD, e.g. \"0.05\".")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise invalid(param, f"'{param}' must be a decimal string of USD, e.g. \"0.05\".") from None
    if not amount.is_finite() or amount <= 0 or amount > 1_000_000:
        raise invalid(param, f"'{param}' must be more than 0 and at most 1000000.")
    return amount


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid("messages", "'messages' must be a non-empty array of message objects.")
    if len(value) > MAX_MESSAGES:
        raise invalid("messages", f"At most {MAX_MESSAGES} messages per call.")
    for i, message in enumerate(value):
        _message(message, f"messages[{i}]")
    return value


def _message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise invalid(where, f"{where} must be an object with 'role' and 'content'.")
    for name in message:
        if name not in MESSAGE_FIELDS:
            raise invalid(f"{where}.{name}", f"Unknown message field '{name[:100]}'.",
                          "unknown_parameter")  # fmt: skip
    role = message.get("role")
    if role not in ROLES:
        raise invalid(f"{where}.role", f"{where}.role must be one of {', '.join(sorted(ROLES))}.")
    content = message.get("content")
    if content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise invalid(f"{where}.content", f"{where} needs 'content'.")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            _part(part, f"{where}.content[{j}]")
    elif not isinstance(content, str):
        raise invalid(f"{where}.content", f"{where}.content must be a string or content parts.")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise invalid(f"{where}.tool_call_id", "A tool message needs its 'tool_call_id'.")
    if message.get("tool_calls") is not None:
        _tool_calls(message["tool_calls"], f"{where}.tool_calls", role)


def _part(part: Any, where: str) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return
    if kind == "image_url" and isinstance(part.get("image_url"), dict):
        if isinstance(part["image_url"].get("url"), str):
            return
    raise invalid(where, f"{where} must be a text part or an image_url part.")


def _tool_calls(calls: Any, where: str, role: Any) -> None:
    if role != "assistant" or not isinstance(calls, list):
        raise invalid(where, "'tool_calls' is an array on assistant messages only.")
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            raise invalid(f"{where}[{k}]", "A tool call needs 'id' and 'function.name' (and"
                          " 'function.arguments' as a string).")  # fmt: skip


def _max_tokens(body: dict[str, Any]) -> int | None:
    names = ("max_tokens", "max_completion_tokens")
    values = {n: body[n] for n in names if body.get(n) is not None}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
            raise invalid(name, f"'{name}' must be a positive integer.")
    if len(set(values.values())) > 1:
        raise invalid("max_completion_tokens", "Send 'max_tokens' or 'max_completion_tokens'.")
    return next(iter(values.values()), None)


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(name, f"'{name}' must be a number from {low:g} to {high:g}.")


def _typed(body: dict[str, Any], name: str, kind: type) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid(name, f"'{name}' must be a {kind.__name__}.")


def _response_format(value: Any) -> None:
    """None, or one of OpenAI's shapes: the translators read `json_schema.schema` as an object."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid("response_format", "'response_format' must be a dict.")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        message = "'response_format.type' must be text, json_object or json_schema."
        raise invalid("response_format", message)
    spec = value.get("json_schema")
    if kind == "json_schema" and (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("schema", {}), dict)
    ):
        raise invalid("response_format", "'response_format.json_schema' must be an object"
                      " with a 'name' and, if any, a 'schema' object.")  # fmt: skip


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= 4:
        raise invalid("stop", "'stop' must be a string or an array of 1-4 strings.")
    if not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", "'stop' must be a string or an array of 1-4 strings.")
    return stops


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > 128:
        raise invalid("tools", "'tools' must be an array of at most 128 function tools.")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), dict)
        ):
            raise invalid(f"tools[{i}]", "A tool is {\"type\": \"function\", \"function\":"
                          " {\"name\": ..., \"parameters\": {...}}}.")  # fmt: skip
    return value


def _tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> Any:
    if value in ("none", "auto", "required"):
        return value
    name = None
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    offered = {t["function"]["name"] for t in tools or []}
    if not isinstance(name, str) or name not in offered:
        raise InvalidRequest(
            "'tool_choice' must be none, auto, required, or a function named in 'tools'.",
            code="invalid_parameter",
            param="tool_choice",
        )
    return value
