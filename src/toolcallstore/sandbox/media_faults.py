"""What the media fakes share: their fault grammar, their jobs' clock, their submission counts and
the ways an answer goes wrong on the wire.

A media fault spec is the `{spec}` of `/fault/{spec}/<provider>/...`, comma-separated
`key=value`, like the LLM fakes' (`faults.py`), with media's own keys:

- `status` (+ `retry_after`): the submit is answered with that error, before anything is
  accepted (nothing is counted as submitted); `latency_ms` delays every answer.
- `stall_ms`: an accepted job stays queued this long before it can finish; a synchronous
  provider (Stability, Gemini) holds its answer this long instead.
- `polls=N`: an accepted job finishes at the Nth status poll (default 2: the first poll sees it
  running with progress), and not before `stall_ms` has passed.
- `fail_after_queued=1`: the job is accepted, then fails at the provider when it would finish.
- `nsfw=1`: the provider's content-policy refusal, in its own form (a 403, a filtered result,
  a blocked prompt).
- `cut_download=N`: an output's download ends after N bytes (the connection drops).
- `lose_answer=1`: the fake does the work (the submit is counted and the job exists), then drops
  the connection midway through the answer, as when a client's read times out.
- `poll_status=S` (+ `poll_fails=N`, default 1): the first N polls of the job get error S.
- `fail_first=N` / `every=N`: the failure faults hit only the first N submits with this spec
  (or every Nth), as in `faults.py`. Polls and downloads follow the faults their job was
  submitted with.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from starlette.responses import Response, StreamingResponse

from toolcallstore.sandbox.faults import (
    MAX_COUNTED_SPECS,
    MAX_DELAY_MS,
    FaultSpecError,
    _flag,
    _int_in,
    _seconds,
)

JobStage = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class MediaFaults:
    status: int | None = None
    retry_after: float | None = None
    latency_ms: int = 0
    stall_ms: int = 0
    polls: int = 2
    fail_after_queued: bool = False
    nsfw: bool = False
    cut_download: int | None = None
    lose_answer: bool = False
    poll_status: int | None = None
    poll_fails: int = 1
    fail_first: int = 0
    every: int = 0

    def shaping_only(self) -> MediaFaults:
        """These faults without the failures: what a request past `fail_first` gets."""
        return replace(
            MediaFaults(), latency_ms=self.latency_ms, stall_ms=self.stall_ms, polls=self.polls
        )


_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "status": (_int_in(400, 599), "an HTTP error status 400-599"),
    "retry_after": (_seconds, "seconds, 0-86400"),
    "latency_ms": (_int_in(0, MAX_DELAY_MS), f"milliseconds, 0-{MAX_DELAY_MS}"),
    "stall_ms": (_int_in(0, MAX_DELAY_MS), f"milliseconds, 0-{MAX_DELAY_MS}"),
    "polls": (_int_in(1, 10_000), "a poll count 1-10000"),
    "fail_after_queued": (_flag, "1 or 0"),
    "nsfw": (_flag, "1 or 0"),
    "cut_download": (_int_in(0, 1 << 30), "a byte count >= 0"),
    "lose_answer": (_flag, "1 or 0"),
    "poll_status": (_int_in(400, 599), "an HTTP error status 400-599"),
    "poll_fails": (_int_in(1, 10_000), "a poll count 1-10000"),
    "fail_first": (_int_in(0, 1_000_000), "a request count >= 0"),
    "every": (_int_in(0, 1_000_000), "a request count >= 0"),
}
assert set(_PARSERS) == {f.name for f in fields(MediaFaults)}


def parse_media_faults(spec: str) -> MediaFaults:
    """`status=503,retry_after=2` -> MediaFaults; raises FaultSpecError naming the bad key."""
    values: dict[str, Any] = {}
    for item in spec.split(","):
        if not item:
            continue
        key, _, raw = item.partition("=")
        if key not in _PARSERS:
            known = ", ".join(_PARSERS)
            raise FaultSpecError(f"Sandbox fault spec: unknown key '{key}' (known: {known}).")
        if key in values:
            raise FaultSpecError(f"Sandbox fault spec: key '{key}' is given twice.")
        convert, expected = _PARSERS[key]
        try:
            values[key] = convert(raw)
        except ValueError:
            raise FaultSpecError(
                f"Sandbox fault spec: bad value '{raw}' for '{key}' (expected {expected})."
            ) from None
    return MediaFaults(**values)


class MediaFailFirst:
    """Counts submits per spec string, so `fail_first=N` fails only the first N of them."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def admit(self, spec: str, faults: MediaFaults) -> MediaFaults:
        if faults.fail_first == 0 and faults.every == 0:
            return faults
        count = self._seen.pop(spec, 0) + 1
        if len(self._seen) >= MAX_COUNTED_SPECS:
            del self._seen[next(iter(self._seen))]
        self._seen[spec] = count
        if faults.every and count % faults.every == 0:
            return faults
        if not faults.every and count <= faults.fail_first:
            return faults
        return faults.shaping_only()


