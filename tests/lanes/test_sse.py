"""The SSE decoder on byte streams split every way a network can split them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolcallstore.lanes.base import Event, StreamParser
from toolcallstore.lanes.sse import SSEDecoder, SSEEvent


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def decode(data: bytes, cuts: Iterable[int] = ()) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces(data, cuts):
        events += decoder.feed(piece)
    return events + decoder.close()


def parse(
    make_parser: Callable[[], StreamParser], data: bytes, cuts: Iterable[int] = ()
) -> list[Event]:
    parser = make_parser()
    events: list[Event] = []
    for piece in pieces(data, cuts):
        events += parser.feed(piece)
    return events + parser.close()


def parse_every_split(make_parser: Callable[[], StreamParser], data: bytes) -> list[Event]:
    """The events of `data`, after checking that every split of it gives the same ones."""
    whole = parse(make_parser, data)
    for cut in range(1, len(data)):
        assert parse(make_parser, data, [cut]) == whole, f"split at byte {cut}"
    assert parse(make_parser, data, range(1, len(data))) == whole, "one byte at a time"
    return whole


def splits(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=30)


MIXED = (
    b": OPENROUTER PROCESSING\n\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: line one\ndata:line two\n\n"
    b": keep-alive\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\n\n"
    b'event: error\ndata: {"b": 2}\n\n'
)
MIXED_EVENTS = [
    SSEEvent("message_start", '{"a": 1}'),
    SSEEvent("message", "line one\nline two"),
    SSEEvent("message", "café € 😀"),
    SSEEvent("error", '{"b": 2}'),
]


def test_events_come_out_whole_however_the_bytes_are_split() -> None:
    assert decode(MIXED) == MIXED_EVENTS
    for cut in range(1, len(MIXED)):
        assert decode(MIXED, [cut]) == MIXED_EVENTS, f"split at byte {cut}"
    assert decode(MIXED, range(1, len(MIXED))) == MIXED_EVENTS


@given(splits(MIXED))
def test_random_splits_give_the_same_events(cuts: list[int]) -> None:
    assert decode(MIXED, cuts) == MIXED_EVENTS


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_gives_the_same_events(newline: bytes) -> None:
    data = MIXED.replace(b"\n", newline)
    for cut in range(1, len(data)):
        assert decode(data, [cut]) == MIXED_EVENTS, f"split at byte {cut}"


def test_a_crlf_split_between_cr_and_lf_is_one_line_break_not_two() -> None:
    # Were "\r" | "\n" read as two breaks, the blank line would end the event after "a".
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SSEEvent("message", "a\nb")]


def test_comments_and_blank_lines_alone_make_no_events() -> None:
    assert decode(b": OPENROUTER PROCESSING\n\n: ping\n\n\n\n") == []


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert decode(b"data:x\n\ndata:  indented\n\n") == [
        SSEEvent("message", "x"),
        SSEEvent("message", " indented"),
    ]


def test_the_event_name_applies_to_its_own_event_only() -> None:
    assert decode(b"event: ping\ndata: {}\n\ndata: {}\n\n") == [
        SSEEvent("ping", "{}"),
        SSEEvent("message", "{}"),
    ]


def test_an_empty_data_field_is_still_an_event() -> None:
    assert decode(b"data:\n\n") == [SSEEvent("message", "")]


def test_a_last_event_without_its_blank_line_is_flushed_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.close() == [SSEEvent("message", "[DONE]")]
    assert decode(b"event: message_stop\ndata: {}") == [SSEEvent("message_stop", "{}")]


def test_a_trailing_event_without_data_is_not_flushed() -> None:
    assert decode(b"data: 1\n\nevent: message_stop\n") == [SSEEvent("message", "1")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\xfe ok\n\n") == [SSEEvent("message", "\ufffd\ufffd ok")]


def test_a_character_cut_off_by_the_end_of_the_body_is_replaced() -> None:
    assert decode(b"data: \xe2\x82") == [SSEEvent("message", "\ufffd")]
