"""The official `openai` SDK against a real `toolcallstore serve` (one subprocess for the module)
with a test key: every protocol (OpenAI, Anthropic, Gemini) answered by the server's own sandbox,
plain and streamed, with tool calls and their results sent back; each answer's price checked
against its receipt, and the operator's books balanced with no hold left open at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.chat.helpers import models_file, price_micros, target_id
from tests.conftest import PG_URL, Server, _pg_admin, _pg_url_for, start_server, stop_server

PROTOCOLS = ("openai", "anthropic", "gemini")
PROVIDERS: dict[str, tuple[str, str | None]] = {f"sb-{p}": (p, None) for p in PROTOCOLS}
LANES = {f"lane-{p}": [f"sb-{p}"] for p in PROTOCOLS}

PROMPT = "Say hello to the sandbox"
# 12 words (the sandbox's default): its greeting, the user's words, then filler.
REPLY = "Sandbox reply from sandbox-model: Say hello to the sandbox lorem ipsum dolor"
# What OpenAI's strict mode asks for; Gemini's `parameters` would refuse it.
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": WEATHER_PARAMS,
}
WEATHER_TOOL = {"type": "function", "function": WEATHER}
QUESTION = "What is the weather like?"
TOOL_RESULT = '{"temp_c": 21, "sky": "clear"}'

each_protocol = pytest.mark.parametrize("protocol", PROTOCOLS)


def tokens(text: str) -> int:
    """The sandbox's counting rule (sandbox/replies.py): a token per 4 UTF-8 bytes, at least 1."""
    return max(1, math.ceil(len(text.encode()) / 4))


def prompt_tokens(*texts: str, tools: Any = None) -> int:
    """3 tokens per message on top of its text, plus the tool list as the provider got it."""
    total = sum(tokens(text) + 3 for text in texts)
    return total + (tokens(json.dumps(tools, separators=(",", ":"))) if tools else 0)


def tools_as_sent(protocol: str) -> list[dict[str, Any]]:
    """WEATHER_TOOL in each provider's own shape (what its token count covers)."""
    if protocol == "anthropic":
        name, description = WEATHER["name"], WEATHER["description"]
        return [{"name": name, "description": description, "input_schema": WEATHER_PARAMS}]
    if protocol == "gemini":
        name, description = WEATHER["name"], WEATHER["description"]
        declaration = {"name": name, "description": description,
                       "parametersJsonSchema": WEATHER_PARAMS}  # fmt: skip
        return [{"functionDeclarations": [declaration]}]
    return [WEATHER_TOOL]


