"""The normalised shapes every LLM protocol translates to and from.

A translator (`openai_compat.py`, `anthropic.py`, `gemini.py`) is pure: it builds the provider's
HTTP request from a `ChatRequest` and turns the provider's streamed bytes into `Event`s. The one
sender (`sender.py`) does the I/O on the shared `httpx.AsyncClient`; the router decides what to do
with the events. Upstream calls are streamed, and a non-stream answer is assembled from the events;
the one exception is a plain call on a lane of one target, sent plain where the protocol's
translator can (`PlainTranslator`), its answer turned into the same events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# OpenAI's finish reasons; each protocol maps its own to these.
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True)
class ChatRequest:
    """A chat call in OpenAI terms, checked and with `max_tokens` always decided by us."""

    messages: list[dict[str, Any]]  # OpenAI message objects: system|developer|user|assistant|tool
    max_tokens: int
    tools: list[dict[str, Any]] | None = None  # OpenAI `{"type":"function","function":{...}}`
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type":"function",...} | None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


@dataclass(frozen=True)
class Target:
    """One model at one provider, as config/models.json describes it; what a translator needs."""

    id: str  # "<provider>/<model>", e.g. "anthropic/claude-sonnet-4-5"
    provider: str
    model: str  # the provider's own model name, sent upstream
    protocol: Literal["openai", "anthropic", "gemini"]
    base_url: str  # e.g. "https://api.openai.com/v1", "https://api.anthropic.com/v1"


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: dict[str, Any]


# --- events a parser yields ------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    text: str
    refusal: bool = False  # the model's refusal (OpenAI's `delta.refusal`), not its answer


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call; the first piece of a call carries `id` and `name`, later ones
    only `arguments` fragments, concatenated per `index`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Usage:
    """Token counts as far as the provider reported them. Counts are totals so far (assign,
    don't add); None means not reported in this event."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    raw: str = ""  # the provider's own value, e.g. "end_turn", "MAX_TOKENS"


@dataclass(frozen=True)
class Done:
    """The provider's end-of-stream marker (`[DONE]`, `message_stop`, or a clean EOF after a
    finish on Gemini)."""


@dataclass(frozen=True)
class StreamError:
    """The stream failed: an in-band error event, or the stream was cut before it finished."""

    code: str  # "overloaded", "stream_cut", "provider_error", "rate_limited", ...
    message: str
    retryable: bool = True


@dataclass(frozen=True)
class Malformed:
    """An event that could not be parsed; skipped (never forwarded) and counted."""

    raw: bytes


Event = TextDelta | ToolCallDelta | Usage | Finish | Done | StreamError | Malformed


@dataclass(frozen=True)
class UpstreamError:
    """A non-2xx answer, translated from the provider's error body."""

    status: int
    code: str  # "rate_limited", "overloaded", "server_error", "context_length_exceeded",
    # "content_policy", "invalid_request", "authentication", "not_found", ...
    message: str
    retry_after_s: float | None = None
    retryable: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class StreamParser(Protocol):
    def feed(self, data: bytes) -> list[Event]:
        """Parse the next bytes of the body (any split); return the events they complete."""
        ...

    def close(self) -> list[Event]:
        """The body ended: flush what is left; a stream that never finished yields StreamError."""
        ...


class Translator(Protocol):
    name: str

    def build(self, target: Target, request: ChatRequest, api_key: str) -> UpstreamRequest:
        """The streaming HTTP request for `request` at `target`."""
        ...

    def parser(self) -> StreamParser:
        """A fresh incremental parser for one response body."""
        ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        """Translate a non-2xx response (its body may be empty or not JSON)."""
        ...


@runtime_checkable
class PlainTranslator(Translator, Protocol):
    """A translator that can also ask for the whole answer at once: used for a plain (not
    streamed) call whose lane has one target, where a stream would be parsed chunk by chunk only
    to be assembled again (nothing to hedge, nothing to resume)."""

    def build_plain(
        self, target: Target, request: ChatRequest, api_key: str
    ) -> UpstreamRequest: ...

    def parse_plain(self, body: bytes) -> list[Event]:
        """The events the whole answer carries; a cut or unreadable answer ends in StreamError
        or Malformed."""
        ...
