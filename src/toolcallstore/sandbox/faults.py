"""Fault specs: the `{spec}` of `/fault/{spec}/<protocol>/...`, comma-separated `key=value`.

- `status` answers that error (a `code` alone means 400), after `latency_ms` once, with
  `retry_after` as headers; stream or not.
- `stall_ms`: 200 and headers at once, then nothing until the first frame; `latency_ms`: a delay
  before every content chunk. A non-stream answer waits `stall_ms + latency_ms x chunks`.
- Counted in content chunks (words, or tool-call argument fragments): `cut_after=N` ends the body
  after N, `error_after=N` sends the in-band error after N, `malformed_at=N` puts an unparseable
  frame before chunk N (from 1). These, `keepalive` and `no_done` apply to SSE streams only.
- Failure faults (all but words, latency_ms, keepalive) hit every request, or with
  `fail_first=N` only the first N requests with the same spec string, whatever the protocol,
  or with `every=N` only every Nth of them (a fault rate for benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

ErrorCode = Literal["context_length_exceeded", "content_policy"]

MAX_DELAY_MS = 300_000  # a fault must not pin a connection longer than a client would wait
MAX_WORDS = 10_000
MAX_COUNTED_SPECS = 4_096  # fail_first counters kept; the oldest spec is forgotten first


class FaultSpecError(ValueError):
    """A spec with an unknown key or a bad value; the message names the key."""


@dataclass(frozen=True)
class Faults:
    status: int | None = None
    retry_after: float | None = None
    code: ErrorCode | None = None
    latency_ms: int = 0
    stall_ms: int = 0
    cut_after: int | None = None
    error_after: int | None = None
    malformed_at: int | None = None
    no_usage: bool = False
    no_done: bool = False
    keepalive: bool = False
    words: int = 12
    fail_first: int = 0
    every: int = 0  # failure faults on every Nth request of this spec only (benchmarks)

    @property
    def error_status(self) -> int | None:
        """The HTTP status to answer instead of a reply; a `code` alone means 400."""
        if self.status is not None:
            return self.status
        return 400 if self.code is not None else None


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError
        return value

    return convert


def _seconds(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 86_400:
        raise ValueError
    return value


def _flag(raw: str) -> bool:
    if raw in ("1", "true"):
        return True
    if raw in ("0", "false"):
        return False
    raise ValueError


def _code(raw: str) -> ErrorCode:
    if raw == "context_length_exceeded":
        return "context_length_exceeded"
    if raw == "content_policy":
        return "content_policy"
    raise ValueError


# key -> (converter, what a good value looks like)
_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "status": (_int_in(400, 599), "an HTTP error status 400-599"),
    "retry_after": (_seconds, "seconds, 0-86400"),
    "code": (_code, "context_length_exceeded or content_policy"),
    "latency_ms": (_int_in(0, MAX_DELAY_MS), f"milliseconds, 0-{MAX_DELAY_MS}"),
    "stall_ms": (_int_in(0, MAX_DELAY_MS), f"milliseconds, 0-{MAX_DELAY_MS}"),
    "cut_after": (_int_in(0, MAX_WORDS), "a chunk count >= 0"),
    "error_after": (_int_in(0, MAX_WORDS), "a chunk count >= 0"),
    "malformed_at": (_int_in(1, MAX_WORDS), "a chunk number >= 1"),
    "no_usage": (_flag, "1 or 0"),
    "no_done": (_flag, "1 or 0"),
    "keepalive": (_flag, "1 or 0"),
    "words": (_int_in(1, MAX_WORDS), f"a word count 1-{MAX_WORDS}"),
    "fail_first": (_int_in(0, 1_000_000), "a request count >= 0"),
    "every": (_int_in(0, 1_000_000), "a request count >= 0"),
}
assert set(_PARSERS) == {f.name for f in fields(Faults)}


def parse_faults(spec: str) -> Faults:
    """`status=429,retry_after=2` -> Faults; raises FaultSpecError naming the offending key."""
    values: dict[str, Any] = {}
    for item in spec.split(","):
        if not item:
            continue
        key, _, raw = item.partition("=")
        if key not in _PARSERS:
            known = ", ".join(_PARSERS)
            raise FaultSpecError(f"Sandbox fault spec: unknown key '{key}' (known: {known}).")
        convert, expected = _PARSERS[key]
        if key in values:
            raise FaultSpecError(f"Sandbox fault spec: key '{key}' is given twice.")
        try:
            values[key] = convert(raw)
        except ValueError:
            raise FaultSpecError(
                f"Sandbox fault spec: bad value '{raw}' for '{key}' (expected {expected})."
            ) from None
    return Faults(**values)


class FailFirst:
    """Counts requests per spec string, so `fail_first=N` fails only the first N of them."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def admit(self, spec: str, faults: Faults) -> Faults:
        """All the faults for the first N requests of a spec; after that only the shaping ones."""
        if faults.fail_first == 0 and faults.every == 0:
            return faults
        count = self._seen.pop(spec, 0) + 1
        if len(self._seen) >= MAX_COUNTED_SPECS:
            del self._seen[next(iter(self._seen))]
        self._seen[spec] = count  # re-inserted last, so the dict stays ordered by recent use
        if faults.every and count % faults.every == 0:
            return faults
        if not faults.every and count <= faults.fail_first:
            return faults
        return replace(
            Faults(), words=faults.words, latency_ms=faults.latency_ms, keepalive=faults.keepalive
        )
