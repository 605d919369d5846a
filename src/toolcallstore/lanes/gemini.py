"""Gemini generateContent: OpenAI-shaped requests in, whole responses per SSE frame out."""

from __future__ import annotations

import re
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
    image_url,
    json_object,
    load_json,
    split_data_url,
    stream_cut,
    stream_error,
    upstream_error,
)
from toolcallstore.lanes.sse import JSONEventParser, as_int

_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "BLOCKLIST": "content_filter",
    "SPII": "content_filter",
}

_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


class Gemini:
    name = "gemini"

    def build(self, target: Target, request: ChatRequest, api_key: str) -> UpstreamRequest:
        system, contents = _contents(request.messages, _signs_calls(target.model))
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        if request.tools:
            declarations = [_declaration(tool["function"]) for tool in request.tools]
            body["tools"] = [{"functionDeclarations": declarations}]
        config = _function_calling_config(request.tool_choice)
        if config and request.tools:  # without declarations Gemini refuses the config (400)
            body["toolConfig"] = {"functionCallingConfig": config}
        body["generationConfig"] = _generation_config(request)
        return UpstreamRequest(
            method="POST",
            url=f"{target.base_url.rstrip('/')}/models/{target.model}:streamGenerateContent?alt=sse",
            headers={"x-goog-api-key": api_key, "content-type": "application/json"},
            body=body,
        )

    def parser(self) -> GeminiStreamParser:
        return GeminiStreamParser()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        payload = load_json(body)
        if isinstance(payload, list) and payload:  # the non-SSE endpoint wraps it in an array
            payload = payload[0]
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return upstream_error(
                status, headers, code_for_status(status), body_message(status, body)
            )
        message = str(error.get("message") or body_message(status, body))
        details = {"status": error["status"]} if error.get("status") else {}
        return upstream_error(
            status,
            headers,
            _error_code(status, error, message),
            message,
            details,
            retry_after_s=_retry_delay(error.get("details")),
        )


def _error_code(status: int, error: dict[str, Any], message: str) -> str:
    state = error.get("status")
    if state == "RESOURCE_EXHAUSTED":
        return "rate_limited"
    if state in ("UNAVAILABLE", "INTERNAL"):
        return "server_error"
    code = code_for_status(status)
    if code != "invalid_request":
        return code
    lowered = message.lower()
    if "api key not valid" in lowered:  # Gemini answers a bad key with 400 INVALID_ARGUMENT
        return "authentication"
    if "blockreason" in lowered or "usage policy" in lowered:  # a refusal, not a fault
        return "content_policy"
    if "exceeds the maximum" in lowered or "token limit" in lowered:
        return "context_length_exceeded"
    return code


