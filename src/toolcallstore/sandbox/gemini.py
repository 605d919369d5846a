"""The Gemini fake: `POST /gemini/v1beta/models/{model}:generateContent` and
`:streamGenerateContent` (SSE with `?alt=sse`, else one JSON array of the same frames).

Gemini has no end-of-stream marker: the frame with `finishReason` and full `usageMetadata` is the
last one, so `no_done` changes nothing here. Request fields are read in camelCase or snake_case,
as the real API accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from toolcallstore.sandbox.endpoint import ErrorText, bad_request, json_response
from toolcallstore.sandbox.faults import ErrorCode
from toolcallstore.sandbox.replies import Conversation, LastKind, Tool, Turn, json_text
from toolcallstore.sandbox.streams import Framing, StreamPlan

FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_TEXTS = {
    429: ErrorText("Resource has been exhausted (e.g. check quota)."),
    500: ErrorText("An internal error has occurred. Please retry or report the problem."),
    503: ErrorText("The model is overloaded. Please try again later."),
}
_CODE_TEXTS: dict[ErrorCode, ErrorText] = {
    "context_length_exceeded": ErrorText(
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    ),
    "content_policy": ErrorText(
        "The request was blocked because it may violate the usage policy (blockReason: SAFETY)."
    ),
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_UNAVAILABLE = {
    "error": {"code": 503, "message": _STATUS_TEXTS[503].message, "status": "UNAVAILABLE"}
}


def _get(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    return body[camel] if camel in body else body.get(snake)


def _frame(body: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\r\n\r\n"


def _parts_text(content: Any) -> str:
    """Text parts, function-call args and function responses of one Content, as text."""
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list):
        return ""
    text = ""
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("text"), str):
            text += part["text"]
        elif (call := _get(part, "functionCall", "function_call")) is not None:
            text += json_text(call.get("args", {}) if isinstance(call, Mapping) else call)
        elif (result := _get(part, "functionResponse", "function_response")) is not None:
            text += json_text(result.get("response", {}) if isinstance(result, Mapping) else result)
    return text


def _is_tool_result(content: Mapping[str, Any]) -> bool:
    parts = content.get("parts")
    return isinstance(parts, list) and any(
        isinstance(part, Mapping) and _get(part, "functionResponse", "function_response")
        for part in parts
    )


def _contents(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise bad_request("* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        if not isinstance(content, Mapping) or not isinstance(content.get("parts"), list):
            raise bad_request(f"* GenerateContentRequest.contents[{index}].parts: required")
    return contents


def _tools(body: Mapping[str, Any]) -> list[Tool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_request("Invalid JSON payload received. 'tools' must be a list.")
    found = []
    for t, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise bad_request("Invalid JSON payload received. 'tools' must hold objects.")
        declarations = _get(tool, "functionDeclarations", "function_declarations") or []
        for d, declaration in enumerate(declarations if isinstance(declarations, list) else ()):
            if not isinstance(declaration, Mapping) or not isinstance(declaration.get("name"), str):
                raise bad_request(
                    "* GenerateContentRequest.tools.function_declarations.name: required"
                )
            schema = _parameters(declaration, f"tools[{t}].function_declarations[{d}]")
            found.append(Tool(declaration["name"], schema))
    return found


# The fields of Gemini's `Schema` message (an OpenAPI 3.0 subset), which `parameters` must
# keep to, in camelCase or snake_case; `parametersJsonSchema` takes any JSON Schema instead.
_CAMEL_FIELDS = (
    "type format title description nullable enum maxItems minItems properties required"
    " minProperties maxProperties minLength maxLength pattern example anyOf propertyOrdering"
    " default items minimum maximum"
).split()
_SCHEMA_FIELDS = {
    **{name: name for name in _CAMEL_FIELDS},
    **{re.sub("([A-Z])", lambda m: "_" + m.group(1).lower(), name): name for name in _CAMEL_FIELDS},
}


def _parameters(declaration: Mapping[str, Any], at: str) -> Mapping[str, Any]:
    """A declaration's parameter schema, refused as the real API refuses it: `parameters` with
    JSON Schema keywords outside the `Schema` message (`additionalProperties`, `$ref`, `const`,
    a list of types ...), or both fields at once."""
    schema = declaration.get("parameters")
    json_schema = _get(declaration, "parametersJsonSchema", "parameters_json_schema")
    if schema is not None and json_schema is not None:
        raise bad_request(
            f"* GenerateContentRequest.{at}: parameters and parameters_json_schema are"
            " mutually exclusive; set one of them."
        )
    if json_schema is not None:
        return json_schema if isinstance(json_schema, Mapping) else {}
    if not isinstance(schema, Mapping):
        return {}
    problems = _schema_problems(schema, f"{at}.parameters")
    if problems:
        raise bad_request("\n".join(problems))
    return schema


_UNKNOWN = "Invalid JSON payload received. Unknown name"
_NOT_REPEATING = "Proto field is not repeating, cannot start list."


def _schema_problems(schema: Any, at: str) -> list[str]:
    if not isinstance(schema, Mapping):
        return []
    problems = []
    for key, value in schema.items():
        name = _SCHEMA_FIELDS.get(key)
        if name is None:
            problems.append(
                f"{_UNKNOWN} {orjson.dumps(key).decode()} at '{at}': Cannot find field."
            )
        elif name == "type" and isinstance(value, list):
            problems.append(f"{_UNKNOWN} \"type\" at '{at}': {_NOT_REPEATING}")
        elif name == "properties" and isinstance(value, Mapping):
            for index, sub in enumerate(value.values()):
                problems += _schema_problems(sub, f"{at}.properties[{index}].value")
        elif name == "items":
            problems += _schema_problems(value, f"{at}.items")
        elif name == "anyOf" and isinstance(value, list):
            for index, sub in enumerate(value):
                problems += _schema_problems(sub, f"{at}.any_of[{index}]")
    return problems


def _tool_mode(body: Mapping[str, Any]) -> tuple[bool, str | None]:
    config = _get(body, "toolConfig", "tool_config")
    calling = (
        _get(config, "functionCallingConfig", "function_calling_config")
        if isinstance(config, Mapping)
        else None
    )
    if not isinstance(calling, Mapping):
        return True, None
    names = _get(calling, "allowedFunctionNames", "allowed_function_names")
    forced = names[0] if isinstance(names, list) and names else None
    return calling.get("mode") != "NONE", forced


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    config = _get(body, "generationConfig", "generation_config")
    if not isinstance(config, Mapping):
        return None
    value = _get(config, "maxOutputTokens", "max_output_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request("* GenerationConfig.max_output_tokens: must be a positive integer")
    return value


def _last(contents: list[Mapping[str, Any]]) -> tuple[LastKind, str]:
    last = contents[-1]
    if _is_tool_result(last):
        return "tool_result", _parts_text(last)
    kind: LastKind = "other" if last.get("role") == "model" else "user"
    users = [c for c in contents if c.get("role") != "model" and not _is_tool_result(c)]
    return kind, _parts_text(users[-1]) if users else ""


def _mode(request: Request) -> Literal["json", "sse", "json_array"]:
    if not request.url.path.endswith(":streamGenerateContent"):
        return "json"
    return "sse" if request.query_params.get("alt") == "sse" else "json_array"


class GeminiDialect:
    framing = Framing(
        error=_frame(_UNAVAILABLE),
        keepalive=b": keep-alive\r\n\r\n",
        malformed=b'data: {"candidates":[{"content":{"parts":[{"text":\r\n\r\n',
    )
    unauthenticated_status = 403  # PERMISSION_DENIED, as the real API answers a missing key
    unauthenticated = ErrorText(
        "Method doesn't allow unregistered callers (callers without established identity)."
        " Please use API Key or other form of API consumer identity to call this API."
    )
    bad_json = ErrorText("Invalid JSON payload received. Unexpected token.")

    def authenticated(self, request: Request) -> bool:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
        return bool(key.strip())

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
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _STATUSES.get(status, "UNKNOWN"),
        }
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
            # Where Gemini itself says how long to wait, and what Google's clients read.
            retry = {"@type": _RETRY_INFO, "retryDelay": f"{retry_after:g}s"}
            error["details"] = [retry]
        return json_response({"error": error}, status, headers)

    def conversation(self, body: dict[str, Any], request: Request) -> Conversation:
        contents = _contents(body)
        tools = _tools(body)
        unsigned = _unsigned_call(contents) if _signs_calls(request.path_params["model"]) else None
        if unsigned:
            raise bad_request(
                "Function call is missing a thought_signature in functionCall parts. This is"
                " required for tools to work correctly, and missing thought_signature may lead"
                f" to degraded model performance. Additional data, function call {unsigned}."
                " Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for"
                " more details."
            )
        if _get(body, "toolConfig", "tool_config") is not None and not tools:
            raise bad_request("Function calling config is set without function_declarations.")
        texts = [_parts_text(content) for content in contents]
        system = _get(body, "systemInstruction", "system_instruction")
        if system is not None:
            texts.insert(0, _parts_text(system))
        enabled, forced = _tool_mode(body)
        last_kind, last_text = _last(contents)
        return Conversation(
            model=request.path_params["model"],
            message_texts=texts,
            last_kind=last_kind,
            last_text=last_text,
            max_tokens=_max_tokens(body),
            tools=tools,
            tools_json=json_text(body["tools"]) if tools else "",
            tools_enabled=enabled,
            forced_tool=forced,
            mode=_mode(request),
        )

    def answer(self, turn: Turn) -> Any:
        if turn.conversation.mode == "json_array":
            return _bodies(turn)
        reply = turn.reply
        return _response(turn, _parts(turn, reply.text), FINISH_REASONS[reply.finish], final=True)

    def plan(self, turn: Turn) -> StreamPlan:
        frames = [_frame(body) for body in _bodies(turn)]
        return StreamPlan(head=[], content=frames[:-1], finish=frames[-1:])


def _bodies(turn: Turn) -> list[dict[str, Any]]:
    """The streamed responses: one per chunk, then the one with finishReason and full usage."""
    reply = turn.reply
    if reply.tool_call:
        content = [_response(turn, _parts(turn, ""), None, final=False)]
    else:
        content = [_response(turn, [{"text": c}], None, final=False) for c in reply.chunks]
    last = _response(turn, [{"text": ""}], FINISH_REASONS[reply.finish], final=True)
    return [*content, last]


def _parts(turn: Turn, text: str) -> list[dict[str, Any]]:
    call = turn.reply.tool_call
    if call is None:
        return [{"text": text}]
    part: dict[str, Any] = {
        "functionCall": {"name": call.name, "args": orjson.loads(call.arguments)}
    }
    if _signs_calls(turn.model):  # Gemini 3 signs its calls, and wants the signature back
        part["thoughtSignature"] = f"sandbox-signature-{turn.serial}"
    return [part]


def _signs_calls(model: str) -> bool:
    version = re.match(r"gemini-(\d+)", model)
    return version is not None and int(version[1]) >= 3


def _unsigned_call(contents: list[Mapping[str, Any]]) -> str | None:
    """The first call of a model turn without its thoughtSignature, as Gemini 3 checks."""
    for content in contents:
        if content.get("role") != "model":
            continue
        for position, part in enumerate(content["parts"]):
            call = isinstance(part, Mapping) and _get(part, "functionCall", "function_call")
            if call:
                if not _get(part, "thoughtSignature", "thought_signature"):
                    return f"`default_api:{call.get('name')}` , position {position + 1}"
                break
    return None


def _response(
    turn: Turn, parts: list[dict[str, Any]], finish: str | None, *, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate]}
    if not turn.faults.no_usage:
        body["usageMetadata"] = _usage(turn, final)
    body["modelVersion"] = turn.model
    body["responseId"] = f"sandbox-{turn.serial}"
    return body


def _usage(turn: Turn, final: bool) -> dict[str, Any]:
    prompt = turn.reply.prompt_tokens
    if not final:
        return {"promptTokenCount": prompt}
    completion = turn.reply.completion_tokens
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
