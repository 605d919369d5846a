"""Gemini: requests built, whole-response frames parsed, error bodies translated."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given

from tests.lanes.test_openai_compat import CONVERSATION, TOOLS, assemble
from tests.lanes.test_sse import parse, parse_every_split, splits
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
from toolcallstore.lanes.gemini import SKIP_SIGNATURE, Gemini

GEMINI = Gemini()
TARGET = Target(
    "gemini/gemini-2.5-flash",
    "gemini",
    "gemini-2.5-flash",
    "gemini",
    "https://generativelanguage.googleapis.com/v1beta",
)


def frame(
    parts: list[dict[str, Any]] | None,
    usage: dict[str, Any] | None = None,
    finish: str | None = None,
) -> bytes:
    response: dict[str, Any] = {}
    if parts is not None:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        response["candidates"] = [candidate]
    if usage:
        response["usageMetadata"] = usage
    response.update(modelVersion="gemini-2.5-flash", responseId="abc123")
    # Gemini ends its frames with CRLF pairs.
    return b"data: " + orjson.dumps(response) + b"\r\n\r\n"


TOOL_STREAM = (
    frame([{"text": "Let me check"}], {"promptTokenCount": 31, "trafficType": "ON_DEMAND"})
    + frame(
        [
            {"text": " the weather — quickly."},
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": "CqQBAdHtim8=",
            },
        ],
        {"promptTokenCount": 31, "candidatesTokenCount": 12, "totalTokenCount": 43},
    )
    + frame(
        [{"functionCall": {"name": "get_time", "args": {}}}],
        {
            "promptTokenCount": 31,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 40,
            "totalTokenCount": 91,
        },
        finish="STOP",
    )
)
TOOL_EVENTS: list[Event] = [
    TextDelta("Let me check"),
    Usage(31, None),
    TextDelta(" the weather — quickly."),
    ToolCallDelta(0, "call_abc123_0", "get_weather", '{"city":"Paris"}'),
    Usage(31, 12),
    ToolCallDelta(1, "call_abc123_1", "get_time", "{}"),
    Usage(31, 60),  # thinking tokens are billed as output
    Finish("tool_calls", "STOP"),
    Done(),
]


def parser() -> Any:
    return GEMINI.parser()


def test_a_tool_stream_gives_the_same_events_however_split() -> None:
    events = parse_every_split(parser, TOOL_STREAM)
    assert events == TOOL_EVENTS
    assert assemble(events) == {
        0: ("call_abc123_0", "get_weather", '{"city":"Paris"}'),
        1: ("call_abc123_1", "get_time", "{}"),
    }


@given(splits(TOOL_STREAM))
def test_a_tool_stream_split_at_random(cuts: list[int]) -> None:
    assert parse(parser, TOOL_STREAM, cuts) == TOOL_EVENTS


def test_a_function_call_keeps_the_id_gemini_gave_it() -> None:
    call = {"functionCall": {"id": "fc-9", "name": "f", "args": {"a": 1}}}
    events = parse(parser, frame([call], finish="STOP"))
    assert events == [
        ToolCallDelta(0, "fc-9", "f", '{"a":1}'),
        Finish("tool_calls", "STOP"),
        Done(),
    ]


def test_a_repeated_usage_frame_is_not_repeated() -> None:
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 2}
    stream = frame([{"text": "a"}], usage) + frame([{"text": "b"}], usage, finish="STOP")
    assert parse(parser, stream) == [
        TextDelta("a"),
        Usage(5, 2),
        TextDelta("b"),
        Finish("stop", "STOP"),
        Done(),
    ]


def test_thought_summaries_are_not_part_of_the_answer() -> None:
    stream = frame([{"text": "thinking...", "thought": True}, {"text": "42"}], finish="STOP")
    assert parse(parser, stream) == [TextDelta("42"), Finish("stop", "STOP"), Done()]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    events = parse(parser, frame([{"text": "x"}], finish=reason))
    assert events[-2:] == [Finish(finish, reason), Done()]  # type: ignore[arg-type]


def test_a_blocked_prompt_is_a_content_filter_finish() -> None:
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 8},
    }
    events = parse(parser, b"data: " + orjson.dumps(blocked) + b"\r\n\r\n")
    assert events == [Usage(8, None), Finish("content_filter", "SAFETY"), Done()]


def test_a_stream_without_a_finish_reason_was_cut() -> None:
    events = parse(parser, frame([{"text": "Let me"}]))
    assert events[0] == TextDelta("Let me")
    assert isinstance(events[-1], StreamError)
    assert (events[-1].code, events[-1].retryable) == ("stream_cut", True)


def test_a_malformed_frame_is_skipped_and_the_stream_goes_on() -> None:
    stream = (
        frame([{"text": "a"}])
        + b'data: {"candidates": [\r\n\r\n'
        + frame([{"text": "b"}], finish="STOP")
    )
    events = parse(parser, stream)
    assert events == [
        TextDelta("a"),
        Malformed(b'{"candidates": ['),
        TextDelta("b"),
        Finish("stop", "STOP"),
        Done(),
    ]


@pytest.mark.parametrize(
    "part", [{"text": {"value": "b"}}, {"functionCall": {"name": ["f"], "args": {}}}]
)
def test_a_field_of_the_wrong_type_makes_its_frame_malformed(part: dict[str, Any]) -> None:
    events = parse(parser, frame([{"text": "a"}]) + frame([part]) + frame([], finish="STOP"))
    assert events[0] == TextDelta("a")
    assert isinstance(events[1], Malformed)
    assert events[2:] == [Finish("stop", "STOP"), Done()]


def test_an_in_band_error_ends_the_stream_without_a_cut_error() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    events = parse(parser, frame([{"text": "a"}]) + b"data: " + orjson.dumps(error) + b"\r\n\r\n")
    assert events == [TextDelta("a"), StreamError("server_error", "The model is overloaded.", True)]


GEMINI_BODY: dict[str, Any] = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "Weather in Paris, and the time?"},
                {"text": "Here is the view."},
                {"fileData": {"fileUri": "https://example.com/paris.jpg"}},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"content": {"temp_c": 18}},
                    }
                },
                {"functionResponse": {"name": "get_time", "response": {"content": "14:05"}}},
            ],
        },
        {"role": "model", "parts": [{"text": "18 °C at 14:05."}]},
        {"role": "user", "parts": [{"text": "Thanks"}]},
    ],
    "systemInstruction": {"parts": [{"text": "You are terse.\n\nUse metric units."}]},
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parametersJsonSchema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                },
                {"name": "get_time"},
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    "generationConfig": {
        "maxOutputTokens": 1024,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
        "seed": 7,
        "responseMimeType": "application/json",
    },
}


def test_build_translates_a_multi_turn_tool_conversation() -> None:
    request = ChatRequest(
        messages=CONVERSATION,
        max_tokens=1024,
        tools=TOOLS,
        tool_choice="required",
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=7,
        response_format={"type": "json_object"},
        user="agent-7",  # Gemini has no end-user field: dropped
    )
    upstream = GEMINI.build(TARGET, request, "AIza-test")
    assert upstream.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        ":streamGenerateContent?alt=sse"
    )
    assert upstream.headers == {"x-goog-api-key": "AIza-test", "content-type": "application/json"}
    assert upstream.body == GEMINI_BODY


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
    ],
)
def test_tool_choice_modes(choice: Any, config: dict[str, Any]) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=5, tools=TOOLS, tool_choice=choice
    )
    assert GEMINI.build(TARGET, request, "k").body["toolConfig"] == {
        "functionCallingConfig": config
    }


def test_a_minimal_request_has_no_empty_sections() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    assert GEMINI.build(TARGET, request, "k").body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 5},
    }


def test_a_json_schema_response_format_becomes_the_response_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    request = ChatRequest(
        messages=[{"role": "user", "content": "Hi"}], max_tokens=5, response_format=response_format
    )
    config = GEMINI.build(TARGET, request, "k").body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


def error_body(code: int, status: str, message: str, details: list[Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def test_resource_exhausted_is_a_rate_limit_with_the_retry_delay() -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "23s"}
    body = error_body(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", [retry_info])
    error = GEMINI.error(429, {}, body)
    assert (error.code, error.retryable, error.retry_after_s) == ("rate_limited", True, 23.0)
    assert error.details == {"status": "RESOURCE_EXHAUSTED"}


def test_a_retry_after_header_wins_over_the_body_delay() -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "23s"}
    body = error_body(429, "RESOURCE_EXHAUSTED", "quota", [retry_info])
    assert GEMINI.error(429, {"Retry-After": "5"}, body).retry_after_s == 5.0


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (
            503,
            b"[" + error_body(503, "UNAVAILABLE", "The model is overloaded.") + b"]",
            "server_error",
            True,
        ),
        (500, error_body(500, "INTERNAL", "An internal error has occurred."), "server_error", True),
        (
            400,
            error_body(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the "
                "maximum number of tokens allowed (1048576).",
            ),
            "context_length_exceeded",
            False,
        ),
        (
            400,
            error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid key."),
            "authentication",
            False,
        ),
        (
            400,
            error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
            "invalid_request",
            False,
        ),
        (403, error_body(403, "PERMISSION_DENIED", "Permission denied."), "authentication", False),
        (404, error_body(404, "NOT_FOUND", "models/gemini-9 is not found"), "not_found", False),
    ],
)
def test_error_bodies_map_to_our_codes(
    status: int, body: bytes, code: str, retryable: bool
) -> None:
    error = GEMINI.error(status, {}, body)
    assert (error.code, error.retryable) == (code, retryable)


def test_an_empty_error_body_still_gives_a_status_message() -> None:
    error = GEMINI.error(500, {}, b"")
    assert (error.code, error.message, error.retryable) == ("server_error", "HTTP 500", True)


def test_a_tool_choice_without_tools_sends_no_tool_config() -> None:
    # Gemini refuses a functionCallingConfig with no declarations (400).
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=10,
                          tool_choice="auto")  # fmt: skip
    assert "toolConfig" not in GEMINI.build(TARGET, request, "k").body


def test_gemini_3_calls_in_the_history_carry_a_signature_on_the_first_of_each_step() -> None:
    function = {"name": "get_weather", "arguments": "{}"}
    calls = [{"id": f"call_{i}", "type": "function", "function": function} for i in range(2)]
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    request = ChatRequest(messages=messages, max_tokens=10, tools=TOOLS)
    gemini_3 = Target("gemini/gemini-3.5-pro", "gemini", "gemini-3.5-pro", "gemini", "https://g")
    parts = GEMINI.build(gemini_3, request, "k").body["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [SKIP_SIGNATURE, None]
    older = GEMINI.build(TARGET, request, "k").body["contents"][1]["parts"]  # gemini-2.5
    assert all("thoughtSignature" not in p for p in older)