def _retry_delay(details: Any) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "23s"`), if there is one."""
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(float(delay[:-1]), 0.0)
            except ValueError:
                return None
    return None


# --- request ---------------------------------------------------------------------------------


# Gemini 3 refuses a functionCall in the history without the thoughtSignature it came with
# (400 "Function call is missing a thought_signature"). OpenAI-format clients have nowhere to
# keep it, so the first call of each assistant step carries Google's documented stand-in.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_VERSION = re.compile(r"gemini-(\d+)")


def _signs_calls(model: str) -> bool:
    version = _VERSION.match(model)
    return version is not None and int(version[1]) >= 3


def _contents(
    messages: list[dict[str, Any]], signed: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """The system instruction, and the turns with consecutive same-role turns merged."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # a functionResponse names the function, not the call id
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = content_text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            role, parts = "model", _model_parts(message, call_names, signed)
        elif role == "tool":
            role, parts = "user", [_function_response(message, call_names)]
        else:
            role, parts = "user", _user_parts(message.get("content"))
        if not parts:  # Gemini rejects a turn without parts
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return "\n\n".join(system), contents


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            url = image_url(part)
            inline = split_data_url(url)
            if inline:
                parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
            else:
                parts.append({"fileData": {"fileUri": url}})
    return parts


def _model_parts(
    message: dict[str, Any], call_names: dict[str, str], signed: bool
) -> list[dict[str, Any]]:
    text = content_text(message.get("content"))
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        name = function.get("name") or ""
        call_names[call.get("id") or ""] = name
        part: dict[str, Any] = {
            "functionCall": {"name": name, "args": json_object(function.get("arguments"))}
        }
        if signed and i == 0:  # parallel calls: only the first carries one
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _function_response(message: dict[str, Any], call_names: dict[str, str]) -> dict[str, Any]:
    name = call_names.get(message.get("tool_call_id") or "") or message.get("name") or ""
    text = content_text(message.get("content"))
    try:
        output: Any = orjson.loads(text)  # JSON results go as data, so the model reads fields
    except orjson.JSONDecodeError:
        output = text
    return {"functionResponse": {"name": name, "response": {"content": output}}}


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    # As JSON Schema, whole: `parameters` takes only Gemini's OpenAPI subset and refuses what
    # OpenAI tool schemas often hold (`additionalProperties`, `$ref`, `const`, type lists).
    # A no-arg tool (an object without properties) is declared without a schema.
    if parameters and parameters.get("properties"):
        declaration["parametersJsonSchema"] = parameters
    return declaration


def _function_calling_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in _MODES:
        return {"mode": _MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    return None


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = request.stop
    if request.seed is not None:
        config["seed"] = request.seed
    response_format = request.response_format or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return config


# --- response --------------------------------------------------------------------------------


class GeminiStreamParser(JSONEventParser):
    def __init__(self) -> None:
        super().__init__()
        self._calls = 0  # function calls emitted so far: the next call's index
        self._usage: Usage | None = None  # the last usage emitted, to skip repeats

    def take(self, event: str, data: str, out: list[Event]) -> None:
        payload = orjson.loads(data)
        error = payload.get("error")
        if error:
            out.append(stream_error(error))
            return
        candidates = payload.get("candidates")
        if candidates:
            self._take_parts(candidates[0], payload.get("responseId"), out)
        self._take_usage(payload.get("usageMetadata"), out)
        if self.finished:
            return
        if candidates and candidates[0].get("finishReason"):
            reason = candidates[0]["finishReason"]
            mapped = _FINISH.get(reason, "stop")
            if mapped == "stop" and self._calls:
                mapped = "tool_calls"
            out.append(Finish(mapped, raw=reason))
        elif not candidates and (payload.get("promptFeedback") or {}).get("blockReason"):
            # The prompt itself was blocked: no candidate ever comes.
            out.append(Finish("content_filter", raw=payload["promptFeedback"]["blockReason"]))

    def finish(self, out: list[Event]) -> None:
        # Gemini has no end marker: a clean end after a finish reason is the end.
        if self.finished:
            out.append(Done())
        elif not self.failed:
            out.append(stream_cut())

    def _take_parts(self, candidate: dict[str, Any], response_id: Any, out: list[Event]) -> None:
        for part in (candidate.get("content") or {}).get("parts") or ():
            text = part.get("text")
            if text and not part.get("thought"):  # thought summaries are not the answer
                out.append(TextDelta(text))
            call = part.get("functionCall")
            if call:
                if not isinstance(call.get("name"), str):  # before it counts as a call
                    raise TypeError("functionCall.name is not a string")
                index = self._calls
                self._calls += 1
                call_id = call.get("id") or f"call_{response_id or 'gemini'}_{index}"
                arguments = orjson.dumps(call.get("args") or {}).decode()
                out.append(ToolCallDelta(index, call_id, call.get("name"), arguments))

    def _take_usage(self, metadata: Any, out: list[Event]) -> None:
        if not metadata:
            return
        answer = as_int(metadata.get("candidatesTokenCount"))
        thoughts = as_int(metadata.get("thoughtsTokenCount"))
        output = None if answer is None and thoughts is None else (answer or 0) + (thoughts or 0)
        usage = Usage(as_int(metadata.get("promptTokenCount")), output)
        # Early frames may carry partial or no counts; each later one is a fuller total.
        if usage != Usage() and usage != self._usage:
            self._usage = usage
            out.append(usage)
