"""One chat call over its lane: hedged attempts under the call's budget (DESIGN §7).

The first target starts at once. Another starts when an attempt fails before its first token,
or when `hedge_after_ms` passes without a token (up to `max_parallel` at once), and only while
what the call has committed stays within its hold: the cost of finished attempts plus the worst
case of live ones, in customer prices. So the provider costs of all attempts together never
exceed the budget. The first attempt to produce a content token wins; every other one is
cancelled at once (its stream closed) and costed. Before that token: 5xx or a lost connection
gets one quick retry, 429 and a silent target move on (and the breaker remembers), a larger
target takes `context_length_exceeded`, a content refusal is final. If nothing is left:
`AllProvidersFailed` with every attempt. After the first token a failure resumes on a target
that accepts an assistant prefix (lanes with `resume_mid_stream`), else the events end with a
`StreamError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from toolcallstore.lanes.attempt import (
    Attempt,
    AttemptFailed,
    Conditions,
    fail,
    price,
    run_attempt,
)
from toolcallstore.lanes.base import Event, StreamError, TextDelta, ToolCallDelta, UpstreamError
from toolcallstore.lanes.health import Breaker, ProviderHealth
from toolcallstore.lanes.plan import CallPlan, Candidate
from toolcallstore.lanes.sender import Sender

log = logging.getLogger("toolcallstore.lanes")

QUICK_RETRY_CODES = frozenset(
    {"server_error", "connection_error", "connection_refused", "connection_reset"}
)
FINAL_CODES = frozenset({"content_policy"})
# Failures that say nothing about the target's health (the request, or our account).
NOT_THE_TARGETS_FAULT = frozenset(
    {"content_policy", "context_length_exceeded", "invalid_request", "quota_exceeded"}
)
QUEUE_SIZE = 256  # events buffered from the winner ahead of a slow client


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


@dataclass(frozen=True)
class _Ended:
    error: UpstreamError | None


@dataclass
class LaneCall:
    sender: Sender
    plan: CallPlan
    params: dict[str, Any]
    livemode: bool
    sandbox_url: str
    health: ProviderHealth = field(default_factory=ProviderHealth)
    byok: Mapping[str, str] = field(default_factory=dict, repr=False)  # tenants' own keys
    # The whole call ends by then: its hold outlives it only by the grace period.
    max_seconds: float = 600.0
    # The caller takes the answer whole (not streamed): with one target, nothing to hedge or
    # resume, the upstream is asked for it whole too (where its protocol can).
    plain: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    winner: Attempt | None = None  # the first attempt whose output reached the caller
    producer: Attempt | None = None  # the one whose output reached the caller last (resumed)
    _race: _Race | None = None

    def more_ready(self) -> bool:
        """Whether the next event is already here (the caller may batch its writes)."""
        return self._race is not None and not self._race.queue.empty()

    async def events(self) -> AsyncGenerator[Event, None]:
        """The answer's events; raises AllProvidersFailed or Refused before any."""
        race = self._race = _Race(self)
        try:
            async for event in race.run():
                yield event
        finally:
            await race.stop_all()
            # The race points back at this call: unlinked, both go by reference counting
            # instead of waiting for the cycle collector (with all the call's events).
            self._race = None

    @property
    def delivered(self) -> list[Attempt]:
        """The attempts whose output reached the caller, in order (more than one if resumed)."""
        return [a for a in self.attempts if a.delivered]

    def as_if_ended_now(self) -> LaneCall:
        """A copy of the call as if it stopped now: its live attempts priced as cancelled after
        what they have produced (an estimate, flagged). For checkpoints of a running stream."""
        race = self._race
        attempts = []
        for attempt in self.attempts:
            copy = replace(attempt)
            candidate = race.candidate_of.get(attempt) if race is not None else None
            if copy.outcome == "running" and candidate is not None:
                copy.outcome = "cancelled"
                price(copy, candidate, self.plan.prompt_tokens)
                copy.estimated = True
            attempts.append(copy)
        return replace(self, attempts=attempts, _race=None)


