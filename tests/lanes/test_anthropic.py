"""Anthropic Messages: requests built, named-event streams parsed, error bodies translated."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given

from tests.lanes.test_openai_compat import CONVERSATION, TOOLS, assemble
from tests.lanes.test_sse import parse, parse_every_split, splits
from toolcallstore.lanes.anthropic import Anthropic
from toolcallstore.lanes.base import (
    ChatRequest,
    Done,
    Event,
    Finish,
    Malformed,
    StreamError,
    Target,
    TextDelta,
    ToolCallDelta,
    Usage,
)

ANTHROPIC = Anthropic()
TARGET = Target(
    "anthropic/claude-sonnet-4-5",
    "anthropic",
    "claude-sonnet-4-5",
    "anthropic",
    "https://api.anthropic.com/v1",
)


def frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_start(input_tokens: int = 12, cache_read: int = 0) -> bytes:
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "output_tokens": 1,
    }
    message: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return frame("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return frame(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return frame(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def text(index: int, value: str) -> bytes:
    return block_delta(index, {"type": "text_delta", "text": value})


def block_stop(index: int) -> bytes:
    return frame("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, output_tokens: int) -> bytes:
    return frame(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )


PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MESSAGE_STOP = frame("message_stop", {"type": "message_stop"})

TOOL_STREAM = (
    message_start()
    + block_start(0, {"type": "thinking", "thinking": ""})
    + block_delta(0, {"type": "thinking_delta", "thinking": "The user wants weather."})
    + block_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"})
    + block_stop(0)
    + PING
    + block_start(1, {"type": "text", "text": ""})
    + text(1, "Checking Paris")
    + text(1, " — one moment.")
    + block_stop(1)
    + block_start(2, {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}})
    + block_delta(2, {"type": "input_json_delta", "partial_json": ""})
    + block_delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Par'})
    + block_delta(2, {"type": "input_json_delta", "partial_json": 'is", "unit": "c"}'})
    + block_stop(2)
    + block_start(3, {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}})
    + block_delta(3, {"type": "input_json_delta", "partial_json": '{"tz":"Europe/Paris"}'})
    + block_stop(3)
    + PING
    + message_delta("tool_use", 89)
    + MESSAGE_STOP
)
TOOL_EVENTS: list[Event] = [
    Usage(12, None),
    TextDelta("Checking Paris"),
    TextDelta(" — one moment."),
    ToolCallDelta(0, "toolu_01A", "get_weather", ""),
    ToolCallDelta(0, arguments='{"city": "Par'),
    ToolCallDelta(0, arguments='is", "unit": "c"}'),
    ToolCallDelta(1, "toolu_01B", "get_time", ""),
    ToolCallDelta(1, arguments='{"tz":"Europe/Paris"}'),
    Usage(None, 89),
    Finish("tool_calls", "tool_use"),
    Done(),
]


def parser() -> Any:
    return ANTHROPIC.parser()


def test_a_tool_stream_gives_the_same_events_however_split() -> None:
    events = parse_every_split(parser, TOOL_STREAM)
    assert events == TOOL_EVENTS
    # Calls are numbered 0, 1 although they are content blocks 2 and 3.
    assert assemble(events) == {
        0: ("toolu_01A", "get_weather", '{"city": "Paris", "unit": "c"}'),
        1: ("toolu_01B", "get_time", '{"tz":"Europe/Paris"}'),
    }


@given(splits(TOOL_STREAM))
def test_a_tool_stream_split_at_random(cuts: list[int]) -> None:
    assert parse(parser, TOOL_STREAM, cuts) == TOOL_EVENTS


def text_stream(stop_reason: str) -> bytes:
    return (
        message_start()
        + block_start(0, {"type": "text", "text": ""})
        + text(0, "Hello")
        + block_stop(0)
        + message_delta(stop_reason, 15)
        + MESSAGE_STOP
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish: str) -> None:
    assert parse(parser, text_stream(stop_reason)) == [
        Usage(12, None),
        TextDelta("Hello"),
        Usage(None, 15),
        Finish(finish, stop_reason),  # type: ignore[arg-type]
        Done(),
    ]


def test_cached_prompt_tokens_count_as_input_like_openai_prompt_tokens() -> None:
    assert parse(parser, message_start(input_tokens=3, cache_read=2048))[0] == Usage(2051, None)


def test_an_in_band_overload_is_a_retryable_stream_error() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    stream = message_start() + block_start(0, {"type": "text", "text": ""}) + text(0, "Hel")
    events = parse(parser, stream + frame("error", error))
    assert events[-2:] == [TextDelta("Hel"), StreamError("overloaded", "Overloaded", True)]


@pytest.mark.parametrize(
    ("type_", "code", "retryable"),
    [
        ("rate_limit_error", "rate_limited", True),
        ("api_error", "server_error", True),
        ("invalid_request_error", "provider_error", False),
    ],
)
def test_in_band_error_types(type_: str, code: str, retryable: bool) -> None:
    error = {"type": "error", "error": {"type": type_, "message": "m"}}
    assert parse(parser, frame("error", error)) == [StreamError(code, "m", retryable)]


def test_a_stream_cut_before_the_stop_reason_is_a_retryable_error() -> None:
    stream = message_start() + block_start(0, {"type": "text", "text": ""}) + text(0, "Hel")
    events = parse(parser, stream)
    assert events[:2] == [Usage(12, None), TextDelta("Hel")]
    assert isinstance(events[-1], StreamError)
    assert (events[-1].code, events[-1].retryable) == ("stream_cut", True)


def test_a_stop_reason_without_message_stop_is_a_complete_answer() -> None:
    events = parse(parser, message_start() + message_delta("end_turn", 3))
    assert events == [Usage(12, None), Usage(None, 3), Finish("stop", "end_turn")]


def test_a_malformed_event_is_skipped_and_the_stream_goes_on() -> None:
    stream = (
        message_start()
        + block_start(0, {"type": "text", "text": ""})
        + b'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n'
        + text(0, "still here")
        + message_delta("end_turn", 4)
        + MESSAGE_STOP
    )
    events = parse(parser, stream)
    assert events[1] == Malformed(b'{"type":"content_block_delta","ind')
    assert events[2:] == [
        TextDelta("still here"),
        Usage(None, 4),
        Finish("stop", "end_turn"),
        Done(),
    ]


def test_events_without_their_names_are_read_from_the_payload_type() -> None:
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "x"},
    }
    stream = b"data: " + orjson.dumps(delta) + b"\n\n"
    assert parse(parser, stream + b'data: {"type":"message_stop"}\n\n') == [TextDelta("x"), Done()]


ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "stream": True,
    "system": "You are terse.\n\nUse metric units.",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris, and the time?"},
                {"type": "text", "text": "Here is the view."},
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://example.com/paris.jpg"},
                },
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": "iVBORw0KGgo=",
                    },
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A",
                    "content": '{"temp_c": 18}',
                },
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "14:05"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "18 °C at 14:05."}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["END"],
    "temperature": 0.2,
    "metadata": {"user_id": "agent-7"},
}


def test_build_translates_a_multi_turn_tool_conversation() -> None:
    request = ChatRequest(
        messages=CONVERSATION,
        max_tokens=1024,
        tools=TOOLS,
        tool_choice="auto",
        temperature=0.2,
        stop=["END"],
        user="agent-7",
        seed=1,  # Anthropic has no seed: dropped
    )
    upstream = ANTHROPIC.build(TARGET, request, "sk-ant-test")
    assert upstream.url == "https://api.anthropic.com/v1/messages"
    assert upstream.headers == {
        "x-api-key": "sk-ant-test",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert upstream.body == ANTHROPIC_BODY


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            None,
            {"type": "tool", "name": "get_time"},
        ),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: Any) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    assert ANTHROPIC.build(TARGET, request, "k").body.get("tool_choice") == expected


def test_invalid_tool_arguments_are_sent_as_an_empty_input() -> None:
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Calling.", "tool_calls": [call]},
    ]
    body = ANTHROPIC.build(TARGET, ChatRequest(messages=messages, max_tokens=5), "k").body
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
    ]


def error_body(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (529, error_body("overloaded_error", "Overloaded"), "overloaded", True),
        (
            429,
            error_body("rate_limit_error", "Number of request tokens has exceeded your limit"),
            "rate_limited",
            True,
        ),
        (
            400,
            error_body("invalid_request_error", "prompt is too long: 208000 tokens > 200000"),
            "context_length_exceeded",
            False,
        ),
        (
            400,
            error_body("invalid_request_error", "max_tokens: Field required"),
            "invalid_request",
            False,
        ),
        (401, error_body("authentication_error", "invalid x-api-key"), "authentication", False),
        (404, error_body("not_found_error", "model: claude-9"), "not_found", False),
        (500, error_body("api_error", "Internal server error"), "server_error", True),
    ],
)
def test_error_bodies_map_to_our_codes(
    status: int, body: bytes, code: str, retryable: bool
) -> None:
    error = ANTHROPIC.error(status, {}, body)
    assert (error.code, error.retryable) == (code, retryable)
    assert error.message == orjson.loads(body)["error"]["message"]


def test_an_error_keeps_retry_after_and_the_request_id() -> None:
    headers = {"retry-after": "30", "request-id": "req_011"}
    error = ANTHROPIC.error(529, headers, error_body("overloaded_error", "Overloaded"))
    assert error.retry_after_s == 30.0
    assert error.details == {"type": "overloaded_error", "request_id": "req_011"}


def test_an_empty_error_body_still_gives_a_status_message() -> None:
    error = ANTHROPIC.error(502, {}, b"")
    assert (error.code, error.message, error.retryable) == ("server_error", "HTTP 502", True)


@pytest.mark.parametrize(
    "delta",
    [{"type": "text_delta", "text": 5}, {"type": "input_json_delta", "partial_json": {"a": 1}}],
)
def test_a_field_of_the_wrong_type_makes_its_event_malformed(delta: dict[str, Any]) -> None:
    tool = block_start(1, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})
    bad = block_delta(0 if delta["type"] == "text_delta" else 1, delta)
    events = parse(
        parser, message_start() + tool + bad + message_delta("end_turn", 3) + MESSAGE_STOP
    )
    assert isinstance(events[2], Malformed)
    assert events[3:] == [Usage(None, 3), Finish("stop", "end_turn"), Done()]


@pytest.mark.parametrize(
    ("sampling", "sent"),
    [
        ({"temperature": 1.5}, {"temperature": 1.0}),  # OpenAI's 0-2 into Anthropic's 0-1
        ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3}),  # never both
        ({"top_p": 0.9}, {"top_p": 0.9}),
    ],
)
def test_sampling_stays_within_what_anthropic_takes(
    sampling: dict[str, float], sent: dict[str, float]
) -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=10, **sampling)
    body = ANTHROPIC.build(TARGET, request, "k").body
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == sent


def test_a_prefill_to_continue_is_sent_without_trailing_whitespace() -> None:
    # Anthropic refuses a final assistant turn that ends in whitespace (a resumed answer cut
    # after a word usually does).
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, "}]
    body = ANTHROPIC.build(TARGET, ChatRequest(messages=messages, max_tokens=10), "k").body
    assert body["messages"][-1] == {"role": "assistant",
                                    "content": [{"type": "text", "text": "Hello,"}]}  # fmt: skip
