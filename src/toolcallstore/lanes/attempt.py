"""One attempt: one streamed request to one target, turned into normalised events.

`run_attempt` yields nothing until the target's first content token (the events before it are
kept and handed over with it), so a failure before that token (`AttemptFailed`) leaves nothing
to take back. After it, a failure ends the events with a `StreamError`. Timeouts: the first
token within the lane's `first_token_timeout_ms`, then no gap longer than `idle_timeout_ms`,
and nothing after the call's own deadline. The attempt's provider cost is priced whichever
way it ends, cancellation included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import httpx

from toolcallstore.controls.pricing import to_micros_up
from toolcallstore.lanes import TRANSLATORS
from toolcallstore.lanes.base import (
    ChatRequest,
    Event,
    Finish,
    Malformed,
    PlainTranslator,
    StreamError,
    StreamParser,
    TextDelta,
    ToolCallDelta,
    Translator,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from toolcallstore.lanes.plan import Candidate, estimate_output_tokens
from toolcallstore.lanes.request import chat_request
from toolcallstore.lanes.sender import Sender, UpstreamFailed, route_target
from toolcallstore.money import micros_to_usd

MAX_PLAIN_ANSWER = 32 * 1024 * 1024


@dataclass(eq=False)
class Attempt:
    target: str
    provider: str
    started_us: int
    bills_on_cancel: bool
    worst_price_micros: int
    worst_cost: Decimal
    role: str = "primary"  # primary | hedge | retry | failover | resume
    first_token_ms: int | None = None
    outcome: str = "running"  # succeeded | failed | cut | cancelled
    error: UpstreamError | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    delivered_bytes: int = 0
    malformed: int = 0
    finish: str | None = None
    cost: Decimal = Decimal(0)
    estimated: bool = False
    byok: bool = False  # the tenant's own provider key: the provider bills the tenant
    delivered: bool = False  # its output reached the caller
    # Sent plain and answered 2xx: the provider generated (and billed) the whole answer even if
    # reading it failed.
    answered_plain: bool = False

    @classmethod
    def of(cls, candidate: Candidate, role: str) -> Attempt:
        model = candidate.model
        return cls(model.id, model.target.provider, time.time_ns() // 1000,
                   model.bills_on_cancel, candidate.worst_price_micros, candidate.worst_cost,
                   role)  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The attempt as the receipt shows it (provider cost is removed for tenants)."""
        return {
            "target": self.target,
            "role": self.role,
            "started": self.started_us // 1_000_000,
            "first_token_ms": self.first_token_ms,
            "outcome": self.outcome,
            "delivered": self.delivered,
            "error": None if self.error is None else {"code": self.error.code,
                                                     "status": self.error.status},
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_estimated": self.estimated,
            "byok": self.byok,
            "provider_cost_usd": micros_to_usd(to_micros_up(self.cost)),
        }  # fmt: skip


class AttemptFailed(Exception):
    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Conditions:
    """What every attempt of one call shares."""

    sender: Sender
    livemode: bool
    sandbox_url: str
    prompt_tokens: int  # the plan's estimate, for attempts that report no usage
    first_token_timeout_s: float
    idle_timeout_s: float
    ends_at: float  # loop time
    byok: Mapping[str, str] = field(repr=False)  # provider -> the tenant's own key (live mode)
    # Ask for the whole answer at once where the protocol can: a plain call with one target.
    # Its answer comes whole, so it is bounded by the call's deadline, not the first-token one.
    plain: bool = False


