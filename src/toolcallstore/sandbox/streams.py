"""Playing a stream with its faults: each protocol supplies its frames, this decides when they
go out and which ones are cut, corrupted or replaced by an in-band error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from toolcallstore.sandbox.faults import Faults


@dataclass(frozen=True)
class Framing:
    """A protocol's special frames."""

    error: bytes  # the in-band error sent for `error_after`
    keepalive: bytes
    malformed: bytes  # a frame no parser can read


@dataclass(frozen=True)
class StreamPlan:
    head: Sequence[bytes]  # before any content: message_start, the role chunk, ...
    content: Sequence[bytes]  # one frame per content chunk (a word or an arguments fragment)
    finish: Sequence[bytes]  # finish reason and usage
    terminal: Sequence[bytes] = ()  # `[DONE]` / `message_stop`, dropped by `no_done`


async def play(plan: StreamPlan, framing: Framing, faults: Faults) -> AsyncIterator[bytes]:
    """The body of a streamed answer; cancelled with the request when the client goes away."""
    if faults.stall_ms:
        await asyncio.sleep(faults.stall_ms / 1000)
    for frame in plan.head:
        yield frame
    stop = _stop_after(faults, len(plan.content))
    latency = faults.latency_ms / 1000
    for number, frame in enumerate(plan.content[:stop], start=1):
        if latency:
            await asyncio.sleep(latency)
        if faults.keepalive and number > 1:
            yield framing.keepalive
        if faults.malformed_at == number:
            yield framing.malformed
        yield frame
    if faults.cut_after is not None and (
        faults.error_after is None or faults.cut_after < faults.error_after
    ):
        return
    if faults.error_after is not None:
        yield framing.error
        return
    for frame in plan.finish:
        yield frame
    if not faults.no_done:
        for frame in plan.terminal:
            yield frame


def _stop_after(faults: Faults, total: int) -> int:
    stops = [n for n in (faults.cut_after, faults.error_after) if n is not None]
    return min([total, *stops])


async def wait_like_a_stream(faults: Faults, chunks: int) -> None:
    """A non-stream answer takes as long as its stream would have."""
    delay_ms = faults.stall_ms + faults.latency_ms * chunks
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
