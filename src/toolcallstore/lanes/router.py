"""One chat call over its lane's targets, one attempt at a time (DESIGN §7; hedging later).

`LaneCall.events()` yields the normalised events of the attempt that produced the first content
token. Before that token, a failure moves to the next target: 5xx or a connection failure gets
one quick retry on the same target, 429 and a silent target (no first token in time) are not
retried in this call, `context_length_exceeded` moves to a larger target if any, a content
refusal is final. If every target fails, `AllProvidersFailed` lists the attempts. After the
first token, a failure (in-band error, cut stream, idle stall) ends the events with a
`StreamError`: the caller ends its stream with an in-band error and settles what was delivered.
Every attempt is recorded with its timing, outcome and provider cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from toolcallstore.lanes import TRANSLATORS
from toolcallstore.lanes.base import (
    Event,
    Finish,
    Malformed,
    StreamError,
    StreamParser,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    Usage,
)
from toolcallstore.lanes.plan import CallPlan, Candidate, estimate_output_tokens
from toolcallstore.lanes.request import chat_request
from toolcallstore.lanes.sender import Sender, UpstreamFailed, route_target
from toolcallstore.money import micros_to_usd
from toolcallstore.pricing import to_micros_up

QUICK_RETRY_CODES = frozenset({"server_error", "connection_error"})
FINAL_CODES = frozenset({"content_policy"})


@dataclass
class Attempt:
    target: str
    provider: str
    started_us: int
    bills_on_cancel: bool
    worst_price_micros: int
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

    def record(self) -> dict[str, Any]:
        """The attempt as the receipt shows it (provider cost is removed for tenants)."""
        return {
            "target": self.target,
            "started": self.started_us // 1_000_000,
            "first_token_ms": self.first_token_ms,
            "outcome": self.outcome,
            "error": None if self.error is None else {"code": self.error.code,
                                                     "status": self.error.status},
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_estimated": self.estimated,
            "provider_cost_usd": micros_to_usd(to_micros_up(self.cost)),
        }  # fmt: skip


class AllProvidersFailed(Exception):
    def __init__(self, attempts: list[Attempt]) -> None:
        super().__init__("every target failed")
        self.attempts = attempts


class Refused(Exception):
    """A target refused the request for what it says (content policy): no other target tries."""

    def __init__(self, error: UpstreamError, attempts: list[Attempt]) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


class _Failed(Exception):
    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class LaneCall:
    sender: Sender
    plan: CallPlan
    params: dict[str, Any]
    livemode: bool
    sandbox_url: str
    # The whole call ends by then (loop time): its hold outlives it only by the grace period.
    max_seconds: float = 600.0
    attempts: list[Attempt] = field(default_factory=list)
    winner: Attempt | None = None
    _ends_at: float | None = None

    async def events(self) -> AsyncGenerator[Event, None]:
        """The winning attempt's events; raises AllProvidersFailed or Refused before any."""
        for candidate in self.plan.candidates:
            for try_number in range(2):
                attempt = self._start(candidate)
                try:
                    # aclosing: a consumer that stops early closes the upstream at once.
                    async with contextlib.aclosing(self._attempt(candidate, attempt)) as stream:
                        async for event in stream:
                            yield event
                    return
                except _Failed as failed:
                    self._fail(attempt, candidate, failed.error)
                    if failed.error.code in FINAL_CODES:
                        raise Refused(failed.error, self.attempts) from None
                    if try_number or failed.error.code not in QUICK_RETRY_CODES:
                        break
        raise AllProvidersFailed(self.attempts)

    def _start(self, candidate: Candidate) -> Attempt:
        model = candidate.model
        attempt = Attempt(model.id, model.target.provider, time.time_ns() // 1000,
                          model.bills_on_cancel, candidate.worst_price_micros)  # fmt: skip
        self.attempts.append(attempt)
        return attempt

    async def _attempt(self, candidate: Candidate, attempt: Attempt) -> AsyncGenerator[Event, None]:
        model = candidate.model
        target, key = route_target(model.target, model.api_key, livemode=self.livemode,
                                   sandbox_url=self.sandbox_url)  # fmt: skip
        translator = TRANSLATORS[target.protocol]
        request = translator.build(target, chat_request(self.params, candidate.max_tokens), key)
        lane = self.plan.lane
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._ends_at is None:
            self._ends_at = started + self.max_seconds
        deadline = min(started + lane.first_token_timeout_ms / 1000, self._ends_at)
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout_at(deadline):
                        response = await stack.enter_async_context(
                            self.sender.stream(translator, request)
                        )
                except TimeoutError:
                    raise _Failed(_as_error(_stalled(True))) from None
                parser = translator.parser()
                chunks = response.aiter_raw()
                pending: list[Event] = []  # events before the first token: not yet the winner's
                while True:
                    events, ended = await _next_events(
                        chunks, parser, deadline, attempt.first_token_ms is None
                    )
                    for event in events:
                        for out in self._take(event, attempt, pending, started, loop.time()):
                            yield out
                    if ended:
                        break
                    if attempt.first_token_ms is not None:
                        deadline = min(loop.time() + lane.idle_timeout_ms / 1000, self._ends_at)
        except UpstreamFailed as failed:
            raise _Failed(failed.error) from None
        except (asyncio.CancelledError, GeneratorExit):
            if attempt.outcome == "running":
                attempt.outcome = "cancelled"
            self._price(attempt, candidate)
            raise
        if attempt.first_token_ms is None:
            raise _Failed(_pending_failure(pending))
        if attempt.outcome == "running":
            attempt.outcome = "succeeded" if attempt.finish else "cut"
        self._price(attempt, candidate)

    def _take(
        self, event: Event, attempt: Attempt, pending: list[Event], started: float, now: float
    ) -> list[Event]:
        """What of `event` reaches the caller: nothing before the first token (kept in
        `pending`), then the pending events and each event after."""
        out: list[Event] = []
        if attempt.first_token_ms is None:
            if not self._opens(event, attempt, started, now):
                pending.append(event)
                return out
            self.winner = attempt
            out.extend(pending)
            pending.clear()
        self._account(attempt, event)
        if not isinstance(event, Malformed):
            out.append(event)
        return out

    def _opens(self, event: Event, attempt: Attempt, started: float, now: float) -> bool:
        """Whether `event` makes this attempt the winner: the first content (or a finish)."""
        if isinstance(event, Usage | Malformed):
            self._account(attempt, event)
            return False
        if isinstance(event, StreamError):
            raise _Failed(_as_error(event))
        if isinstance(event, TextDelta | ToolCallDelta | Finish):
            attempt.first_token_ms = int((now - started) * 1000)
            return True
        return False

    def _account(self, attempt: Attempt, event: Event) -> None:
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

    def _fail(self, attempt: Attempt, candidate: Candidate, error: UpstreamError) -> None:
        attempt.outcome = "failed"
        attempt.error = error
        self._price(attempt, candidate)

    def _price(self, attempt: Attempt, candidate: Candidate) -> None:
        """The provider's cost of an attempt: its reported usage, else an estimate (flagged).
        An attempt refused with an HTTP error cost nothing; one cancelled or failed after the
        provider started work costs its prompt, or its whole worst case where the provider
        bills cancelled streams in full."""
        model = candidate.model
        if attempt.outcome == "failed" and attempt.error is not None:
            if attempt.error.status != 200:
                return  # refused before any work (an HTTP error, no connection)
        finished_early = attempt.outcome in ("failed", "cancelled") and not attempt.first_token_ms
        if finished_early and attempt.bills_on_cancel:
            attempt.cost, attempt.estimated = candidate.worst_cost, True
            return
        estimated = attempt.input_tokens is None or attempt.output_tokens is None
        prompt = self.plan.prompt_tokens if attempt.input_tokens is None else attempt.input_tokens
        output = attempt.output_tokens
        if output is None:
            output = estimate_output_tokens(attempt.delivered_bytes)
        if attempt.outcome == "cancelled" and not attempt.first_token_ms:
            output = 0
        attempt.input_tokens, attempt.output_tokens = prompt, output
        attempt.cost, attempt.estimated = model.cost(prompt, output), estimated


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