async def run_attempt(
    conditions: Conditions, candidate: Candidate, attempt: Attempt, params: dict[str, Any]
) -> AsyncGenerator[Event, None]:
    """The attempt's events from its first token on; raises AttemptFailed before it."""
    translator, whole, request = _upstream_request(conditions, candidate, attempt, params)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # A whole answer comes at once: bounded by the call's deadline, not the first-token one.
    first = conditions.ends_at if whole else started + conditions.first_token_timeout_s
    deadline = min(first, conditions.ends_at)
    pending: list[Event] = []  # events before the first token: not yet the caller's
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await stack.enter_async_context(
                        conditions.sender.stream(translator, request)
                    )
            except TimeoutError:
                raise AttemptFailed(_as_error(_stalled(True))) from None
            if whole is not None:
                attempt.answered_plain = True
                answer = await _whole_answer(response, whole, deadline)
                for out in _take_all(answer, attempt, pending, started, loop.time()):
                    yield out
            else:
                parser = translator.parser()
                chunks = response.aiter_raw()
                while True:
                    before_first = attempt.first_token_ms is None
                    events, ended = await _next_events(chunks, parser, deadline, before_first)
                    for event in events:  # each goes out before the next is looked at
                        for out in _take(event, attempt, pending, started, loop.time()):
                            yield out
                    if ended:
                        break
                    if attempt.first_token_ms is not None:
                        deadline = min(loop.time() + conditions.idle_timeout_s,
                                       conditions.ends_at)  # fmt: skip
    except UpstreamFailed as failed:
        fail(attempt, candidate, failed.error, conditions.prompt_tokens)
        raise AttemptFailed(failed.error) from None
    except AttemptFailed as failed:
        fail(attempt, candidate, failed.error, conditions.prompt_tokens)
        raise
    except (asyncio.CancelledError, GeneratorExit):
        if attempt.outcome == "running":
            attempt.outcome = "cancelled"
        price(attempt, candidate, conditions.prompt_tokens)
        raise
    _conclude(attempt, candidate, pending, conditions.prompt_tokens)


def _upstream_request(
    conditions: Conditions, candidate: Candidate, attempt: Attempt, params: dict[str, Any]
) -> tuple[Translator, PlainTranslator | None, UpstreamRequest]:
    """Where the attempt goes and what it sends; the translator again if it asks for the whole
    answer at once (a plain call whose protocol can: see `Conditions.plain`)."""
    model = candidate.model
    key = conditions.byok.get(model.target.provider) if conditions.livemode else None
    attempt.byok = key is not None
    target, key = route_target(model.target, key or model.api_key,
                               livemode=conditions.livemode,
                               sandbox_url=conditions.sandbox_url)  # fmt: skip
    translator = TRANSLATORS[target.protocol]
    asked = _request_for(candidate, params)
    if conditions.plain and isinstance(translator, PlainTranslator):
        return translator, translator, translator.build_plain(target, asked, key)
    return translator, None, translator.build(target, asked, key)


def _conclude(attempt: Attempt, candidate: Candidate, pending: list[Event], prompt: int) -> None:
    """The body ended: a failure if nothing reached the caller, else how it ended, priced."""
    if attempt.first_token_ms is None:
        error = _pending_failure(pending)
        fail(attempt, candidate, error, prompt)
        raise AttemptFailed(error)
    if attempt.outcome == "running":
        attempt.outcome = "succeeded" if attempt.finish else "cut"
    price(attempt, candidate, prompt)


def _request_for(candidate: Candidate, params: dict[str, Any]) -> ChatRequest:
    asked = chat_request(params, candidate.max_tokens)
    if candidate.model.only_temperature_1:
        # The model refuses any other temperature (and top_p beside it): it samples at its
        # fixed 1.0, the provider's default, whatever the caller asked.
        asked = replace(asked, temperature=None, top_p=None)
    return asked


def _take_all(
    events: list[Event], attempt: Attempt, pending: list[Event], started: float, now: float
) -> list[Event]:
    return [out for event in events for out in _take(event, attempt, pending, started, now)]


def _take(
    event: Event, attempt: Attempt, pending: list[Event], started: float, now: float
) -> list[Event]:
    """What of `event` reaches the caller: nothing before the first token (kept in
    `pending`), then the pending events and each event after."""
    out: list[Event] = []
    if attempt.first_token_ms is None:
        if not _opens(event, attempt, started, now):
            pending.append(event)
            return out
        out.extend(pending)
        pending.clear()
    _account(attempt, event)
    if not isinstance(event, Malformed):
        out.append(event)
    return out


def _opens(event: Event, attempt: Attempt, started: float, now: float) -> bool:
    """Whether `event` is the attempt's first token: content, or a finish."""
    if isinstance(event, Usage | Malformed):
        _account(attempt, event)
        return False
    if isinstance(event, StreamError):
        raise AttemptFailed(_as_error(event))
    if isinstance(event, TextDelta | ToolCallDelta | Finish):
        attempt.first_token_ms = int((now - started) * 1000)
        return True
    return False