def usd(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def micros(amount_usd: str) -> int:
    whole, _, fraction = amount_usd.partition(".")
    assert len(fraction) == 6, amount_usd
    return int(whole) * 1_000_000 + int(fraction)


@dataclass
class Store:
    server: Server
    agent_key: str
    sdk: openai.OpenAI
    http: httpx.Client
    receipt_ids: list[str] = field(default_factory=list)  # every receipt an answer named

    def get(self, path: str, *, admin: bool = False) -> dict[str, Any]:
        key = self.server.admin_key if admin else self.agent_key
        r = self.http.get(path, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@contextlib.contextmanager
def new_database(workdir: Path) -> Iterator[str]:
    """A new database for the module: an SQLite file, or a fresh Postgres database."""
    if not PG_URL:
        yield f"sqlite:///{workdir / 'toolcallstore.db'}"
        return
    name = f"tcs_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url_for(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    workdir = tmp_path_factory.mktemp("e2e-sdk")
    models = models_file(workdir, PROVIDERS, LANES)
    with new_database(workdir) as database_url:
        server = start_server(database_url, workdir, TOOLCALLSTORE_MODELS_FILE=str(models))
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                r = http.post(
                    "/v1/keys",
                    json={"scopes": ["llm:chat", "receipts:read"], "auto_quote_max_usd": "1.00"},
                    headers={
                        "Authorization": f"Bearer {server.admin_key}",
                        "Idempotency-Key": secrets.token_hex(8),
                    },
                )
                assert r.status_code == 200, r.text
                agent_key = r.json()["secret"]
                assert agent_key.startswith("tcs_test_")
                # No retries: a failed call must show, not be retried (and paid for) twice.
                with openai.OpenAI(
                    base_url=f"{server.base_url}/v1", api_key=agent_key, max_retries=0, timeout=30
                ) as sdk:
                    yield Store(server, agent_key, sdk, http)
        finally:
            output = stop_server(server)
    assert "Traceback" not in output, output


def check_receipt(
    store: Store, toolcall: dict[str, Any], usage: Any, quote_id: str | None = None
) -> dict[str, Any]:
    """The receipt the answer named charges exactly the price of the usage the answer showed."""
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    assert usage.total_tokens == prompt + completion
    price = price_micros(prompt, completion)
    assert toolcall["cost_usd"] == usd(price)
    assert toolcall["usage_estimated"] is False
    receipt_id = toolcall["receipt_id"]
    store.receipt_ids.append(receipt_id)
    receipt = store.get(f"/v1/receipts/{receipt_id}")
    assert receipt["id"] == receipt_id
    assert receipt["amount_usd"] == usd(price)
    assert receipt["livemode"] is False
    assert receipt["usage"]["prompt_tokens"] == prompt
    assert receipt["usage"]["completion_tokens"] == completion
    assert [a["target"] for a in receipt["attempts"]] == [toolcall["target"]]
    assert "provider_cost_usd" not in receipt  # the operator's figure, not the agent's
    if quote_id is not None:
        assert receipt["quote_id"] == quote_id
    # $1 / $2 per million tokens: the provider cost in micro-USD is prompt + 2 x completion.
    operator = store.get(f"/v1/receipts/{receipt_id}", admin=True)
    assert operator["provider_cost_usd"] == usd(prompt + 2 * completion)
    assert operator["margin_usd"] == usd(price - prompt - 2 * completion)
    return receipt


def check_headers(headers: Mapping[str, str], toolcall: dict[str, Any]) -> str:
    assert headers["ToolCall-Receipt-Id"] == toolcall["receipt_id"]
    quote_id = headers["ToolCall-Quote-Id"]
    assert quote_id.startswith("q_")
    return quote_id


def toolcall_of(obj: Any, protocol: str) -> dict[str, Any]:
    toolcall: dict[str, Any] = obj.model_extra["toolcall"]
    assert toolcall["target"] == target_id(f"sb-{protocol}")
    assert toolcall["lane"] == f"lane-{protocol}"
    assert toolcall["receipt_id"].startswith("rcpt_")
    assert [(a["target"], a["outcome"]) for a in toolcall["attempts"]] == [
        (toolcall["target"], "succeeded")
    ]
    assert all("provider_cost_usd" not in a for a in toolcall["attempts"])
    return toolcall


@dataclass
class Streamed:
    """A streamed answer put back together the way an SDK user does it."""

    headers: Mapping[str, str]  # the SDK's own Headers, case-insensitive
    chunks: list[Any]
    text: str
    finish_reason: str | None
    tool_calls: dict[int, dict[str, Any]]
    argument_pieces: int

    @property
    def last(self) -> Any:
        return self.chunks[-1]


def stream(store: Store, **body: Any) -> Streamed:
    raw = store.sdk.chat.completions.with_raw_response.create(
        stream=True, stream_options={"include_usage": True}, **body
    )
    events = raw.parse()
    try:
        chunks = list(events)
    finally:
        events.close()
    text, finish, pieces = "", None, 0
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            assert choice.index == 0
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
                    pieces += bool(delta.function.arguments)
    return Streamed(raw.headers, chunks, text, finish, calls, pieces)


def check_stream_end(streamed: Streamed, protocol: str) -> dict[str, Any]:
    """Every chunk names the answering target; the last has no choices, the usage and toolcall."""
    target = target_id(f"sb-{protocol}")
    assert {c.model for c in streamed.chunks} == {target}
    assert len({c.id for c in streamed.chunks}) == 1
    assert all(c.choices for c in streamed.chunks[:-1])
    last = streamed.last
    assert last.choices == []
    assert last.usage is not None
    return toolcall_of(last, protocol)


# --- 1. plain completions -----------------------------------------------------------------------


@each_protocol
def test_completion_is_the_sandbox_reply_and_its_receipt_charges_its_usage(
    store: Store, protocol: str
) -> None:
    raw = store.sdk.chat.completions.with_raw_response.create(
        model=f"lane-{protocol}", messages=[{"role": "user", "content": PROMPT}]
    )
    response = raw.parse()
    assert response.object == "chat.completion"
    assert response.model == target_id(f"sb-{protocol}")
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == REPLY
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == prompt_tokens(PROMPT)
    assert response.usage.completion_tokens == len(REPLY.split())
    toolcall = toolcall_of(response, protocol)
    assert response.to_dict()["toolcall"] == toolcall
    quote_id = check_headers(raw.headers, toolcall)
    check_receipt(store, toolcall, response.usage, quote_id)


# --- 2. streamed completions --------------------------------------------------------------------


@each_protocol
def test_stream_reassembles_to_the_same_reply_and_ends_with_usage_and_receipt(
    store: Store, protocol: str
) -> None:
    streamed = stream(
        store, model=f"lane-{protocol}", messages=[{"role": "user", "content": PROMPT}]
    )
    assert streamed.text == REPLY
    assert streamed.finish_reason == "stop"
    assert streamed.tool_calls == {}
    assert len([c for c in streamed.chunks if c.choices and c.choices[0].delta.content]) > 1
    assert streamed.chunks[0].choices[0].delta.role == "assistant"
    toolcall = check_stream_end(streamed, protocol)
    usage = streamed.last.usage
    assert usage.prompt_tokens == prompt_tokens(PROMPT)
    assert usage.completion_tokens == len(REPLY.split())
    quote_id = check_headers(streamed.headers, toolcall)
    check_receipt(store, toolcall, usage, quote_id)


# --- 3. tool calls, and the tool's result sent back ---------------------------------------------


@each_protocol
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_tool_call_round_trip(store: Store, protocol: str, streaming: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    body: dict[str, Any] = {"model": f"lane-{protocol}", "messages": messages}
    body["tools"] = [WEATHER_TOOL]
    if streaming:
        streamed = stream(store, **body)
        assert streamed.text == ""
        finish, calls = streamed.finish_reason, list(streamed.tool_calls.values())
        assert list(streamed.tool_calls) == [0]
        # OpenAI and Anthropic stream the arguments in pieces; Gemini sends them whole.
        assert streamed.argument_pieces >= (1 if protocol == "gemini" else 2)
        toolcall, usage = check_stream_end(streamed, protocol), streamed.last.usage
        headers = streamed.headers
    else:
        raw = store.sdk.chat.completions.with_raw_response.create(**body)
        response = raw.parse()
        assert response.model == target_id(f"sb-{protocol}")
        message = response.choices[0].message
        assert message.content is None
        assert message.tool_calls is not None
        finish = response.choices[0].finish_reason
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls
            if c.type == "function"
        ]
        assert len(calls) == len(message.tool_calls)
        toolcall, usage, headers = toolcall_of(response, protocol), response.usage, raw.headers
    assert finish == "tool_calls"
    assert len(calls) == 1
    call = calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(call["id"], str) and call["id"]
    assert json.loads(call["arguments"]) == {"city": "sandbox"}
    assert usage is not None
    assert usage.prompt_tokens == prompt_tokens(QUESTION, tools=tools_as_sent(protocol))
    assert usage.completion_tokens == tokens(call["arguments"]) + tokens("get_weather")
    check_receipt(store, toolcall, usage, check_headers(headers, toolcall))

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT},
    ]
    if streaming:
        streamed = stream(store, **body)
        text, finish = streamed.text, streamed.finish_reason
        assert streamed.tool_calls == {}
        toolcall, usage = check_stream_end(streamed, protocol), streamed.last.usage
    else:
        response = store.sdk.chat.completions.create(**body)
        assert response.model == target_id(f"sb-{protocol}")
        assert response.choices[0].message.tool_calls is None
        text, finish = response.choices[0].message.content or "", response.choices[0].finish_reason
        toolcall, usage = toolcall_of(response, protocol), response.usage
    assert text.startswith("Sandbox received the tool result: "), text
    assert len(text.split()) == 12
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 12
    check_receipt(store, toolcall, usage)


