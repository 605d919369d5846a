"""A crash (kill -9) after the provider accepted a generation and before its result: the
restarted server resumes polling the same provider request; the provider was asked to
generate exactly once and the tenant is charged exactly once."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.controls.helpers import ledger_agrees, make_key
from tests.controls.test_crash import (
    QUIET,
    Process,
    _assert_stopped_clean,
    _database,
    _eventually,
    _tenant_counters,
)
from tests.media.helpers import AGENT_SCOPES, media_models_file, price_micros
from toolcallstore.money import micros_to_usd

SANDBOX_APP = (
    "import sys, uvicorn; from toolcallstore.sandbox import create_sandbox_app;"
    " uvicorn.run(create_sandbox_app(), host='127.0.0.1', port=int(sys.argv[1]),"
    " log_level='warning')"
)


@pytest.fixture
def sandbox() -> Iterator[str]:
    """The sandbox fakes in a process of their own: they outlive the killed server."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SANDBOX_APP, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/replicate/_submissions", timeout=1)
                break
            except httpx.TransportError:
                import time

                time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()


async def test_a_generation_killed_after_acceptance_resumes_and_charges_once(
    database_url: str, tmp_path: Path, sandbox: str
) -> None:
    # The provider holds the job queued for 4 s: long enough to kill the server meanwhile.
    file = media_models_file(tmp_path, {"slow": ("replicate", "stall_ms=4000", "0.03")})
    env = {**QUIET, "TOOLCALLSTORE_JOB_LEASE_SECONDS": "2", "TOOLCALLSTORE_SANDBOX_URL": sandbox,
           "TOOLCALLSTORE_MODELS_FILE": str(file),
           "TOOLCALLSTORE_MEDIA_POLL_MAX_SECONDS": "0.5"}  # fmt: skip
    db = await _database(database_url)
    prompt = "crash " + secrets.token_hex(4)
    first = await Process.start(database_url, tmp_path, env)
    try:
        api = first.api
        agent = await make_key(api, AGENT_SCOPES, auto_quote_max_usd="1.00")
        r = await api.client.post(
            "/v1/media/generations", headers=api.idem(agent),
            json={"prompt": prompt, "model": "slow/sandbox-model", "size": "512x512"},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        generation_id = r.json()["id"]

        async def accepted() -> bool:
            state = await db.fetch_val("SELECT state FROM media_attempts")
            return bool(state == "submitted")

        await _eventually(accepted, "the provider accepted the generation", timeout=20)
        await first.kill()
    finally:
        await first.close()
    before = await db.fetch_one("SELECT id, request_id FROM media_attempts")
    assert before is not None
    assert await db.fetch_val(
        "SELECT status FROM media_generations WHERE id = :id", {"id": generation_id}
    ) in ("queued", "running"), "it finished before the kill"

    second = await Process.start(database_url, tmp_path, env)
    try:
        api = second.api
        headers = api.auth(agent)

        async def done() -> bool:
            got = await api.client.get(f"/v1/media/generations/{generation_id}?wait=5",
                                       headers=headers)  # fmt: skip
            body = got.json()
            return bool(body["status"] != "queued" and body["status"] != "running"
                        and body["receipt_id"])  # fmt: skip

        await _eventually(done, "the restarted server finished the generation", timeout=60)
        body = (await api.client.get(f"/v1/media/generations/{generation_id}",
                                     headers=headers)).json()  # fmt: skip
        assert body["status"] == "succeeded", body
        got = await api.client.get(body["assets"][0]["url"])
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        # The same provider request finished it: one attempt, never submitted again.
        after = await db.fetch_all("SELECT id, request_id, state FROM media_attempts")
        assert [(a["id"], a["request_id"], a["state"]) for a in after] == [
            (before["id"], before["request_id"], "succeeded")
        ]
        counts = httpx.get(sandbox + "/replicate/_submissions").json()
        assert counts["by_prompt"] == {prompt: 1}
        # Charged once.
        price = micros_to_usd(price_micros("0.03"))
        assert body["amount_usd"] == price
        receipts = await db.fetch_all("SELECT status, price_micros FROM receipts")
        assert [(r["status"], micros_to_usd(int(r["price_micros"]))) for r in receipts] == [
            ("succeeded", price)
        ]
        assert await _tenant_counters(api, agent) == (price, "0.000000")
        await ledger_agrees(api)
    finally:
        out = await second.close()
        await db.disconnect()
    await _assert_stopped_clean(out, database_url)
    await asyncio.sleep(0)
