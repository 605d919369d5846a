"""OpenAI Chat Completions: requests built, streams parsed, error bodies translated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from hypothesis import given

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
from toolcallstore.lanes.openai_compat import OpenAICompat
from toolcallstore.lanes.openai_out import Assembly, replay_chunks

OPENAI = OpenAICompat()
TARGET = Target(
    "openai/gpt-4o-mini", "openai", "gpt-4o-mini", "openai", "https://api.openai.com/v1/"
)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    body.update(extra)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_chunk(choices: list[Any] | None) -> bytes:
    usage = {"prompt_tokens": 81, "completion_tokens": 19, "total_tokens": 100}
    return chunk(choices=choices, usage=usage)


DONE = b"data: [DONE]\n\n"

TEXT_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    + chunk({"role": "assistant", "content": ""})
    + chunk({"content": "Bonjour"})
    + b": OPENROUTER PROCESSING\n\n"
    + chunk({"content": " à tous — ok"})  # multi-byte characters to split
    + chunk({}, "stop")
    + usage_chunk([])
    + DONE
)
TEXT_EVENTS: list[Event] = [
    TextDelta("Bonjour"),
    TextDelta(" à tous — ok"),
    Finish("stop", "stop"),
    Usage(81, 19),
    Done(),
]


def call_delta(index: int, arguments: str, id: str | None = None, name: str | None = None) -> bytes:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id:
        call.update(id=id, type="function")
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


TOOL_STREAM = (
    chunk({"role": "assistant", "content": None})
    + call_delta(0, "", id="call_1", name="get_weather")
    + call_delta(0, '{"city":')
    + call_delta(1, "", id="call_2", name="get_time")
    + call_delta(0, '"Paris"}')
    + call_delta(1, '{"tz":"Europe/Paris"}')
    + chunk({}, "tool_calls")
    + usage_chunk([])
    + DONE
)


def parser() -> Any:
    return OPENAI.parser()


def assemble(events: list[Event]) -> dict[int, tuple[str | None, str | None, str]]:
    """Tool calls as a client rebuilds them: (id, name, arguments) per index."""
    calls: dict[int, tuple[str | None, str | None, str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            id_, name, arguments = calls.get(event.index, (None, None, ""))
            calls[event.index] = (id_ or event.id, name or event.name, arguments + event.arguments)
    return calls


def test_a_text_stream_gives_text_finish_usage_and_done_however_split() -> None:
    assert parse_every_split(parser, TEXT_STREAM) == TEXT_EVENTS


@given(splits(TEXT_STREAM))
def test_a_text_stream_split_at_random(cuts: list[int]) -> None:
    assert parse(parser, TEXT_STREAM, cuts) == TEXT_EVENTS


def test_parallel_tool_calls_reassemble_by_index() -> None:
    events = parse_every_split(parser, TOOL_STREAM)
    assert assemble(events) == {
        0: ("call_1", "get_weather", '{"city":"Paris"}'),
        1: ("call_2", "get_time", '{"tz":"Europe/Paris"}'),
    }
    assert events[-3:] == [Finish("tool_calls", "tool_calls"), Usage(81, 19), Done()]


@given(splits(TOOL_STREAM))
def test_tool_calls_split_at_random(cuts: list[int]) -> None:
    assert parse(parser, TOOL_STREAM, cuts) == parse(parser, TOOL_STREAM)


def test_parallel_calls_without_an_index_are_numbered_by_position() -> None:
    # Some compatible servers send each call whole and leave `index` out.
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"x":1}'}},
    ]
    events = parse(parser, chunk({"tool_calls": calls}) + chunk({}, "tool_calls") + DONE)
    assert assemble(events) == {0: ("call_a", "f", "{}"), 1: ("call_b", "g", '{"x":1}')}


def test_a_usage_chunk_with_null_choices_is_read() -> None:
    events = parse(parser, chunk({"content": "hi"}) + chunk({}, "stop") + usage_chunk(None) + DONE)
    assert Usage(81, 19) in events
    assert events[-1] == Done()


def test_a_stream_without_usage_still_finishes_cleanly() -> None:
    events = parse(parser, chunk({"content": "hi"}) + chunk({}, "length") + DONE)
    assert events == [TextDelta("hi"), Finish("length", "length"), Done()]


def test_the_legacy_function_call_finish_means_tool_calls() -> None:
    events = parse(parser, chunk({}, "function_call") + DONE)
    assert events == [Finish("tool_calls", "function_call"), Done()]


def test_a_finish_without_done_is_a_complete_answer() -> None:
    assert parse(parser, chunk({"content": "hi"}) + chunk({}, "stop")) == [
        TextDelta("hi"),
        Finish("stop", "stop"),
    ]


def test_a_stream_cut_before_the_finish_is_a_retryable_error() -> None:
    events = parse(parser, chunk({"content": "hi"}))
    assert events[0] == TextDelta("hi")
    assert isinstance(events[-1], StreamError)
    assert (events[-1].code, events[-1].retryable) == ("stream_cut", True)


def test_a_stream_cut_inside_a_chunk_is_malformed_then_cut() -> None:
    events = parse(parser, chunk({"content": "hi"}) + b'data: {"id":"chatcmpl-1","cho')
    assert events[1] == Malformed(b'{"id":"chatcmpl-1","cho')
    assert isinstance(events[2], StreamError) and events[2].code == "stream_cut"


def test_a_malformed_chunk_is_skipped_and_the_stream_goes_on() -> None:
    stream = chunk({"content": "a"}) + b"data: {not json}\n\n" + chunk({"content": "b"})
    events = parse(parser, stream + chunk({}, "stop") + DONE)
    assert events == [
        TextDelta("a"),
        Malformed(b"{not json}"),
        TextDelta("b"),
        Finish("stop", "stop"),
        Done(),
    ]


def test_a_chunk_of_the_wrong_shape_is_malformed_not_a_crash() -> None:
    events = parse(parser, b'data: {"choices": [{"delta": "oops"}]}\n\n' + chunk({}, "stop"))
    assert isinstance(events[0], Malformed)
    assert events[1] == Finish("stop", "stop")


@pytest.mark.parametrize(
    "delta",
    [
        {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": 7}}]},
        {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"city": "x"}}}]},
        {"tool_calls": [{"index": 0, "id": ["call_1"], "function": {"name": "f"}}]},
    ],
)
def test_a_field_of_the_wrong_type_makes_its_chunk_malformed(delta: dict[str, Any]) -> None:
    # Valid JSON, wrong types: taken as they came, they failed later, far from the frame (an
    # answer cut short and never charged, or a 500).
    events = parse(parser, chunk({"content": "a"}) + chunk(delta) + chunk({}, "stop") + DONE)
    assert events[0] == TextDelta("a")
    assert isinstance(events[1], Malformed)
    assert events[2:] == [Finish("stop", "stop"), Done()]


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        ({"code": 502, "message": "Provider returned error"}, "server_error", True),
        ({"code": 429, "message": "Rate limit exceeded"}, "rate_limited", True),
        ({"code": "server_error", "message": "Provider disconnected"}, "server_error", True),
        ({"code": 400, "message": "Bad tool schema"}, "invalid_request", False),
        ({"type": "something_new", "message": "?"}, "provider_error", False),
    ],
)
def test_an_openrouter_in_band_error_ends_the_stream(
    error: dict[str, Any], code: str, retryable: bool
) -> None:
    failure = chunk({"content": ""}, "error", error=error)
    events = parse(parser, chunk({"content": "partial"}) + failure)
    assert events == [TextDelta("partial"), StreamError(code, error["message"], retryable)]


# A multi-turn tool conversation, as an OpenAI client sends it; each protocol translates it.
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
    {"role": "user", "content": "Weather in Paris, and the time?"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Here is the view."},
            {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_01A",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "toolu_01B",
                "type": "function",
                "function": {"name": "get_time", "arguments": ""},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_01A", "content": '{"temp_c": 18}'},
    {"role": "tool", "tool_call_id": "toolu_01B", "content": "14:05"},
    {"role": "assistant", "content": "18 °C at 14:05."},
    {"role": "user", "content": "Thanks"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


def test_build_sends_a_streaming_request_with_usage() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=256)
    upstream = OPENAI.build(TARGET, request, "sk-test")
    assert upstream.method == "POST"
    assert upstream.url == "https://api.openai.com/v1/chat/completions"
    assert upstream.headers == {
        "Authorization": "Bearer sk-test",
        "Content-Type": "application/json",
    }
    assert upstream.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 256,  # OpenAI's reasoning models refuse max_tokens
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_build_sends_max_tokens_to_openai_compatible_vendors() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=256)
    groq = Target("groq/gpt-oss-20b", "groq", "openai/gpt-oss-20b", "openai",
                  "https://api.groq.com/openai/v1")  # fmt: skip
    body = OPENAI.build(groq, request, "k").body
    assert body["max_tokens"] == 256 and "max_completion_tokens" not in body


def test_mistral_gets_no_stream_options_which_it_refuses() -> None:
    # Mistral answers stream_options with 422 "Extra inputs are not permitted", and sends the
    # usage on its last chunk unasked.
    request = ChatRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=256)
    mistral = Target("mistral/mistral-small-latest", "mistral", "mistral-small-latest",
                     "openai", "https://api.mistral.ai/v1")  # fmt: skip
    assert "stream_options" not in OPENAI.build(mistral, request, "k").body
    openai = Target("openai/gpt-5", "openai", "gpt-5", "openai", "https://api.openai.com/v1")
    assert OPENAI.build(openai, request, "k").body["stream_options"] == {"include_usage": True}


def test_build_passes_every_option_that_was_set() -> None:
    request = ChatRequest(
        messages=CONVERSATION,
        max_tokens=10,
        tools=TOOLS,
        tool_choice="required",
        temperature=0.0,
        top_p=0.9,
        stop=["END"],
        seed=7,
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        user="u-1",
    )
    body = OPENAI.build(TARGET, request, "k").body
    assert {k: v for k, v in body.items() if k != "stream_options"} == {
        "model": "gpt-4o-mini",
        "messages": CONVERSATION,  # already in OpenAI form: sent as it came
        "max_completion_tokens": 10,
        "stream": True,
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0.0,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "user": "u-1",
    }


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def test_a_rate_limit_is_retryable_after_retry_after_ms() -> None:
    body = error_body("Rate limit reached for gpt-4o-mini", "requests", "rate_limit_exceeded")
    headers = {"retry-after-ms": "1500", "retry-after": "2"}
    error = OPENAI.error(429, headers, body)
    assert (error.code, error.retryable, error.retry_after_s) == ("rate_limited", True, 1.5)
    assert error.message == "Rate limit reached for gpt-4o-mini"
    assert error.details == {"type": "requests", "code": "rate_limit_exceeded"}


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert OPENAI.error(503, {"Retry-After": "7"}, b"").retry_after_s == 7.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    retry_after = OPENAI.error(503, {"retry-after": when}, b"").retry_after_s
    assert retry_after is not None and 55 <= retry_after <= 60
    assert OPENAI.error(503, {"retry-after": "soon"}, b"").retry_after_s is None
    assert OPENAI.error(503, {}, b"").retry_after_s is None


def test_a_spent_quota_is_not_a_rate_limit_to_wait_out() -> None:
    body = error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    error = OPENAI.error(429, {}, body)
    assert (error.code, error.retryable) == ("quota_exceeded", False)


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (
            401,
            error_body("Incorrect API key", "invalid_request_error", "invalid_api_key"),
            "authentication",
            False,
        ),
        (
            404,
            error_body(
                "The model `gpt-9` does not exist", "invalid_request_error", "model_not_found"
            ),
            "not_found",
            False,
        ),
        (
            400,
            error_body(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            ),
            "context_length_exceeded",
            False,
        ),
        (
            400,
            error_body(
                "This model's maximum context length is 8192 tokens.", "invalid_request_error"
            ),
            "context_length_exceeded",
            False,
        ),
        (
            400,
            error_body(
                "Your request was rejected", "invalid_request_error", "content_policy_violation"
            ),
            "content_policy",
            False,
        ),
        (
            400,
            error_body("Invalid value for 'tool_choice'", "invalid_request_error"),
            "invalid_request",
            False,
        ),
        (408, error_body("Request timed out", "timeout"), "timeout", True),
        (500, error_body("The server had an error", "server_error"), "server_error", True),
        (529, b"", "overloaded", True),
    ],
)
def test_error_statuses_map_to_our_codes(
    status: int, body: bytes, code: str, retryable: bool
) -> None:
    error = OPENAI.error(status, {}, body)
    assert (error.status, error.code, error.retryable) == (status, code, retryable)


def test_an_empty_or_html_body_still_explains_itself() -> None:
    assert OPENAI.error(503, {}, b"").message == "HTTP 503"
    html = b"<html><head><title>502 Bad Gateway</title></head>" + b" " * 500 + b"</html>"
    error = OPENAI.error(502, {}, html)
    assert error.message.startswith("<html><head><title>502 Bad Gateway")
    assert len(error.message) <= 200
    assert (error.code, error.retryable) == ("server_error", True)


def test_a_bare_string_error_is_the_message() -> None:
    assert OPENAI.error(400, {}, b'{"error": "model is required"}').message == "model is required"


def test_x_should_retry_overrides_the_status() -> None:
    assert OPENAI.error(500, {"x-should-retry": "false"}, b"").retryable is False
    assert OPENAI.error(409, {"x-should-retry": "true"}, b"").retryable is True


def test_a_refusal_reaches_the_client_as_openai_sends_it() -> None:
    # Structured-output refusals stream in `delta.refusal`; dropped, the caller would get an
    # empty "stop" answer instead of the model's reason.
    stream = b"".join([
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        chunk({"refusal": "I can't help"}),
        chunk({"refusal": " with that."}),
        chunk({}, "stop"),
        DONE,
    ])  # fmt: skip
    events = parse(parser, stream)
    assert events[:2] == [TextDelta("I can't help", refusal=True),
                          TextDelta(" with that.", refusal=True)]  # fmt: skip
    assembly = Assembly("chatcmpl-1", 0)
    choices = [assembly.add(e) for e in events]
    assert choices[0] is not None and choices[0]["delta"] == {
        "role": "assistant", "refusal": "I can't help"}  # fmt: skip
    message = assembly.completion({}, {})["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, "I can't help with that.")
    replayed = orjson.loads(replay_chunks(assembly.completion({}, {}))[0][len(b"data: ") :])
    assert replayed["choices"][0]["delta"]["refusal"] == "I can't help with that."