@dataclass
class Submissions:
    """How many generations a fake accepted, in all and per prompt (tests prove exactly-once
    submission with it, over HTTP: `GET /sandbox/<provider>/_submissions`)."""

    total: int = 0
    by_prompt: Counter[str] = field(default_factory=Counter)

    def count(self, prompt: str) -> None:
        self.total += 1
        self.by_prompt[prompt] += 1

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "by_prompt": dict(self.by_prompt)}


@dataclass
class FakeJob:
    """An accepted generation's progress, driven by its status polls and the clock."""

    id: str
    faults: MediaFaults
    accepted_at: float = field(default_factory=time.monotonic)
    polls: int = 0
    cancelled: bool = False

    def poll(self) -> tuple[JobStage, float]:
        """Counts a status poll; the job's stage and progress (0..1) after it."""
        self.polls += 1
        return self.stage()

    def stage(self) -> tuple[JobStage, float]:
        """The job's stage and progress (0..1) now, without counting a poll."""
        if self.cancelled:
            return "cancelled", 0.0
        stalled = time.monotonic() - self.accepted_at < self.faults.stall_ms / 1000
        if stalled or self.polls == 0:
            return "queued", 0.0
        if self.polls < self.faults.polls:
            return "running", round(self.polls / self.faults.polls, 2)
        return ("failed" if self.faults.fail_after_queued else "succeeded"), 1.0

    def poll_error(self) -> int | None:
        """The error status this poll gets (`poll_status` for the first `poll_fails` polls)."""
        if self.faults.poll_status is not None and self.polls <= self.faults.poll_fails:
            return self.faults.poll_status
        return None


async def sleep_ms(ms: int) -> None:
    if ms:
        await asyncio.sleep(ms / 1000)


async def delay(faults: MediaFaults, *, stall: bool = False) -> None:
    """Waits `latency_ms` (and `stall_ms` when asked: a synchronous provider's slow answer)."""
    await sleep_ms(faults.latency_ms + (faults.stall_ms if stall else 0))


class _Dropped(Exception):
    """Raised inside a response body: uvicorn then closes the connection mid-answer."""


def _broken(body: bytes, keep: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        if keep:
            yield body[:keep]
        await asyncio.sleep(0)
        raise _Dropped("sandbox fault: connection dropped")

    return chunks()


def lost_answer(response: Response) -> Response:
    """`response`'s status and headers, then half its body and a dropped connection."""
    body = bytes(response.body)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    headers["content-length"] = str(len(body))
    return StreamingResponse(_broken(body, len(body) // 2), response.status_code, headers)


def media_file(data: bytes, content_type: str, faults: MediaFaults) -> Response:
    """An output file's download, cut after `cut_download` bytes when the job says so."""
    if faults.cut_download is None or faults.cut_download >= len(data):
        return Response(data, media_type=content_type)
    headers = {"content-length": str(len(data)), "content-type": content_type}
    return StreamingResponse(_broken(data, faults.cut_download), 200, headers)