class _Race:
    def __init__(self, call: LaneCall) -> None:
        self.call = call
        self.plan = call.plan
        self.lane = call.plan.lane
        self.loop = asyncio.get_running_loop()
        self.conditions = Conditions(
            sender=call.sender,
            livemode=call.livemode,
            sandbox_url=call.sandbox_url,
            prompt_tokens=call.plan.prompt_tokens,
            first_token_timeout_s=self.lane.first_token_timeout_ms / 1000,
            idle_timeout_s=self.lane.idle_timeout_ms / 1000,
            ends_at=self.loop.time() + call.max_seconds,
            byok=call.byok,
            plain=call.plain and len(call.plan.candidates) == 1,
        )
        self.queue: asyncio.Queue[tuple[Attempt, Event | _Ended]] = asyncio.Queue(QUEUE_SIZE)
        self.live: dict[Attempt, asyncio.Task[None]] = {}
        self.remaining: list[tuple[Candidate, str]] = [
            (c, "primary" if i == 0 else "failover") for i, c in enumerate(self._ordered())
        ]
        self.candidate_of: dict[Attempt, Candidate] = {}
        self.retried: set[str] = set()

    def _ordered(self) -> list[Candidate]:
        """The lane's order, by observed latency if asked; targets whose breaker is open go
        last, and a target inside a provider's Retry-After is left out."""
        health = self.call.health
        candidates = list(self.plan.candidates)
        if self.lane.order == "latency":
            candidates.sort(key=lambda c: health.observed_first_token_ms(c.model.id))
        now_ok = [c for c in candidates if self._breaker(c).available()]
        degraded = [
            c for c in candidates
            if c not in now_ok and not self._breaker(c).blocked()
        ]  # fmt: skip
        return now_ok + degraded

    def _breaker(self, candidate: Candidate) -> Breaker:
        """The candidate's breaker: the lane's own if the lane configures one, else the
        target's (shared by every lane that uses the target)."""
        lane = self.lane
        if lane.breaker is not None:
            return self.call.health.breaker(candidate.model.id, lane.breaker, lane.id)
        return self.call.health.breaker(candidate.model.id, candidate.model.breaker)

    # --- the race before the first token ------------------------------------------------------

    async def run(self) -> AsyncGenerator[Event, None]:
        hedge_s = self.lane.hedge_after_ms / 1000 if self.lane.hedge_after_ms > 0 else math.inf
        self._start_next(force=True)
        hedge_at = self.loop.time() + hedge_s
        while self.call.winner is None:
            if not self.live:
                raise AllProvidersFailed(self.call.attempts)
            try:
                async with asyncio.timeout_at(hedge_at if hedge_at != math.inf else None):
                    attempt, item = await self.queue.get()
            except TimeoutError:
                if len(self.live) < max(1, self.lane.max_parallel):
                    self._start_next(role="hedge")
                hedge_at = self.loop.time() + hedge_s
                continue
            if isinstance(item, _Ended):
                self._ended(attempt, item)
                continue
            self.call.winner = attempt
            attempt.delivered = True
            await self._cancel_others(attempt)
            # The first event goes through `_stream` too: it is part of the prefix a
            # resumption must carry (without it, the continuation re-answers from the start).
            async for event in self._stream(attempt, item):
                yield event
            return

    def _start_next(self, *, force: bool = False, role: str | None = None) -> bool:
        """Start the first remaining candidate the budget still pays for."""
        for i, (candidate, planned_role) in enumerate(self.remaining):
            if force or self._fits(candidate):
                del self.remaining[i]
                self._start(candidate, role or planned_role)
                return True
        return False

    def _fits(self, candidate: Candidate) -> bool:
        committed = sum(
            a.worst_price_micros if a in self.live else self.plan.price_of(a.cost)
            for a in self.call.attempts
            if a in self.live or a.cost
        )
        return committed + candidate.worst_price_micros <= self.plan.hold_micros

    def _start(
        self, candidate: Candidate, role: str, params: dict[str, Any] | None = None
    ) -> Attempt:
        attempt = Attempt.of(candidate, role)
        self.call.attempts.append(attempt)
        self.candidate_of[attempt] = candidate
        self._breaker(candidate).started()
        task = asyncio.create_task(self._pump(candidate, attempt, params or self.call.params))
        self.live[attempt] = task
        return attempt

    async def _pump(self, candidate: Candidate, attempt: Attempt, params: dict[str, Any]) -> None:
        started = self.loop.time()
        try:
            stream = run_attempt(self.conditions, candidate, attempt, params)
            async with contextlib.aclosing(stream):
                async for event in stream:
                    await self.queue.put((attempt, event))
        except AttemptFailed as failed:
            self._observe(attempt, started, failed.error)
            await self.queue.put((attempt, _Ended(failed.error)))
            return
        except asyncio.CancelledError:
            if attempt.outcome == "running":  # cancelled before its request went out
                attempt.outcome = "cancelled"
            raise
        except Exception as exc:  # a bug here must fail the attempt, not hang the call
            log.exception("attempt on %s failed unexpectedly", attempt.target)
            message = f"{type(exc).__name__}: {exc}"[:300]
            if attempt.first_token_ms is not None:
                # Mid-answer: it ends in-band as a cut stream does, and what the provider
                # produced is costed (as "failed", it would have cost nothing).
                attempt.outcome = "cut"
                attempt.error = UpstreamError(200, "internal_error", message)
                price(attempt, candidate, self.conditions.prompt_tokens)
                await self.queue.put((attempt, StreamError("internal_error", message, False)))
                await self.queue.put((attempt, _Ended(None)))
                return
            error = UpstreamError(0, "internal_error", message)
            fail(attempt, candidate, error, self.conditions.prompt_tokens)
            await self.queue.put((attempt, _Ended(error)))
            return
        self._observe(attempt, started, attempt.error if attempt.outcome == "cut" else None)
        await self.queue.put((attempt, _Ended(None)))

    def _observe(self, attempt: Attempt, started: float, error: UpstreamError | None) -> None:
        if error is not None and error.code in NOT_THE_TARGETS_FAULT:
            return
        breaker = self._breaker(self.candidate_of[attempt])
        elapsed_ms = (self.loop.time() - started) * 1000
        breaker.record(error is None, elapsed_ms if error is None else None,
                       attempt.first_token_ms,
                       error.retry_after_s if error is not None else None,
                       None if error is None else f"{error.status} {error.code}")  # fmt: skip

    def _ended(self, attempt: Attempt, ended: _Ended) -> None:
        """An attempt failed before its first token: retry, fail over, or give up."""
        self.live.pop(attempt, None)
        error = ended.error
        assert error is not None
        if error.code in FINAL_CODES:
            raise Refused(error, self.call.attempts)
        candidate = self.candidate_of[attempt]
        if error.code in QUICK_RETRY_CODES and candidate.model.id not in self.retried:
            self.retried.add(candidate.model.id)
            self.remaining.insert(0, (candidate, "retry"))
        self._start_next()

    async def _cancel_others(self, winner: Attempt) -> None:
        losers = {a: t for a, t in self.live.items() if a is not winner}
        for task in losers.values():
            task.cancel()
        if losers:
            await asyncio.gather(*losers.values(), return_exceptions=True)
        _mark_unstarted(losers)
        self.live = {a: t for a, t in self.live.items() if a is winner}

    # --- after the first token --------------------------------------------------------------

    async def _stream(self, attempt: Attempt, first: Event) -> AsyncGenerator[Event, None]:
        """The winner's events from its first to the end; a failure resumes on another
        target if allowed."""
        text: list[str] = []
        tools = False
        cut: StreamError | None = None  # the failure a resumption is trying to hide
        head: tuple[Attempt, Event | _Ended] | None = (attempt, first)
        while True:
            source, item = head if head is not None else await self.queue.get()
            head = None
            if source is not attempt:
                continue  # a late event of a cancelled loser or of the cut attempt
            if isinstance(item, _Ended):
                self.live.pop(attempt, None)
                if item.error is None or cut is None:
                    return
                item = cut  # the resumption failed before its first token: try another
            if isinstance(item, StreamError):
                resumed = None if tools else self._resume("".join(text))
                if resumed is None:
                    yield cut or item  # the original failure, never a prefill refusal
                    return
                cut = cut or item
                self.live.pop(attempt, None)
                attempt = resumed
                continue
            if isinstance(item, TextDelta) and not item.refusal:
                text.append(item.text)
            elif isinstance(item, TextDelta | ToolCallDelta):
                tools = True  # tool calls and refusals are not resumed elsewhere
            attempt.delivered = True
            self.call.producer = attempt
            cut = None
            yield item

    def _resume(self, prefix: str) -> Attempt | None:
        """Continue the answer on a target that accepts an assistant prefix, if the lane
        allows it and the budget still pays for it."""
        if not self.lane.resume_mid_stream or not prefix:
            return None
        for i, (candidate, _) in enumerate(self.remaining):
            if candidate.model.supports_prefill and self._fits(candidate):
                del self.remaining[i]
                messages = [*self.call.params["messages"],
                            {"role": "assistant", "content": prefix}]  # fmt: skip
                params = {**self.call.params, "messages": messages}
                return self._start(candidate, "resume", params)
        return None

    async def stop_all(self) -> None:
        """Cancel whatever still runs (a caller that stopped reading, or a failure)."""
        tasks = list(self.live.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        _mark_unstarted(self.live)
        self.live.clear()


def _mark_unstarted(attempts: Iterable[Attempt]) -> None:
    """An attempt whose task was cancelled before its first step never ran its own cancel
    handling: it is cancelled (at no cost: its request never went out), not running forever."""
    for attempt in attempts:
        if attempt.outcome == "running":
            attempt.outcome = "cancelled"
