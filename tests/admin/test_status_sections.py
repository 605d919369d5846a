"""What the status page says about money, the audit chain and webhook endpoints, from real
executions, a tampered counter and row, and a receiver answering 500."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.admin.helpers import csrf_of, db_of, execute, new_key, operator_tenant, sign_in
from tests.conftest import Api, running_api
from tests.webhooks.helpers import FAST, Receiver, create_endpoint, wait_for
from toolcallstore.settings import Settings


async def _status(api: Api) -> dict[str, Any]:
    r = await api.client.get("/admin/status.json")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _echo(api: Api, delay_ms: int = 0) -> dict[str, Any]:
    body = {"tool": "sandbox.echo", "params": {"message": "hi", "delay_ms": delay_ms}}
    quote = await api.client.post("/v1/quotes", json=body, headers=api.idem())
    assert quote.status_code == 200, quote.text
    done = await api.client.post("/v1/executions", json={"quote_id": quote.json()["id"]},
                                 headers=api.idem())  # fmt: skip
    assert done.status_code == 200, done.text
    result: dict[str, Any] = done.json()
    return result


async def test_spend_open_holds_and_reconciliation_differences(ops: tuple[Api, str]) -> None:
    api, secret = ops
    db = db_of(api)
    tenant = await operator_tenant(db)
    await execute(db, "UPDATE tenants SET name = :n WHERE id = :id",
                     {"n": "<script>alert(1)</script>", "id": tenant})  # fmt: skip
    first = await _echo(api)
    # A counter that no longer equals the ledger: the reconciliation must name it.
    await execute(db, "UPDATE spend_counters SET spent_micros = spent_micros + 1"
                     " WHERE owner_id = :id", {"id": tenant})  # fmt: skip
    await sign_in(api.client, secret)
    slow = asyncio.create_task(_echo(api, delay_ms=1500))
    try:
        while not (status := await _status(api))["status"]["money"]["open_holds"]:
            await asyncio.sleep(0.05)
    finally:
        second = await slow
    money = status["status"]["money"]
    [hold] = money["open_holds"]
    assert hold["tenant_id"] == tenant and hold["count"] == 1 and not hold["livemode"]
    assert hold["amount_usd"] == second["amount_usd"]  # sandbox.echo holds its fixed price
    [spend] = money["spend"]
    assert spend["today_usd"] == spend["month_usd"] == first["amount_usd"]
    assert not money["reconciliation"]["balanced"]
    [diff] = money["reconciliation"]["mismatches"]
    assert diff["kind"] == "spend_counter" and diff["id"] == tenant
    html = status["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert f"spend_counter {tenant}" in html and "difference(s)" in html


async def test_the_audit_chain_is_checked_cheaply_and_walked_on_demand(
    ops: tuple[Api, str],
) -> None:
    api, secret = ops
    svc = api.app.state.services  # type: ignore[attr-defined]
    db = db_of(api)
    await sign_in(api.client, secret)
    await svc.audit.seal()  # every row so far chained (Postgres seals after commit)
    status = await _status(api)
    audit = status["status"]["audit"]
    assert audit["tail_ok"] and audit["rows"] > 0 and audit["full_check"] is None
    token = csrf_of(status["html"])
    r = await api.client.post("/admin/audit/verify", data={"csrf": token})
    assert r.headers["location"] == "/admin?done=verified"
    walked = (await _status(api))["status"]["audit"]["full_check"]
    assert walked["ok"] and walked["rows_checked"] >= audit["rows"]
    await execute(db, "UPDATE audit_log SET path = '/tampered' WHERE seq = 1")
    await api.client.post("/admin/audit/verify", data={"csrf": token})
    after = await _status(api)
    walked = after["status"]["audit"]["full_check"]
    assert not walked["ok"] and walked["broken_at"] == 1
    assert "broken at row 1: row content does not match its hash" in after["html"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    answering = await Receiver(script=[(500, {}, b"down")] * 5).start()
    try:
        yield answering
    finally:
        await answering.stop()


async def test_a_failing_webhook_endpoint_is_listed(settings: Settings, receiver: Receiver) -> None:
    async with running_api(settings.with_(**FAST)) as api:
        db = db_of(api)
        secret = await new_key(db, await operator_tenant(db), "live", ("admin",))
        endpoint = await create_endpoint(api, receiver.url)
        await sign_in(api.client, secret)
        assert (await _status(api))["status"]["webhooks"] == []
        r = await api.client.post(f"/v1/webhook_endpoints/{endpoint['id']}/test",
                                  json={}, headers=api.idem(key=secrets.token_hex(8)))  # fmt: skip
        assert r.status_code == 202, r.text

        async def listed() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (await _status(api))["status"]["webhooks"]
            return found

        [failing] = await wait_for(listed, what="the endpoint to be listed as failing")
        assert failing["id"] == endpoint["id"] and failing["url"] == receiver.url
        assert failing["last_error"] == "HTTP 500" and not failing["disabled"]
        assert failing["pending_deliveries"] == 1  # retried on the schedule