# --- 4. the catalog -----------------------------------------------------------------------------


def test_models_list_shows_lanes_and_priced_targets(store: Store) -> None:
    models = {m.id: m for m in store.sdk.models.list()}
    lanes = {i: m for i, m in models.items() if (m.model_extra or {}).get("kind") == "lane"}
    assert {"premium", "breadth", "low-cost", *LANES} <= set(lanes)
    for lane in lanes.values():
        assert lane.object == "model"
        assert lane.owned_by == "toolcallstore"
        targets = (lane.model_extra or {})["targets"]
        assert targets, lane.id
        for target in targets:  # every lane member can be asked for by name too
            assert (models[target].model_extra or {})["kind"] == "target", target
    assert (lanes["lane-gemini"].model_extra or {})["targets"] == ["sb-gemini/sandbox-model"]
    for protocol in PROTOCOLS:
        target = models[target_id(f"sb-{protocol}")]
        assert target.owned_by == f"sb-{protocol}"
        extra = target.model_extra or {}
        assert extra["supports_tools"] is True
        # Our list price: the provider's $1 / $2 per million tokens plus the 20 % markup.
        assert extra["pricing"]["input_usd_per_mtok"] == "1.2"
        assert extra["pricing"]["output_usd_per_mtok"] == "2.4"
    assert "gpt-4o-mini" in models  # an alias


