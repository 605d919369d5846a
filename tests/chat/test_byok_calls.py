"""A tenant's own provider key (BYOK): its live calls to that provider go out with that key,
cost us nothing and are charged only the fee; without it the provider is not configured."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.chat.helpers import Live, live_server, loopback_upstream, models_file, point_provider
from toolcallstore.db.keys import insert_key
from toolcallstore.settings import Settings

MASTER = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()


class Upstream:
    """An OpenAI-protocol provider that remembers the key each call came with."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def handle(self, request: Request) -> Response:
        self.keys.append(request.headers.get("authorization", ""))
        usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        if not (await request.json()).get("stream"):  # a plain call is answered whole
            message = {"role": "assistant", "content": "hi from mine"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            completion = {"object": "chat.completion", "choices": [choice], "usage": usage}
            return Response(orjson.dumps(completion), media_type="application/json")

        async def body() -> AsyncIterator[bytes]:
            chunk = {"choices": [{"index": 0, "delta": {"content": "hi from mine"}}]}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield b"data: " + orjson.dumps(done) + b"\n\n"
            yield b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
async def setup(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Live, Upstream, str]]:
    upstream = Upstream()
    file = models_file(tmp_path, {"mine": ("openai", None)}, {"mine-lane": ["mine"]})
    async with loopback_upstream(upstream.handle) as base_url:
        point_provider(file, "mine", base_url, llm_fee_usd="0.001")
        async with live_server(settings.with_(models_file=str(file), master_key=MASTER)) as live:
            yield live, upstream, await live_key(live)


async def live_key(live: Live) -> str:
    """A live-mode key of the bootstrap tenant (test keys never reach real providers)."""
    db = live.app.state.services.db
    tenant = await db.fetch_val("SELECT tenant_id FROM api_keys LIMIT 1")
    async with db.transaction() as tx:
        _, secret = await insert_key(tx, tenant_id=tenant, project_id=None, name="live",
                                     mode="live", scopes=("keys:manage", "llm:chat",
                                     "receipts:read"), auto_quote_max_micros=1_000_000)  # fmt: skip
    return secret


async def own_key(live: Live, key: str) -> str:
    """Store a new provider key of the tenant's own for "mine"; returns it."""
    own = "sk-mine-" + secrets.token_hex(12)
    r = await live.client.post("/v1/byok-keys", json={"provider": "mine", "key": own},
                               headers={**live.auth(key), "Idempotency-Key": own})  # fmt: skip
    assert r.status_code == 200, r.text
    return own


async def test_a_tenants_own_key_is_used_and_only_the_fee_is_charged(
    setup: tuple[Live, Upstream, str],
) -> None:
    live, upstream, key = setup
    body = {"model": "mine-lane", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    refused = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert refused.status_code == 503  # no operator key for "mine", and no BYOK yet
    assert refused.json()["error"]["code"] == "provider_not_configured"
    own = "sk-mine-" + secrets.token_hex(12)
    r = await live.client.post("/v1/byok-keys", json={"provider": "mine", "key": own},
                               headers={**live.auth(key), "Idempotency-Key": "b1"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["last4"] == own[-4:] and own not in r.text
    r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert r.status_code == 200, r.text
    assert upstream.keys == [f"Bearer {own}"]
    toolcall = r.json()["toolcall"]
    assert toolcall["cost_usd"] == "0.001000"  # the fee: the provider bills the tenant
    assert toolcall["attempts"][0]["byok"] is True
    receipt = await live.client.get(f"/v1/receipts/{toolcall['receipt_id']}",
                                    headers=live.auth())  # fmt: skip
    assert receipt.status_code == 404  # the admin key is test mode: live receipts are apart
    receipt = await live.client.get(f"/v1/receipts/{toolcall['receipt_id']}",
                                    headers=live.auth(key))  # fmt: skip
    assert receipt.status_code == 200 and receipt.json()["amount_usd"] == "0.001000"
    db = live.app.state.services.db
    row = await db.fetch_one("SELECT price_micros, provider_cost_micros FROM receipts"
                             " WHERE id = :id", {"id": toolcall["receipt_id"]})  # fmt: skip
    assert row is not None and (row["price_micros"], row["provider_cost_micros"]) == (1000, 0)


async def test_llm_chat_executions_use_the_tenants_key_too(
    setup: tuple[Live, Upstream, str],
) -> None:
    live, upstream, key = setup
    own = await own_key(live, key)
    params = {"model": "mine-lane", "messages": [{"role": "user", "content": "hi"}],
              "max_tokens": 5}  # fmt: skip
    r = await live.client.post("/v1/executions", json={"tool": "llm.chat", "params": params},
                               headers={**live.auth(key), "Idempotency-Key": "e1"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert upstream.keys == [f"Bearer {own}"]
    assert r.json()["amount_usd"] == "0.001000"


async def test_a_byok_call_holds_the_fee_it_is_charged_not_the_list_price(
    setup: tuple[Live, Upstream, str],
) -> None:
    # A cap with room for the fee but not for the call at list prices: the call goes through,
    # because the provider bills the tenant and we hold and charge only the fee.
    live, upstream, key = setup
    await own_key(live, key)
    db = live.app.state.services.db
    tenant = await db.fetch_val("SELECT tenant_id FROM api_keys LIMIT 1")
    async with db.transaction() as tx:
        await tx.execute("UPDATE tenants SET monthly_cap_micros = 1500 WHERE id = :t",
                         {"t": tenant})  # fmt: skip
    body = {"model": "mine-lane", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1000}  # fmt: skip
    r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert r.status_code == 200, r.text
    assert r.json()["toolcall"]["cost_usd"] == "0.001000"
    hold = await db.fetch_val("SELECT amount_micros FROM holds WHERE tenant_id = :t"
                              " AND livemode = 1", {"t": tenant})  # fmt: skip
    assert hold == 1000
