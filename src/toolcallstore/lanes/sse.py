"""Server-sent events: an incremental decoder, and the skeleton of a parser whose frames are JSON.

The decoder follows the WHATWG event-stream rules that the three LLM protocols rely on; `id` and
`retry` fields are dropped because no provider resumes a stream.
"""

from __future__ import annotations

import codecs
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from toolcallstore.lanes.base import (
    Done,
    Event,
    Finish,
    Malformed,
    StreamError,
    TextDelta,
    ToolCallDelta,
)


class SSEEvent(NamedTuple):
    event: str  # "message" when the frame named none
    data: str  # the frame's `data:` lines joined by "\n"


class SSEDecoder:
    """Bytes split anywhere in, complete events out."""

    __slots__ = ("_decode", "_tail", "_skip_lf", "_event", "_data")

    def __init__(self) -> None:
        # Incremental, so a multi-byte character split across two reads decodes whole.
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        # The unterminated last line, in pieces: joining once beats re-copying a long line (an
        # inline image) on every read.
        self._tail: list[str] = []
        self._skip_lf = False  # the last read ended in "\r", so a leading "\n" belongs to it
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._feed_text(self._decode(chunk))

    def close(self) -> list[SSEEvent]:
        """The body ended: a last frame without its blank line still counts if it has data."""
        out = self._feed_text(self._decode(b"", True))
        if self._tail:
            self._take_line("".join(self._tail), out)
            self._tail.clear()
        self._take_line("", out)
        return out

    def _feed_text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if "\r" in text:
            self._skip_lf = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            self._tail.append(text)
            return []
        lines = text.split("\n")
        if self._tail:
            self._tail.append(lines[0])
            lines[0] = "".join(self._tail)
            self._tail.clear()
        last = lines.pop()
        if last:
            self._tail.append(last)
        out: list[SSEEvent] = []
        for line in lines:
            self._take_line(line, out)
        return out

    def _take_line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._data = []
            self._event = ""
            return
        if line[0] == ":":  # a comment: keep-alives such as ": OPENROUTER PROCESSING"
            return
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


class JSONEventParser(ABC):
    """A `StreamParser` for protocols whose every SSE frame is one JSON document.

    Subclasses implement `take` (one frame) and `finish` (the body ended). A frame whose JSON does
    not parse, or whose shape is not what the protocol promises, becomes `Malformed` and the
    stream goes on: one bad frame from a provider should not cost the whole answer.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        # Read off the events actually emitted, so a frame dropped as Malformed halfway through
        # cannot leave the parser believing it finished.
        self.finished = False  # a Finish was emitted
        self.done = False  # the provider's end marker was emitted
        self.failed = False  # a StreamError was emitted

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for frame in self._sse.feed(data):
            self._take_frame(frame, out)
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        for frame in self._sse.close():
            self._take_frame(frame, out)
        self.finish(out)
        return out

    def _take_frame(self, frame: SSEEvent, out: list[Event]) -> None:
        events: list[Event] = []
        try:
            self.take(frame.event, frame.data, events)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            # orjson.JSONDecodeError is a ValueError; the others are a payload of the wrong shape.
            out.append(Malformed(frame.data.encode()))
            return
        if not all(map(well_typed, events)):  # valid JSON, but e.g. a tool name of 7
            out.append(Malformed(frame.data.encode()))
            return
        for event in events:
            if isinstance(event, Finish):
                self.finished = True
            elif isinstance(event, Done):
                self.done = True
            elif isinstance(event, StreamError):
                self.failed = True
        out.extend(events)

    @abstractmethod
    def take(self, event: str, data: str, out: list[Event]) -> None:
        """Append the events of one frame to `out`."""

    @abstractmethod
    def finish(self, out: list[Event]) -> None:
        """Append what the end of the body means: nothing, Done, or a cut stream."""


def well_typed(event: Event) -> bool:
    """Whether an event carries the types its class promises: the parsers take fields from the
    provider's JSON as they come, and a wrong type would fail later, far from the frame."""
    if isinstance(event, TextDelta):
        return isinstance(event.text, str)  # (a refusal's too)
    if isinstance(event, ToolCallDelta):
        return (
            isinstance(event.index, int)
            and isinstance(event.arguments, str)
            and isinstance(event.id, str | None)
            and isinstance(event.name, str | None)
        )
    if isinstance(event, StreamError):
        return isinstance(event.code, str) and isinstance(event.message, str)
    return True


def as_int(value: Any) -> int | None:
    """A token count from a provider payload, or None when absent or not a count."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