def test_a_catalog_lane_answers_offline_with_a_test_key(store: Store) -> None:
    """`premium` names real providers; a test key is answered by their sandbox fakes."""
    lane = next(m for m in store.sdk.models.list() if m.id == "premium")
    first = (lane.model_extra or {})["targets"][0]  # "listed" order: the first one answers
    raw = store.sdk.chat.completions.with_raw_response.create(
        model="premium", messages=[{"role": "user", "content": PROMPT}]
    )
    response = raw.parse()
    assert response.model == first
    text = response.choices[0].message.content or ""
    assert text.startswith("Sandbox reply from "), text
    assert f"{PROMPT} lorem ipsum dolor" in text
    assert response.model_extra is not None
    toolcall = response.model_extra["toolcall"]
    assert toolcall["lane"] == "premium"
    assert toolcall["target"] == first
    check_headers(raw.headers, toolcall)
    receipt = store.get(f"/v1/receipts/{toolcall['receipt_id']}")
    store.receipt_ids.append(receipt["id"])
    assert receipt["amount_usd"] == toolcall["cost_usd"] != "0.000000"


async def test_concurrent_streams_each_get_their_answer_and_receipt(store: Store) -> None:
    """Nine streams at once through the async client, three per protocol: no answer is mixed
    up with another's, and each is charged once at its own usage's price."""
    client = openai.AsyncOpenAI(
        base_url=f"{store.server.base_url}/v1",
        api_key=store.agent_key,
        max_retries=0,
        timeout=30,
    )

    async def one(protocol: str, n: int) -> tuple[str, str, list[Any]]:
        prompt = f"Say hello to sandbox number {n}"
        events = await client.chat.completions.create(
            model=f"lane-{protocol}",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return protocol, prompt, [chunk async for chunk in events]

    async with client:
        runs = [one(protocol, n) for n in range(3) for protocol in PROTOCOLS]
        answers = await asyncio.gather(*runs)
    receipts = set()
    for protocol, prompt, chunks in answers:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"Sandbox reply from sandbox-model: {prompt} lorem ipsum"
        last = chunks[-1]
        assert last.choices == []
        assert last.usage.prompt_tokens == prompt_tokens(prompt)
        assert last.usage.completion_tokens == 12
        toolcall = toolcall_of(last, protocol)
        receipts.add(toolcall["receipt_id"])
        check_receipt(store, toolcall, last.usage)
    assert len(receipts) == len(answers)


# --- 5. the books -------------------------------------------------------------------------------


def test_books_balance_and_no_hold_is_left_open(store: Store) -> None:
    """Runs last: every charge above is on the ledger, and every hold was settled."""
    response = store.sdk.chat.completions.create(
        model="lane-openai", messages=[{"role": "user", "content": PROMPT}]
    )
    assert response.usage is not None
    check_receipt(store, toolcall_of(response, "openai"), response.usage)

    listed = store.get("/v1/receipts?limit=100")
    assert listed["has_more"] is False
    receipts = {r["id"]: r for r in listed["data"]}
    assert set(store.receipt_ids) <= set(receipts)
    assert len(set(store.receipt_ids)) == len(store.receipt_ids)  # one receipt per answer
    total = sum(micros(r["amount_usd"]) for r in receipts.values())

    tenant = next(c for c in store.get("/v1/spend_caps")["data"] if c["owner"] == "tenant")
    assert tenant["held_usd"] == "0.000000"
    assert tenant["spent_usd"] == usd(total)

    for period in sorted({r["period"] for r in receipts.values()}):
        report = store.get(f"/v1/admin/reconciliation?period={period}&livemode=false", admin=True)
        assert report["balanced"] is True, report["mismatches"]
        assert report["mismatches"] == []
        in_period = [r for r in receipts.values() if r["period"] == period]
        assert report["total"]["receipts"] == len(in_period)
        amounts = sum(micros(r["amount_usd"]) for r in in_period)
        assert report["total"]["customer_price_usd"] == usd(amounts)