def _account(attempt: Attempt, event: Event) -> None:
    if isinstance(event, TextDelta):
        attempt.delivered_bytes += len(event.text.encode())
    elif isinstance(event, ToolCallDelta):
        attempt.delivered_bytes += len(event.arguments) + len(event.name or "")
    elif isinstance(event, Usage):
        if event.input_tokens is not None:
            attempt.input_tokens = event.input_tokens
        if event.output_tokens is not None:
            attempt.output_tokens = event.output_tokens
    elif isinstance(event, Finish):
        attempt.finish = event.reason
    elif isinstance(event, StreamError):
        attempt.outcome = "cut"
        attempt.error = UpstreamError(200, event.code, event.message)
    elif isinstance(event, Malformed):
        attempt.malformed += 1


def fail(attempt: Attempt, candidate: Candidate, error: UpstreamError, prompt: int) -> None:
    attempt.outcome = "failed"
    attempt.error = error
    price(attempt, candidate, prompt)


def price(attempt: Attempt, candidate: Candidate, prompt_estimate: int) -> None:
    """The provider's cost of an attempt: its reported usage, else an estimate (flagged).
    An attempt refused with an HTTP error cost nothing; one cancelled or failed after the
    provider started work costs its prompt, or its whole worst case where the provider bills
    cancelled streams in full. A tenant's own key (BYOK) costs us nothing."""
    if attempt.outcome == "failed" and attempt.error is not None:
        if attempt.error.status != 200:
            return  # refused before any work (an HTTP error, no connection)
    early = attempt.outcome in ("failed", "cancelled") and attempt.first_token_ms is None
    if early and (attempt.bills_on_cancel or attempt.answered_plain):
        attempt.cost, attempt.estimated = candidate.worst_cost, True
    else:
        estimated = attempt.input_tokens is None or attempt.output_tokens is None
        prompt = prompt_estimate if attempt.input_tokens is None else attempt.input_tokens
        output = attempt.output_tokens
        if output is None:
            output = 0 if early else estimate_output_tokens(attempt.delivered_bytes)
        attempt.input_tokens, attempt.output_tokens = prompt, output
        attempt.cost, attempt.estimated = candidate.model.cost(prompt, output), estimated
    if attempt.byok:
        attempt.cost = Decimal(0)


async def _next_events(
    chunks: AsyncIterator[bytes], parser: StreamParser, deadline: float, before_first: bool
) -> tuple[list[Event], bool]:
    """The events of the next chunk of the body, and whether the body ended (or failed)."""
    try:
        async with asyncio.timeout_at(deadline):
            chunk = await anext(chunks)
    except StopAsyncIteration:
        return parser.close(), True
    except TimeoutError:
        return [_stalled(before_first)], True
    except httpx.TransportError as exc:
        return [_lost(exc)], True
    return parser.feed(chunk), False


async def _whole_answer(
    response: httpx.Response, translator: PlainTranslator, deadline: float
) -> list[Event]:
    """The events of a plain answer, read whole (bounded in size and by the call's deadline)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PLAIN_ANSWER:
                    return [StreamError("answer_too_large", "The answer exceeded 32 MiB.", False)]
    except TimeoutError:
        return [StreamError("timeout", "No whole answer before the call's deadline.")]
    except httpx.TransportError as exc:
        return [_lost(exc)]
    return translator.parse_plain(b"".join(chunks))


def _stalled(before_first_token: bool) -> StreamError:
    if before_first_token:
        return StreamError("first_token_timeout", "No first token within the target's timeout.")
    return StreamError("stream_stalled", "The provider stopped sending mid-stream.")


def _lost(exc: httpx.TransportError) -> StreamError:
    return StreamError("connection_lost", f"{type(exc).__name__}: {exc}"[:300])


def _as_error(event: StreamError) -> UpstreamError:
    return UpstreamError(200, event.code, event.message, retryable=event.retryable)


def _pending_failure(pending: list[Event]) -> UpstreamError:
    for event in pending:
        if isinstance(event, StreamError):
            return _as_error(event)
    return UpstreamError(200, "empty_stream", "The provider ended the stream without content.")
