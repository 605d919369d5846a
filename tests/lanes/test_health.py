"""Circuit breakers on a fake clock: open on errors, cool down, one probe, close again."""

from __future__ import annotations

from toolcallstore.lanes.health import COOLDOWN_SECONDS, MIN_CALLS, BreakerPolicy, ProviderHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_errors_open_the_breaker_then_one_probe_after_the_cooldown_decides() -> None:
    clock = Clock()
    breaker = ProviderHealth(clock).breaker("t")
    for _ in range(MIN_CALLS - 1):
        breaker.record(False)
    assert breaker.state == "closed"  # too few calls for a verdict
    breaker.record(False)
    assert breaker.state == "open" and not breaker.available()
    clock.now += COOLDOWN_SECONDS
    assert breaker.available() and breaker.state == "half_open"
    breaker.started()
    assert not breaker.available()  # one probe at a time
    breaker.record(False)
    assert breaker.state == "open"  # the probe failed: open again, a new cooldown
    clock.now += COOLDOWN_SECONDS
    assert breaker.available()
    breaker.started()
    breaker.record(True, latency_ms=12, first_token_ms=3)
    assert breaker.state == "closed" and breaker.available()
    assert breaker.error_rate() == 0.0  # the failures that opened it no longer count


def test_a_healthy_target_stays_closed_under_occasional_errors() -> None:
    breaker = ProviderHealth(Clock()).breaker("t")
    for i in range(40):
        breaker.record(i % 5 != 0, latency_ms=10.0 + i)
    assert breaker.state == "closed"
    assert breaker.error_rate() == 0.2


def test_retry_after_blocks_the_target_until_it_passes() -> None:
    clock = Clock()
    breaker = ProviderHealth(clock).breaker("t")
    breaker.record(False, retry_after_s=20)
    assert breaker.blocked() and not breaker.available()
    clock.now += 20
    assert not breaker.blocked() and breaker.available()


def test_report_shows_percentiles_of_successes_only() -> None:
    clock = Clock()
    health = ProviderHealth(clock)
    breaker = health.breaker("t")
    for ms in range(1, 41):
        breaker.record(True, latency_ms=float(ms), first_token_ms=float(ms) / 10)
    breaker.record(False)
    (report,) = health.report(["t"])
    assert report["latency_ms"] == {"p50": 20.0, "p95": 38.0}
    assert report["first_token_ms"] == {"p50": 2.0, "p95": 3.8}
    assert report["calls"] == 41 and report["error_rate"] == round(1 / 41, 4)
    for _ in range(60):
        breaker.record(True, latency_ms=1.0)
    assert health.report(["t"])[0]["calls"] == 50  # the rolling window keeps the last 50
    assert health.observed_first_token_ms("never-called") == float("inf")


def test_the_report_names_the_last_error_and_lanes_with_their_own_breakers() -> None:
    clock = Clock()
    health = ProviderHealth(clock)
    health.breaker("t").record(False, error="500 server_error")
    clock.now += 2.5
    health.breaker("t").record(True, latency_ms=10.0, first_token_ms=4.0)
    [entry] = health.report(["t"])
    assert entry["last_error"] == {"error": "500 server_error", "age_s": 2.5}
    assert entry["calls"] == 2 and entry["first_token_ms"]["p50"] == 4.0
    assert health.lane_report() == []
    health.breaker("t", BreakerPolicy(min_calls=1), lane="fast").record(False, error="429 x")
    [lane] = health.lane_report()
    assert lane["lane"] == "fast" and lane["state"] == "open" and lane["target"] == "t"
    assert health.report(["t"])[0]["state"] == "closed"  # the shared breaker is unaffected
