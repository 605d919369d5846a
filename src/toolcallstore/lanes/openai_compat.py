"""OpenAI Chat Completions, as spoken by OpenAI and the compatible vendors (OpenRouter, vLLM, ...).

Also the home of the error vocabulary: the other protocols map their failures into the same codes,
so the router decides retries and failover without knowing who failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from toolcallstore.lanes.base import (
    ChatRequest,
    Done,
    Event,
    Finish,
    FinishReason,
    StreamError,
    Target,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from toolcallstore.lanes.sse import JSONEventParser, as_int, well_typed

RETRYABLE = frozenset({"rate_limited", "server_error", "overloaded", "timeout"})

# Provider error types and codes, as named in-band or in bodies, in our vocabulary.
KNOWN_CODES = {
    "rate_limit_exceeded": "rate_limited",
    "rate_limit_error": "rate_limited",
    "overloaded_error": "overloaded",
    "server_error": "server_error",
    "api_error": "server_error",
    "internal_error": "server_error",
    "timeout": "timeout",
    "context_length_exceeded": "context_length_exceeded",
    "content_filter": "content_policy",
    "content_policy_violation": "content_policy",
}

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "tool_calls",  # the legacy single-function form
}

_OPTIONAL = (
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "parallel_tool_calls",
    "response_format",
    "user",
)


def code_for_status(status: int) -> str:
    """Our error code for a bare HTTP status, before any body-specific refinement."""
    if status == 429:
        return "rate_limited"
    if status == 529:
        return "overloaded"
    if status == 408:
        return "timeout"
    if status in (401, 403):
        return "authentication"
    if status == 402:  # out of credit at the provider: another provider may still answer
        return "quota_exceeded"
    if status == 404:
        return "not_found"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "invalid_request"
    return "provider_error"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """`name` (lower case) from headers that may be a plain, case-sensitive dict."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms`, else `retry-after` in seconds or as an HTTP date; None if neither."""
    millis = _finite(header(headers, "retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    value = header(headers, "retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def load_json(body: bytes) -> Any:
    """The parsed body, or None when it is empty or not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def body_message(status: int, body: bytes) -> str:
    """Something readable for a body we could not interpret (an HTML error page, nothing)."""
    text = body.decode("utf-8", "replace").strip()
    return text[:200] if text else f"HTTP {status}"


def upstream_error(
    status: int,
    headers: Mapping[str, str],
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    retry_after_s: float | None = None,
) -> UpstreamError:
    """The error, retryable by its code unless the provider said otherwise; `retry_after_s` is
    the body's own hint, used when no header gives one."""
    retryable = code in RETRYABLE
    should_retry = header(headers, "x-should-retry")  # OpenAI's own verdict overrides ours
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    return UpstreamError(
        status=status,
        code=code,
        message=message,
        retry_after_s=_first(retry_after_seconds(headers), retry_after_s),
        retryable=retryable,
        details=details or {},
    )


def _first(value: float | None, fallback: float | None) -> float | None:
    return fallback if value is None else value


def stream_error(error: Any) -> StreamError:
    """An error reported inside a 200 stream (`{"code","type","message"}`), in our vocabulary."""
    if not isinstance(error, dict):
        return StreamError("provider_error", str(error), retryable=False)
    raw = error.get("code") or error.get("type")
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        code = code_for_status(raw)  # OpenRouter names in-band errors by HTTP status
    else:
        code = KNOWN_CODES.get(str(raw), "provider_error")
    message = error.get("message")
    return StreamError(code, str(message) if message else code, retryable=code in RETRYABLE)


def stream_cut() -> StreamError:
    return StreamError("stream_cut", "the stream ended before the answer finished", retryable=True)


def json_object(text: Any) -> dict[str, Any]:
    """Tool-call arguments as an object; a model's invalid or empty arguments become `{}`."""
    if isinstance(text, dict):
        return text
    try:
        value = orjson.loads(text) if text else None
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the "text" parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def image_url(part: dict[str, Any]) -> str:
    """The URL of an OpenAI `image_url` part, which may be a string or `{"url": ...}`."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    return url if isinstance(url, str) else ""


def split_data_url(url: str) -> tuple[str, str] | None:
    """`(media type, base64 data)` of a `data:<type>;base64,<data>` URL, else None."""
    if not url.startswith("data:"):
        return None
    meta, comma, data = url[5:].partition(",")
    if not comma or not meta.endswith(";base64"):
        return None
    return meta[: -len(";base64")], data


# Vendors that refuse `stream_options` (Mistral: 422 extra_forbidden) and send the usage on
# their last chunk anyway.
NO_STREAM_OPTIONS = frozenset({"mistral"})


class OpenAICompat:
    name = "openai"

    def build(self, target: Target, request: ChatRequest, api_key: str) -> UpstreamRequest:
        # OpenAI's own reasoning models refuse `max_tokens`; compatible vendors mostly know
        # only `max_tokens`.
        limit = "max_completion_tokens" if target.provider == "openai" else "max_tokens"
        body: dict[str, Any] = {
            "model": target.model,
            "messages": request.messages,
            limit: request.max_tokens,
            "stream": True,
        }
        if target.provider not in NO_STREAM_OPTIONS:
            body["stream_options"] = {"include_usage": True}
        for name in _OPTIONAL:
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        return UpstreamRequest(
            method="POST",
            url=f"{target.base_url.rstrip('/')}/chat/completions",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            body=body,
        )

    def build_plain(self, target: Target, request: ChatRequest, api_key: str) -> UpstreamRequest:
        """The non-streamed request (a plain call on a lane that cannot hedge or resume)."""
        built = self.build(target, request, api_key)
        body = {k: v for k, v in built.body.items() if k not in ("stream", "stream_options")}
        return replace(built, body=body)

    def parse_plain(self, body: bytes) -> list[Event]:
        """A `chat.completion` as the events its stream would have carried: the content, the
        tool calls, the finish and the usage in one go; a failure if it is not one."""
        try:
            completion = orjson.loads(body)
            error = completion.get("error")
            if error:  # an error object under a 200, as some compatible servers send
                return [stream_error(error if isinstance(error, dict) else {"message": error})]
            choice = completion["choices"][0]
            message = choice["message"]
            if not isinstance(message.get("content"), str | None):
                return [_unreadable(body)]
            calls = message.get("tool_calls") or ()
            delta = {**message, "tool_calls": [{**c, "index": i} for i, c in enumerate(calls)]}
            out: list[Event] = []
            _take_choice({"delta": delta, "finish_reason": choice.get("finish_reason")}, out)
            usage = completion.get("usage")
            if usage:
                out.append(Usage(as_int(usage.get("prompt_tokens")),
                                 as_int(usage.get("completion_tokens"))))  # fmt: skip
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            return [_unreadable(body)]
        if not all(map(well_typed, out)):
            return [_unreadable(body)]
        if not any(isinstance(e, Finish | StreamError) for e in out):
            out.append(stream_cut())  # an answer without its finish: what came is delivered
        out.append(Done())
        return out

    def parser(self) -> OpenAIStreamParser:
        return OpenAIStreamParser()

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        payload = load_json(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, str):  # some compatible servers send the message alone
            error = {"message": error}
        if not isinstance(error, dict):
            return upstream_error(
                status, headers, code_for_status(status), body_message(status, body)
            )
        message = str(error.get("message") or body_message(status, body))
        details = {k: error[k] for k in ("type", "code", "param") if error.get(k) is not None}
        return upstream_error(
            status, headers, _openai_code(status, error, message), message, details
        )


def _unreadable(body: bytes) -> StreamError:
    shown = body[:200].decode(errors="replace")
    return StreamError("malformed_answer", f"not a chat.completion: {shown!r}", retryable=False)


def _openai_code(status: int, error: dict[str, Any], message: str) -> str:
    code = code_for_status(status)
    named = error.get("code") or error.get("type")
    if code == "rate_limited" and named == "insufficient_quota":
        return "quota_exceeded"  # OpenAI's "exceeded your current quota": waiting will not help
    if code != "invalid_request":
        return code
    if named == "context_length_exceeded" or "maximum context length" in message.lower():
        return "context_length_exceeded"
    if named in ("content_policy_violation", "content_filter"):
        return "content_policy"
    return code


class OpenAIStreamParser(JSONEventParser):
    def take(self, event: str, data: str, out: list[Event]) -> None:
        if data == "[DONE]":
            out.append(Done())
            return
        chunk = orjson.loads(data)
        error = chunk.get("error")
        if error:  # OpenRouter: a failure after the 200 is a chunk with an error object
            out.append(stream_error(error))
            return
        for choice in chunk.get("choices") or ():  # null or [] on the usage chunk
            _take_choice(choice, out)
        usage = chunk.get("usage")
        if usage:
            out.append(
                Usage(as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens")))
            )

    def finish(self, out: list[Event]) -> None:
        # A finish without [DONE] is a complete answer whose terminator was lost: not an error.
        if not self.finished and not self.failed:
            out.append(stream_cut())


def _take_choice(choice: dict[str, Any], out: list[Event]) -> None:
    delta = choice.get("delta")
    if delta:
        content = delta.get("content")
        if content and isinstance(content, str):
            out.append(TextDelta(content))
        refusal = delta.get("refusal")
        if refusal:
            out.append(TextDelta(refusal, refusal=True))
        for position, call in enumerate(delta.get("tool_calls") or ()):
            function = call.get("function") or {}
            index = call.get("index")
            if not isinstance(index, int):  # some compatible servers leave it out
                index = position
            piece = ToolCallDelta(
                index, call.get("id"), function.get("name"), function.get("arguments") or ""
            )
            if piece.id or piece.name or piece.arguments:
                out.append(piece)
    reason = choice.get("finish_reason")
    if reason == "error":  # OpenRouter's failure without an error object
        out.append(StreamError("provider_error", "the provider reported an error", False))
    elif reason:
        out.append(Finish(_FINISH.get(reason, "stop"), raw=str(reason)))
