"""Per-target circuit breakers and the latency figures `GET /v1/health/providers` shows.

Each target keeps its recent outcomes (a rolling window by count and age). The breaker opens
when the window's error rate reaches the threshold over enough calls, or when the provider said
`Retry-After`; after the cooldown one probe call is let through (half-open), whose success
closes it again and whose failure reopens it. Open targets are tried last, and only when
nothing healthy is left. State is per process: each process learns on its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

State = Literal["closed", "open", "half_open"]

WINDOW = 50  # outcomes kept per target
WINDOW_SECONDS = 300.0  # and none older than this
MIN_CALLS = 5  # no verdict on fewer outcomes
ERROR_RATE_TO_OPEN = 0.5
COOLDOWN_SECONDS = 30.0


@dataclass(frozen=True)
class BreakerPolicy:
    """A breaker's settings: the defaults above, or a target's or lane's `breaker` in
    models.json."""

    window: int = WINDOW
    window_seconds: float = WINDOW_SECONDS
    min_calls: int = MIN_CALLS
    error_rate_to_open: float = ERROR_RATE_TO_OPEN
    cooldown_seconds: float = COOLDOWN_SECONDS

    @classmethod
    def of(cls, entry: Mapping[str, Any] | None) -> BreakerPolicy | None:
        """The policy of a models.json `breaker` object (schema-checked), None without one."""
        if entry is None:
            return None
        default = cls()
        return cls(
            window=int(entry.get("window", default.window)),
            window_seconds=float(entry.get("window_s", default.window_seconds)),
            min_calls=int(entry.get("min_calls", default.min_calls)),
            error_rate_to_open=float(entry.get("error_rate_to_open", default.error_rate_to_open)),
            cooldown_seconds=float(entry.get("cooldown_s", default.cooldown_seconds)),
        )


DEFAULT_POLICY = BreakerPolicy()


@dataclass
class Sample:
    at: float
    ok: bool
    latency_ms: float | None
    first_token_ms: float | None


@dataclass
class Breaker:
    clock: Callable[[], float]
    policy: BreakerPolicy = DEFAULT_POLICY
    samples: deque[Sample] = field(default_factory=deque)
    state: State = "closed"
    opened_at: float = 0.0
    blocked_until: float = 0.0  # Retry-After
    probing: bool = False
    # The latest failure ("500 server_error") and when: what an operator asks first.
    last_error: str | None = None
    last_error_at: float = 0.0

    def __post_init__(self) -> None:
        self.samples = deque(self.samples, maxlen=self.policy.window)

    def adopt(self, policy: BreakerPolicy) -> None:
        """Take new settings (a models file reloaded), keeping what it has seen."""
        if policy != self.policy:
            self.policy = policy
            self.samples = deque(self.samples, maxlen=policy.window)

    def _recent(self) -> list[Sample]:
        horizon = self.clock() - self.policy.window_seconds
        return [s for s in self.samples if s.at >= horizon]

    def error_rate(self) -> float:
        recent = self._recent()
        return 0.0 if not recent else sum(not s.ok for s in recent) / len(recent)

    def blocked(self) -> bool:
        """Inside a provider's Retry-After: not to be called at all."""
        return self.clock() < self.blocked_until

    def available(self) -> bool:
        """Whether a call may go to this target now (a half-open breaker admits one probe)."""
        now = self.clock()
        if now < self.blocked_until:
            return False
        if self.state == "open" and now - self.opened_at >= self.policy.cooldown_seconds:
            self.state = "half_open"
            self.probing = False
        if self.state == "half_open":
            return not self.probing
        return self.state == "closed"

    def started(self) -> None:
        if self.state == "half_open":
            self.probing = True

    def record(
        self,
        ok: bool,
        latency_ms: float | None = None,
        first_token_ms: float | None = None,
        retry_after_s: float | None = None,
        error: str | None = None,
    ) -> None:
        now = self.clock()
        self.samples.append(Sample(now, ok, latency_ms, first_token_ms))
        if not ok:
            self.last_error, self.last_error_at = error or "failed", now
        if retry_after_s:
            self.blocked_until = max(self.blocked_until, now + retry_after_s)
        if self.state == "half_open":
            self.probing = False
            self._move("closed" if ok else "open", now)
            return
        recent = self._recent()
        failures = sum(not s.ok for s in recent)
        policy = self.policy
        if len(recent) >= policy.min_calls and failures / len(recent) >= policy.error_rate_to_open:
            self._move("open", now)

    def _move(self, state: State, now: float) -> None:
        if state == "open" and self.state != "open":
            self.opened_at = now
        if state == "closed":
            # A fresh start: the failures that opened it no longer count against it.
            self.samples = deque((s for s in self.samples if s.ok), maxlen=self.policy.window)
        self.state = state

    def p(self, pct: float, kind: Literal["latency_ms", "first_token_ms"]) -> float | None:
        values: list[float] = sorted(
            v for s in self._recent() if s.ok and (v := getattr(s, kind)) is not None
        )
        if not values:
            return None
        return values[min(len(values) - 1, math.ceil(pct / 100 * len(values)) - 1)]


class ProviderHealth:
    """The breakers of every target this process has called."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[tuple[str, str | None], Breaker] = {}

    def breaker(
        self, target: str, policy: BreakerPolicy = DEFAULT_POLICY, lane: str | None = None
    ) -> Breaker:
        """The target's breaker; with `lane`, that lane's own breaker of it (a lane with its
        own settings keeps its own state, so other lanes' calls do not trip it)."""
        found = self._breakers.get((target, lane))
        if found is None:
            found = self._breakers[(target, lane)] = Breaker(self._clock, policy)
        elif found.policy is not policy:
            found.adopt(policy)
        return found

    def _shared(self, target: str) -> Breaker:
        """The target's own breaker, whatever its settings (a lookup changes none)."""
        found = self._breakers.get((target, None))
        return found if found is not None else self.breaker(target)

    def observed_first_token_ms(self, target: str) -> float:
        """The target's median time to first token, or infinity if unknown (tried last
        among equals when ordering by latency)."""
        value = self._shared(target).p(50, "first_token_ms")
        return math.inf if value is None else value

    def report(self, targets: list[str]) -> list[dict[str, Any]]:
        now = self._clock()
        return [_entry(target, self._shared(target), now) for target in targets]

    def lane_report(self) -> list[dict[str, Any]]:
        """The breakers lanes with their own settings keep of their targets (`lane` added)."""
        now = self._clock()
        return [
            {**_entry(target, breaker, now), "lane": lane}
            for (target, lane), breaker in sorted(
                self._breakers.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
            if lane is not None
        ]


def _entry(target: str, b: Breaker, now: float) -> dict[str, Any]:
    available = b.available()
    recent = b._recent()
    return {
        "target": target,
        "state": b.state,
        "available": available,
        "retry_after_s": max(0.0, round(b.blocked_until - now, 3)) or None,
        "calls": len(recent),
        "error_rate": round(b.error_rate(), 4),
        "latency_ms": {"p50": b.p(50, "latency_ms"), "p95": b.p(95, "latency_ms")},
        "first_token_ms": {"p50": b.p(50, "first_token_ms"),
                           "p95": b.p(95, "first_token_ms")},
        "last_error": None if b.last_error is None else {
            "error": b.last_error, "age_s": round(now - b.last_error_at, 1)},
    }  # fmt: skip
