"""The LLM fakes over a real socket: shapes and event order per protocol, usage by the documented
counting rule, tool calls, every fault, auth and bad input, and the official openai SDK."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.sandbox.conftest import Mounted
from tests.sandbox.wire import (
    ANTHROPIC_TOOLS,
    GEMINI_TOOLS,
    OPENAI_TOOLS,
    PROTOS,
    WEATHER_ARGS,
    WEATHER_SCHEMA,
    Anthropic,
    Gemini,
    OpenAI,
    Proto,
    answer,
    dumps,
    stream,
    tokens,
)

each_protocol = pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
OPENAI, ANTHROPIC, GEMINI = OpenAI(), Anthropic(), Gemini()
QUESTION = "What is the weather like?"
EXPECTED_TEXT = "Sandbox reply from {model}: What is the weather like? lorem ipsum dolor"


pytestmark = pytest.mark.asyncio(loop_scope="module")  # the server fixture is per module


async def post(client: httpx.AsyncClient, proto: Proto, url: str, body: Any) -> httpx.Response:
    return await client.post(url, json=body, headers=proto.headers)


# --- shapes, order and usage per protocol ----------------------------------------------------


async def test_openai_answer_has_the_real_shape_and_counted_usage(
    client: httpx.AsyncClient,
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    body = {"model": "gpt-4o-mini", "messages": messages}
    r = await post(client, OPENAI, OPENAI.url(stream=False), body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-sandbox-")
    assert data["model"] == "gpt-4o-mini"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == EXPECTED_TEXT.format(model="gpt-4o-mini")
    prompt = tokens("Be brief.") + 3 + tokens(QUESTION) + 3
    usage = data["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 12)
    assert usage["total_tokens"] == prompt + 12


async def test_openai_stream_order_with_and_without_include_usage(
    client: httpx.AsyncClient,
) -> None:
    body = OPENAI.body(QUESTION, stream=True)
    r = await post(client, OPENAI, OPENAI.url(stream=True), body)
    chunks = [orjson.loads(line[6:]) for line in r.text.split("\n\n")[:-2]]
    assert r.text.endswith("data: [DONE]\n\n")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(words) == 12 and words[0] == "Sandbox " and not words[-1].endswith(" ")
    assert chunks[-2]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == tokens(QUESTION) + 3
    assert chunks[-1]["usage"]["completion_tokens"] == 12

    del body["stream_options"]
    r = await post(client, OPENAI, OPENAI.url(stream=True), body)
    read = OPENAI.read(r.text)
    assert read.usage is None and read.finish == "stop" and read.terminal
    assert '"usage"' not in r.text


async def test_anthropic_answer_and_stream_event_order(client: httpx.AsyncClient) -> None:
    body = ANTHROPIC.body(QUESTION, stream=False) | {"system": "Be brief."}
    r = await post(client, ANTHROPIC, ANTHROPIC.url(stream=False), body)
    data = r.json()
    assert data["type"] == "message" and data["id"].startswith("msg_sandbox_")
    assert data["model"] == "claude-sonnet-4-5" and data["stop_reason"] == "end_turn"
    assert data["content"] == [
        {"type": "text", "text": EXPECTED_TEXT.format(model="claude-sonnet-4-5")}
    ]
    prompt = tokens("Be brief.") + 3 + tokens(QUESTION) + 3
    assert ANTHROPIC.answer_usage(data) == (prompt, 12)

    r = await post(client, ANTHROPIC, ANTHROPIC.url(stream=True), body | {"stream": True})
    read = ANTHROPIC.read(r.text)
    assert read.order == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 12,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = orjson.loads(r.text.split("\n\n")[0].split("data: ")[1])
    assert start["message"]["usage"]["output_tokens"] == 1
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    assert read.usage == (prompt, 12) and read.finish == "end_turn"
    assert "".join(read.content) == data["content"][0]["text"]


async def test_gemini_answer_sse_frames_and_json_array(client: httpx.AsyncClient) -> None:
    body = GEMINI.body(QUESTION, stream=False) | {"systemInstruction": {"parts": [{"text": "Hi"}]}}
    r = await post(client, GEMINI, GEMINI.url(stream=False), body)
    data = r.json()
    candidate = data["candidates"][0]
    assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "STOP"
    assert candidate["content"]["parts"] == [
        {"text": EXPECTED_TEXT.format(model="gemini-2.5-flash")}
    ]
    assert data["modelVersion"] == "gemini-2.5-flash" and data["responseId"]
    prompt = tokens("Hi") + 3 + tokens(QUESTION) + 3
    usage = data["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"]) == (prompt, 12)
    assert usage["totalTokenCount"] == prompt + 12

    r = await post(client, GEMINI, GEMINI.url(stream=True), body)
    read = GEMINI.read(r.text)
    assert read.usage == (prompt, 12) and read.finish == "STOP"
    assert "".join(read.content) == candidate["content"]["parts"][0]["text"]
    sse = [orjson.loads(f[6:]) for f in r.text.split("\r\n\r\n") if f]
    assert all(f["usageMetadata"] == {"promptTokenCount": prompt} for f in sse[:-1])

    array_url = "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?key=k"
    r = await client.post(array_url, json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert [f | {"responseId": ""} for f in r.json()] == [f | {"responseId": ""} for f in sse]


@each_protocol
async def test_tools_in_the_request_count_as_their_json(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    body = proto.body(QUESTION, stream=False)
    tools: Any = {
        "openai": [{"type": "function", "function": {"name": "f", "parameters": WEATHER_SCHEMA}}],
        "anthropic": [{"name": "f", "input_schema": WEATHER_SCHEMA}],
        "gemini": [{"functionDeclarations": [{"name": "f", "parameters": WEATHER_SCHEMA}]}],
    }[proto.name]
    r = await post(client, proto, proto.url(stream=False), body | {"tools": tools})
    prompt, completion = proto.answer_usage(r.json()) or (0, 0)
    assert prompt == tokens(QUESTION) + 3 + tokens(dumps(tools))
    assert completion == tokens(dumps(WEATHER_ARGS)) + tokens("f")


@each_protocol
async def test_max_tokens_below_words_stops_with_length(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    body = proto.body(QUESTION, stream=False, max_tokens=5)
    data = (await post(client, proto, proto.url(stream=False), body)).json()
    assert proto.answer_text(data).split() == [
        "Sandbox",
        "reply",
        "from",
        f"{proto.model}:",
        "What",
    ]
    assert (proto.answer_usage(data) or (0, 0))[1] == 5
    body = proto.body(QUESTION, stream=True, max_tokens=5)
    read = proto.read((await post(client, proto, proto.url(stream=True), body)).text)
    assert len(read.content) == 5 and read.finish == proto.finishes["length"]


# --- tool calls ------------------------------------------------------------------------------

CALL_TOKENS = tokens(dumps(WEATHER_ARGS)) + tokens("get_weather")


async def test_openai_streams_a_tool_call_in_fragments(client: httpx.AsyncClient) -> None:
    body = OPENAI.body(QUESTION, stream=True) | {"tools": OPENAI_TOOLS}
    r = await post(client, OPENAI, OPENAI.url(stream=True), body)
    chunks = [orjson.loads(line[6:]) for line in r.text.split("\n\n")[:-2]]
    head = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert head["index"] == 0 and head["type"] == "function"
    assert head["id"].startswith("call_sandbox_")
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-2]]
    assert len(calls) >= 3 and all(set(call) == {"index", "function"} for call in calls)
    assert orjson.loads("".join(call["function"]["arguments"] for call in calls)) == WEATHER_ARGS
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == CALL_TOKENS


async def test_openai_tool_choice_and_tool_result(client: httpx.AsyncClient) -> None:
    url, body = OPENAI.url(stream=False), OPENAI.body(QUESTION, stream=False)
    body["tools"] = OPENAI_TOOLS
    named = body | {"tool_choice": {"type": "function", "function": {"name": "lookup"}}}
    choice = (await post(client, OPENAI, url, named)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    function = choice["message"]["tool_calls"][0]["function"]
    assert function == {"name": "lookup", "arguments": '{"query":"sandbox"}'}

    choice = (await post(client, OPENAI, url, body | {"tool_choice": "none"})).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]

    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    data = (await post(client, OPENAI, url, body)).json()
    assert data["choices"][0]["message"]["content"].startswith(
        "Sandbox received the tool result: sunny"
    )
    prompt = tokens(QUESTION) + tokens("{}") + tokens("sunny") + 9 + tokens(dumps(OPENAI_TOOLS))
    assert data["usage"]["prompt_tokens"] == prompt


async def test_anthropic_streams_tool_use_as_input_json_deltas(client: httpx.AsyncClient) -> None:
    body = ANTHROPIC.body(QUESTION, stream=True) | {"tools": ANTHROPIC_TOOLS}
    r = await post(client, ANTHROPIC, ANTHROPIC.url(stream=True), body)
    events = [orjson.loads(f.split("data: ")[1]) for f in r.text.split("\n\n") if f]
    block = events[1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["id"].startswith("toolu_sandbox_") and block["input"] == {}
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert len(deltas) >= 3 and {d["type"] for d in deltas} == {"input_json_delta"}
    assert orjson.loads("".join(d["partial_json"] for d in deltas)) == WEATHER_ARGS
    read = ANTHROPIC.read(r.text)
    assert read.finish == "tool_use" and read.usage and read.usage[1] == CALL_TOKENS

    url, body = ANTHROPIC.url(stream=False), body | {"stream": False}
    named = body | {"tool_choice": {"type": "tool", "name": "lookup"}}
    data = (await post(client, ANTHROPIC, url, named)).json()
    assert data["stop_reason"] == "tool_use"
    assert data["content"][0]["name"] == "lookup"
    assert data["content"][0]["input"] == {"query": "sandbox"}
    data = (await post(client, ANTHROPIC, url, body | {"tool_choice": {"type": "none"}})).json()
    assert data["content"][0]["type"] == "text" and data["stop_reason"] == "end_turn"


async def test_anthropic_answers_a_tool_result_with_text(client: httpx.AsyncClient) -> None:
    body = ANTHROPIC.body(QUESTION, stream=False) | {"tools": ANTHROPIC_TOOLS}
    use = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"query": "x"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
    body["messages"] += [
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    data = (await post(client, ANTHROPIC, ANTHROPIC.url(stream=False), body)).json()
    assert data["content"][0]["text"].startswith("Sandbox received the tool result: sunny")
    prompt = tokens(QUESTION) + tokens('{"query":"x"}') + tokens("sunny") + 9
    assert data["usage"]["input_tokens"] == prompt + tokens(dumps(ANTHROPIC_TOOLS))


async def test_anthropic_continues_a_prefill_it_recognises_and_re_answers_any_other(
    client: httpx.AsyncClient,
) -> None:
    url = ANTHROPIC.url(stream=False)
    answer_ = EXPECTED_TEXT.format(model=ANTHROPIC.model) + " sit amet consectetur"
    for prefix in ("Sandbox reply from", "Sandbox reply from claude-sonnet-4-5: What"):
        body = ANTHROPIC.body(QUESTION, stream=False, max_tokens=5)
        body["messages"].append({"role": "assistant", "content": prefix})
        data = (await post(client, ANTHROPIC, url, body)).json()
        continuation = data["content"][0]["text"]
        # The words right after the prefix it received: the prefix and it make the answer.
        assert f"{prefix} {continuation}" == " ".join(answer_.split()[: len(prefix.split()) + 5])
        assert data["usage"]["input_tokens"] == tokens(QUESTION) + 3 + tokens(prefix) + 3
    body = ANTHROPIC.body(QUESTION, stream=False, max_tokens=4)
    body["messages"].append({"role": "assistant", "content": "reply from"})  # not a beginning
    data = (await post(client, ANTHROPIC, url, body)).json()
    assert data["content"][0]["text"] == "Sandbox reply from claude-sonnet-4-5:"  # from the start


async def test_anthropic_refuses_other_temperatures_on_a_model_that_takes_only_1(
    client: httpx.AsyncClient,
) -> None:
    url = ANTHROPIC.url(stream=False)
    body = ANTHROPIC.body(QUESTION, stream=False) | {"model": "claude-opus-t1"}
    r = await post(client, ANTHROPIC, url, body | {"temperature": 0.5})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    for allowed in ({"temperature": 1}, {}):
        assert (await post(client, ANTHROPIC, url, body | allowed)).status_code == 200
    assert (await post(client, ANTHROPIC, url, ANTHROPIC.body(QUESTION, stream=False)
                       | {"temperature": 0.5})).status_code == 200  # fmt: skip


async def test_gemini_answers_with_one_whole_function_call(client: httpx.AsyncClient) -> None:
    body = GEMINI.body(QUESTION, stream=True) | {"tools": GEMINI_TOOLS}
    r = await post(client, GEMINI, GEMINI.url(stream=True), body)
    frames = [orjson.loads(f[6:]) for f in r.text.split("\r\n\r\n") if f]
    part = frames[0]["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": WEATHER_ARGS}}
    read = GEMINI.read(r.text)
    assert read.finish == "STOP" and read.usage and read.usage[1] == CALL_TOKENS

    url = GEMINI.url(stream=False)
    forced = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}
    data = (await post(client, GEMINI, url, body | {"toolConfig": forced})).json()
    part = data["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "lookup", "args": {"n": 1}}}
    off = {"functionCallingConfig": {"mode": "NONE"}}
    data = (await post(client, GEMINI, url, body | {"toolConfig": off})).json()
    assert GEMINI.answer_text(data).startswith("Sandbox reply from")

    response = {"functionResponse": {"name": "lookup", "response": {"sky": "sunny"}}}
    body["contents"] += [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
        {"role": "user", "parts": [response]},
    ]
    data = (await post(client, GEMINI, url, body)).json()
    assert GEMINI.answer_text(data).startswith('Sandbox received the tool result: {"sky":"sunny"}')


async def test_gemini_parameters_take_only_its_schema_subset(client: httpx.AsyncClient) -> None:
    """`parameters` refuses JSON Schema keywords as the real API does (a 400 naming each);
    `parametersJsonSchema` takes them, and the two are never sent together."""
    strict = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    body = GEMINI.body(QUESTION, stream=False)
    url = GEMINI.url(stream=False)

    def declared(**schema: Any) -> dict[str, Any]:
        return body | {"tools": [{"functionDeclarations": [{"name": "f", **schema}]}]}

    r = await post(client, GEMINI, url, declared(parameters=strict))
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert r.json()["error"]["message"].split("\n") == [
        'Invalid JSON payload received. Unknown name "type" at'
        " 'tools[0].function_declarations[0].parameters.properties[1].value':"
        " Proto field is not repeating, cannot start list.",
        'Invalid JSON payload received. Unknown name "additionalProperties" at'
        " 'tools[0].function_declarations[0].parameters': Cannot find field.",
    ]
    both = await post(client, GEMINI, url, declared(parameters=WEATHER_SCHEMA,
                                                    parametersJsonSchema=strict))  # fmt: skip
    assert both.status_code == 400 and "mutually exclusive" in both.json()["error"]["message"]

    data = (await post(client, GEMINI, url, declared(parametersJsonSchema=strict))).json()
    part = data["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"]["name"] == "f" and part["functionCall"]["args"]["city"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"messages": [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "Hello, "}]},
         "messages: final assistant content cannot end with trailing whitespace"),
    ],
)  # fmt: skip
async def test_anthropic_refuses_what_the_real_api_refuses(
    client: httpx.AsyncClient, extra: dict[str, Any], message: str
) -> None:
    url = ANTHROPIC.url(stream=False)
    r = await post(client, ANTHROPIC, url, ANTHROPIC.body(QUESTION, stream=False) | extra)
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": message}


async def test_gemini_refuses_a_tool_config_without_declarations(
    client: httpx.AsyncClient,
) -> None:
    body = GEMINI.body(QUESTION, stream=False) | {
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
    }
    r = await post(client, GEMINI, GEMINI.url(stream=False), body)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "without function_declarations" in r.json()["error"]["message"]


# --- faults ----------------------------------------------------------------------------------

ERROR_KINDS = {  # status -> the error type (OpenAI, Anthropic) or status (Gemini) it carries
    429: {"openai": "requests", "anthropic": "rate_limit_error", "gemini": "RESOURCE_EXHAUSTED"},
    500: {"openai": "server_error", "anthropic": "api_error", "gemini": "INTERNAL"},
    503: {"openai": "server_error", "anthropic": "api_error", "gemini": "UNAVAILABLE"},
    529: {"openai": "server_error", "anthropic": "overloaded_error", "gemini": "UNKNOWN"},
}


@each_protocol
@pytest.mark.parametrize("status", sorted(ERROR_KINDS))
async def test_status_fault_answers_the_provider_error(
    client: httpx.AsyncClient, proto: Proto, status: int
) -> None:
    for streamed in (False, True):
        url = proto.url(stream=streamed, spec=f"status={status},retry_after=2")
        r = await post(client, proto, url, proto.body("hi", stream=streamed))
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert proto.error(r.json())[0] == ERROR_KINDS[status][proto.name]
        assert r.headers["retry-after"] == "2"
        if proto.name == "openai":
            assert r.headers["retry-after-ms"] == "2000"


CODE_ERRORS = {
    ("openai", "context_length_exceeded"): "maximum context length",
    ("openai", "content_policy"): "safety system",
    ("anthropic", "context_length_exceeded"): "prompt is too long",
    ("anthropic", "content_policy"): "content filtering policy",
    ("gemini", "context_length_exceeded"): "exceeds the maximum number of tokens",
    ("gemini", "content_policy"): "SAFETY",
}


@each_protocol
@pytest.mark.parametrize("code", ["context_length_exceeded", "content_policy"])
async def test_code_fault_is_a_400_with_the_provider_words(
    client: httpx.AsyncClient, proto: Proto, code: str
) -> None:
    r = await post(
        client, proto, proto.url(stream=False, spec=f"code={code}"), proto.body("hi", stream=False)
    )
    assert r.status_code == 400
    kind, message = proto.error(r.json())
    assert kind in ("invalid_request_error", "INVALID_ARGUMENT")
    assert CODE_ERRORS[proto.name, code] in message
    if proto.name == "openai":
        expected = (
            "context_length_exceeded"
            if code == "context_length_exceeded"
            else "content_policy_violation"
        )
        assert r.json()["error"]["code"] == expected


@each_protocol
async def test_stall_answers_200_then_holds_the_first_chunk(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    url, body = proto.url(stream=True, spec="stall_ms=300"), proto.body("hi", stream=True)
    started = time.monotonic()
    async with client.stream("POST", url, json=body, headers=proto.headers) as r:
        assert r.status_code == 200
        async for _ in r.aiter_raw():
            break
        assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    r = await answer(client, proto, "stall_ms=300")
    assert r.status_code == 200 and time.monotonic() - started >= 0.3


@each_protocol
async def test_latency_delays_every_chunk(client: httpx.AsyncClient, proto: Proto) -> None:
    started = time.monotonic()
    _, read = await stream(client, proto, "latency_ms=40,words=4")
    assert len(read.content) == 4 and time.monotonic() - started >= 0.16


@each_protocol
async def test_cut_after_ends_the_body_without_finish_usage_or_marker(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    _, read = await stream(client, proto, "cut_after=3")
    assert len(read.content) == 3
    assert (read.finish, read.usage, read.terminal, read.errors) == (None, None, False, [])


IN_BAND = {"openai": "server_error", "anthropic": "overloaded_error", "gemini": "UNAVAILABLE"}


@each_protocol
async def test_error_after_sends_the_in_band_error(client: httpx.AsyncClient, proto: Proto) -> None:
    _, read = await stream(client, proto, "error_after=2")
    assert len(read.content) == 2 and not read.terminal and read.finish is None
    (error,) = read.errors
    assert IN_BAND[proto.name] in (error.get("type"), error.get("status"))
    if proto.name == "anthropic":
        assert read.order[-1] == "error"


@each_protocol
async def test_malformed_at_inserts_one_bad_frame_then_continues(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    _, read = await stream(client, proto, "malformed_at=2")
    assert read.malformed == [1]  # after the first content chunk, before the second
    assert len(read.content) == 12 and read.terminal and read.usage


@each_protocol
async def test_no_usage_omits_usage_everywhere(client: httpx.AsyncClient, proto: Proto) -> None:
    r, read = await stream(client, proto, "no_usage=1")
    assert read.usage is None and read.finish == proto.finishes["stop"] and read.terminal
    assert "usageMetadata" not in r.text and '"input_tokens"' not in r.text
    r = await answer(client, proto, "no_usage=1")
    assert proto.answer_usage(r.json()) is None


@each_protocol
async def test_no_done_keeps_the_finish_but_drops_the_marker(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    _, read = await stream(client, proto, "no_done=1")
    assert read.finish == proto.finishes["stop"] and read.usage == (tokens("hello world") + 3, 12)
    assert read.terminal is (proto.name == "gemini")  # Gemini has no marker to drop


@each_protocol
async def test_keepalive_goes_between_chunks(client: httpx.AsyncClient, proto: Proto) -> None:
    _, read = await stream(client, proto, "keepalive=1,words=4")
    assert len(read.content) == 4 and read.keepalives == 3 and read.terminal


@each_protocol
async def test_words_sets_the_reply_length(client: httpx.AsyncClient, proto: Proto) -> None:
    _, read = await stream(client, proto, "words=30")
    assert len(read.content) == 30 and read.usage == (tokens("hello world") + 3, 30)
    r = await answer(client, proto, "words=2")
    assert proto.answer_text(r.json()) == "Sandbox reply"


@each_protocol
async def test_fail_first_counts_requests_per_spec(client: httpx.AsyncClient, proto: Proto) -> None:
    statuses = [
        (await answer(client, proto, "fail_first=2,status=503")).status_code for _ in range(4)
    ]
    assert statuses == [503, 503, 200, 200]
    assert (await answer(client, proto, "status=503,fail_first=1")).status_code == 503
    assert (await answer(client, proto, "status=503,fail_first=1")).status_code == 200
    _, first = await stream(client, proto, "fail_first=1,cut_after=2")
    _, second = await stream(client, proto, "fail_first=1,cut_after=2")
    assert (len(first.content), first.terminal) == (2, False)
    assert (len(second.content), second.terminal) == (12, True)


@each_protocol
async def test_stream_faults_do_not_touch_a_non_stream_answer(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    r = await answer(
        client, proto, "cut_after=1,error_after=1,malformed_at=1,keepalive=1,no_done=1"
    )
    assert r.status_code == 200 and len(proto.answer_text(r.json()).split()) == 12


@each_protocol
@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("bogus=1", "bogus"),
        ("status=abc", "status"),
        ("status=200", "status"),
        ("words=0", "words"),
    ],
)
async def test_a_bad_fault_spec_is_a_400_naming_the_key(
    client: httpx.AsyncClient, proto: Proto, spec: str, key: str
) -> None:
    r = await answer(client, proto, spec)
    assert r.status_code == 400
    kind, message = proto.error(r.json())
    assert kind in ("invalid_request_error", "INVALID_ARGUMENT") and f"'{key}'" in message


# --- auth and bad input ----------------------------------------------------------------------

UNAUTHENTICATED = {  # what each provider answers a request without a key
    "openai": (401, "invalid_request_error"),
    "anthropic": (401, "authentication_error"),
    "gemini": (403, "PERMISSION_DENIED"),
}


@each_protocol
async def test_a_missing_key_is_refused_as_the_provider_refuses_it(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    r = await client.post(proto.url(stream=False), json=proto.body("hi", stream=False))
    assert (r.status_code, proto.error(r.json())[0]) == UNAUTHENTICATED[proto.name]
    if proto.name == "openai":
        headers = {"authorization": "Basic c2stc2FuZGJveA=="}
        r = await client.post(proto.url(stream=False), json={}, headers=headers)
        assert r.status_code == 401


async def test_gemini_takes_the_key_from_the_query(client: httpx.AsyncClient) -> None:
    url = GEMINI.url(stream=False) + "?key=AIza-sandbox"
    assert (await client.post(url, json=GEMINI.body("hi", stream=False))).status_code == 200


MISSING_FIELD = {
    "openai": ({"model": "gpt-4o-mini"}, "'messages'"),
    "anthropic": (
        {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        "max_tokens: Field required",
    ),
    "gemini": ({"generationConfig": {}}, "contents is not specified"),
}


@each_protocol
async def test_bad_json_and_missing_fields_are_400s(
    client: httpx.AsyncClient, proto: Proto
) -> None:
    url = proto.url(stream=False)
    r = await client.post(url, content=b'{"model": ', headers=proto.headers)
    assert r.status_code == 400
    assert proto.error(r.json())[0] in ("invalid_request_error", "INVALID_ARGUMENT")
    body, words = MISSING_FIELD[proto.name]
    r = await post(client, proto, url, body)
    assert r.status_code == 400 and words in proto.error(r.json())[1]


# --- the official openai SDK as the client ---------------------------------------------------


def sdk(base: str, spec: str | None = None, retries: int = 0) -> openai.AsyncOpenAI:
    prefix = f"/fault/{spec}" if spec else ""
    return openai.AsyncOpenAI(
        base_url=f"{base}{prefix}/openai/v1", api_key="sk-sandbox", max_retries=retries
    )


async def test_openai_sdk_streams_a_tool_call_with_usage(base: str) -> None:
    tools: Any = OPENAI_TOOLS
    async with sdk(base) as client:
        response = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": QUESTION}],
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in response]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].id and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert orjson.loads(arguments) == WEATHER_ARGS
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage and usage.completion_tokens == CALL_TOKENS
    assert usage.prompt_tokens == tokens(QUESTION) + 3 + tokens(dumps(OPENAI_TOOLS))


async def test_openai_sdk_reads_text_streams_and_answers(base: str) -> None:
    messages: Any = [{"role": "user", "content": QUESTION}]
    async with sdk(base) as client:
        async with client.chat.completions.stream(model="m", messages=messages) as events:
            final = await events.get_final_completion()
        whole = await client.chat.completions.create(model="m", messages=messages, max_tokens=3)
    assert final.choices[0].message.content == EXPECTED_TEXT.format(model="m")
    assert final.choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == "Sandbox reply from"
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage and whole.usage.completion_tokens == 3


async def test_openai_sdk_honours_retry_after_and_raises_on_errors(base: str) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    async with sdk(base, "fail_first=1,status=429,retry_after=0.05", retries=1) as client:
        answer_ = await client.chat.completions.create(model="m", messages=messages)
    assert answer_.choices[0].finish_reason == "stop"  # the retry, after 50 ms, succeeded

    async with sdk(base, "status=429,retry_after=0.05") as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="m", messages=messages)
    assert raised.value.code == "rate_limit_exceeded"

    async with sdk(base, "error_after=2") as client:
        response = await client.chat.completions.create(model="m", messages=messages, stream=True)
        with pytest.raises(openai.APIError, match="server had an error"):
            async for _ in response:
                pass


@each_protocol
async def test_a_client_disconnect_stops_the_stream(
    client: httpx.AsyncClient, mounted: Mounted, proto: Proto
) -> None:
    url, body = proto.url(stream=True, spec="latency_ms=10,words=5000"), proto.body("", stream=True)
    async with client.stream("POST", url, json=body, headers=proto.headers) as r:
        async for _ in r.aiter_raw():
            break
    await asyncio.sleep(0.2)  # the server notices the closed connection
    sends = mounted.body_sends
    await asyncio.sleep(0.2)
    assert mounted.body_sends == sends  # a running stream would have sent ~20 more chunks


async def test_every_applies_the_failure_faults_to_every_nth_request_only(
    client: httpx.AsyncClient,
) -> None:
    url = "/fault/status=500,every=3/openai/v1/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    statuses = [
        (await client.post(url, json=body, headers={"Authorization": "Bearer k"})).status_code
        for _ in range(7)
    ]
    assert statuses == [200, 200, 500, 200, 200, 500, 200]
