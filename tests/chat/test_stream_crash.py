"""Issue 22, defect 4: a stream cut by a kill -9 is closed by the sweep under the receipt id it
announced, charging what it had delivered (its last checkpoint: provider cost, and the
customer's price within the hold), flagged as estimated. A real server subprocess, a slow
sandbox stream, a real kill."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson

from tests.chat.helpers import models_file
from tests.conftest import kill_server, start_server
from toolcallstore.controls.reconciliation import reconcile
from toolcallstore.controls.spend import period_of
from toolcallstore.controls.sweeper import sweep_holds
from toolcallstore.db import Database
from toolcallstore.ids import now_us

# 400 words, one every 100 ms: the stream runs for about 40 s unless killed.
PROVIDERS = {"slow": ("openai", "latency_ms=100,words=400")}


def test_a_stream_killed_mid_way_is_charged_what_it_delivered_under_its_receipt_id(
    database_url: str, tmp_path: Path
) -> None:
    file = models_file(tmp_path, PROVIDERS, {"slow": ["slow"]})
    server = start_server(database_url, tmp_path, TOOLCALLSTORE_MODELS_FILE=str(file))
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    chunks = 0
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            made = client.post("/v1/keys", headers={**admin, "Idempotency-Key": "agent"},
                               json={"scopes": ["llm:chat", "receipts:read"],
                                     "auto_quote_max_usd": "1.00"})  # fmt: skip
            assert made.status_code == 200, made.text
            agent = {"Authorization": f"Bearer {made.json()['secret']}"}
            body = {"model": "slow", "stream": True, "max_tokens": 1000,
                    "messages": [{"role": "user", "content": "tell me a long story"}]}  # fmt: skip
            with client.stream("POST", "/v1/chat/completions", json=body, headers=agent) as r:
                assert r.status_code == 200
                receipt_id = r.headers["ToolCall-Receipt-Id"]
                lines = r.iter_lines()
                while chunks < 10:  # a second of the answer has reached us
                    chunks += next(lines).startswith("data: ")
                # Its first checkpoint (at the first token) is written off the stream's path.
                asyncio.run(_wait_for_checkpoint(database_url))
                kill_server(server)
                try:
                    for _ in lines:
                        pass
                except httpx.TransportError:
                    pass
    finally:
        if server.process.poll() is None:
            kill_server(server)

    receipt, execution, report, counters = asyncio.run(_sweep_and_read(database_url, receipt_id))
    assert execution["state"] == "failed" and execution["receipt_id"] == receipt_id
    assert orjson.loads(execution["error"])["code"] == "execution_interrupted"
    assert receipt is not None, "the sweep wrote no receipt under the announced id"
    assert receipt["status"] == "failed" and receipt["estimated"]
    assert receipt["provider_cost_micros"] > 0 and receipt["price_micros"] > 0
    usage = orjson.loads(receipt["usage"])
    assert usage["estimated"] and usage["interrupted"] and usage["prompt_tokens"] > 0
    assert counters["spent_micros"] == receipt["price_micros"]
    assert counters["held_micros"] == 0
    assert report["balanced"], report["mismatches"]


async def _wait_for_checkpoint(database_url: str) -> None:
    db = Database(database_url)
    await db.connect()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if await db.fetch_val("SELECT count(*) FROM executions WHERE delivered IS NOT NULL"):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the stream wrote no checkpoint")
    finally:
        await db.disconnect()


async def _sweep_and_read(database_url: str, receipt_id: str):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    await db.connect()
    try:
        # The hold outlives the call's time limit by the grace period: let that pass.
        async with db.transaction() as tx:
            await tx.execute("UPDATE holds SET expires_at = :t WHERE state = 'open'",
                             {"t": now_us() - 1})  # fmt: skip
        swept = await sweep_holds(db, job_hold_seconds=3600)
        assert swept["holds_released"] == 1, swept
        receipt = await db.fetch_one("SELECT * FROM receipts WHERE id = :id", {"id": receipt_id})
        execution = await db.fetch_one("SELECT * FROM executions WHERE receipt_id = :id",
                                       {"id": receipt_id})  # fmt: skip
        report = await reconcile(db, period_of(now_us()), False)
        counters = await db.fetch_one(
            "SELECT * FROM spend_counters WHERE owner_id = :t AND livemode = 0",
            {"t": execution["tenant_id"]},
        )
    finally:
        await db.disconnect()
    return receipt, execution, report, counters
