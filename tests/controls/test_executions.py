import asyncio
import secrets

from tests.conftest import Api
from tests.controls.helpers import execute, ledger_agrees, make_key, quote
from toolcallstore.controls.sweeper import sweep_holds

ECHO = {"tool": "sandbox.echo", "params": {"message": "hi"}}


def _db(api: Api):  # type: ignore[no-untyped-def]
    return api.app.state.services.db  # type: ignore[attr-defined]


async def _quoted(api: Api, agent: str, params: dict | None = None) -> str:
    q = await quote(api, agent, "sandbox.echo", params or {"message": "hi"})
    assert q.status_code == 200, q.text
    quote_id: str = q.json()["id"]
    return quote_id


async def test_a_retried_execution_replays_its_answer_and_charges_once(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat"])
    quote_id = await _quoted(api, agent)
    first = await execute(api, agent, {"quote_id": quote_id}, key="exec-1")
    again = await execute(api, agent, {"quote_id": quote_id}, key="exec-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert await _db(api).fetch_val("SELECT COUNT(*) FROM receipts") == 1
    other = await execute(api, agent, {"quote_id": quote_id}, key="exec-2")
    assert other.status_code == 409 and other.json()["error"]["code"] == "quote_already_used"
    same_quote = {"quote_id": quote_id, "params": {"message": "hi"}}  # valid, but another body
    changed = await execute(api, agent, same_quote, key="exec-1")
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"


async def test_execution_refusals_each_leave_nothing_behind(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat"])
    no_scope = await make_key(api, ["quotes:create", "receipts:read"])
    quote_id = await _quoted(api, agent)
    tenant = await api.client.post("/v1/tenants", json={"name": "t2"}, headers=api.idem())
    stranger = await make_key(api, ["quotes:create", "llm:chat"], tenant_id=tenant.json()["id"])
    cases = [
        (stranger, {"quote_id": quote_id}, 404, "not_found"),
        (no_scope, {"quote_id": quote_id}, 403, "insufficient_scope"),
        (agent, {"quote_id": quote_id, "params": {"message": "HI"}}, 422, "quote_mismatch"),
        (agent, {"quote_id": quote_id, "tool": "sandbox.irreversible"}, 422, "quote_mismatch"),
        (agent, {"quote_id": "q_doesnotexist"}, 404, "not_found"),
        (agent, {"quote_id": quote_id, "approval_id": "appr_x"}, 400, "invalid_parameter"),
        (agent, {"quote_id": quote_id, "project_id": "proj_x"}, 400, "invalid_parameter"),
        (agent, ECHO, 403, "quote_required"),  # no auto_quote_max_usd on this key
        (agent, {"params": {"message": "x"}}, 400, "missing_parameter"),
    ]
    for secret, body, status, code in cases:
        r = await execute(api, secret, body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
    missing_key = await api.client.post(
        "/v1/executions", json={"quote_id": quote_id}, headers=api.auth(agent)
    )
    assert missing_key.json()["error"]["code"] == "idempotency_key_required"
    db = _db(api)
    assert await db.fetch_val("SELECT COUNT(*) FROM executions") == 0
    assert await db.fetch_val("SELECT COUNT(*) FROM holds") == 0
    assert await db.fetch_val("SELECT state FROM quotes WHERE id = :id", {"id": quote_id}) == "open"
    ok = await execute(api, agent, {"quote_id": quote_id, "params": {"message": "hi"}})
    assert ok.status_code == 200  # the untampered quote still works, once


async def test_an_expired_quote_is_refused_with_410(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat"])
    quote_id = await _quoted(api, agent)
    # Stand-in for 15 minutes passing: the quote's expiry moves into the past.
    async with _db(api).transaction() as tx:
        await tx.execute("UPDATE quotes SET expires_at = 1 WHERE id = :id", {"id": quote_id})
    r = await execute(api, agent, {"quote_id": quote_id})
    assert r.status_code == 410 and r.json()["error"]["code"] == "quote_expired"
    got = await api.client.get(f"/v1/quotes/{quote_id}", headers=api.auth(agent))
    assert got.json()["status"] == "expired"


async def test_inline_quotes_follow_the_keys_auto_quote_limit(api: Api) -> None:
    agent = await make_key(api, ["llm:chat", "receipts:read"], auto_quote_max_usd="0.01")
    stingy = await make_key(api, ["llm:chat"], auto_quote_max_usd="0.001")
    r = await execute(api, agent, ECHO)
    assert r.status_code == 200, r.text
    assert r.json()["amount_usd"] == "0.001400"
    assert r.headers["toolcall-quote-id"] == r.json()["quote_id"]
    db = _db(api)
    inline = await db.fetch_one("SELECT * FROM quotes WHERE id = :id", {"id": r.json()["quote_id"]})
    assert inline["inline"] == 1 and inline["state"] == "used"  # stored, on the receipt
    above = await execute(api, stingy, ECHO)
    assert above.status_code == 403 and above.json()["error"]["code"] == "quote_required"
    assert above.json()["error"]["max_cost_usd"] == "0.001400"
    risky = {"tool": "sandbox.irreversible", "params": {"action": "buy"}}
    high = await execute(
        api, await make_key(api, ["domains:register"], auto_quote_max_usd="5"), risky
    )
    assert high.status_code == 403 and high.json()["error"]["code"] == "quote_required"


async def test_a_failing_tool_releases_its_hold_and_stores_the_failure(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat", "receipts:read"])
    quote_id = await _quoted(api, agent, {"message": "x", "fail": True})
    key = secrets.token_hex(8)
    r = await execute(api, agent, {"quote_id": quote_id}, key=key)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "provider_error" and error["execution_id"].startswith("exe_")
    receipt = await api.client.get(f"/v1/receipts/{error['receipt_id']}", headers=api.auth(agent))
    assert receipt.json()["status"] == "failed" and receipt.json()["amount_usd"] == "0.000000"
    replay = await execute(api, agent, {"quote_id": quote_id}, key=key)
    assert replay.status_code == 502 and replay.json() == r.json()  # stored once it ran
    db = _db(api)
    assert await db.fetch_val("SELECT state FROM holds") == "released"
    assert await db.fetch_val("SELECT COUNT(*) FROM ledger_entries") == 0
    await ledger_agrees(api)


async def test_receipts_list_filter_and_page_and_usage_sums_by_project_and_tool(api: Api) -> None:
    project = (await api.client.post("/v1/projects", json={"name": "p"}, headers=api.idem())).json()
    agent = await make_key(api, ["llm:chat", "receipts:read"], auto_quote_max_usd="1")
    for _ in range(3):
        assert (await execute(api, agent, ECHO)).status_code == 200
    for _ in range(2):
        body = {**ECHO, "project_id": project["id"]}
        assert (await execute(api, agent, body)).status_code == 200
    page = await api.client.get("/v1/receipts?limit=2", headers=api.auth(agent))
    assert len(page.json()["data"]) == 2 and page.json()["has_more"] is True
    last = page.json()["data"][-1]["id"]
    rest = await api.client.get(f"/v1/receipts?starting_after={last}", headers=api.auth(agent))
    assert len(rest.json()["data"]) == 3 and rest.json()["has_more"] is False
    in_project = await api.client.get(
        f"/v1/receipts?project_id={project['id']}", headers=api.auth(agent)
    )
    assert len(in_project.json()["data"]) == 2
    future = await api.client.get("/v1/receipts?from=4102444800", headers=api.auth(agent))
    assert future.json()["data"] == []
    usage = (await api.client.get("/v1/usage", headers=api.auth(agent))).json()
    rows = {(u["project_id"], u["tool"]): u for u in usage["data"]}
    assert rows[(None, "sandbox.echo")]["calls"] == 3
    assert rows[(project["id"], "sandbox.echo")]["amount_usd"] == "0.002800"
    assert usage["total_usd"] == "0.007000"
    bad = await api.client.get("/v1/usage?period=2026-13", headers=api.auth(agent))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"
    report = await ledger_agrees(api)
    assert report["providers"][0]["provider"] == "sandbox"
    assert report["total"]["margin_usd"] == "0.002000"  # 5 x (1400 - 1000) micro-USD


async def test_reconciliation_lists_rows_that_do_not_add_up(api: Api) -> None:
    agent = await make_key(api, ["llm:chat", "receipts:read"], auto_quote_max_usd="1")
    done = (await execute(api, agent, ECHO)).json()
    async with _db(api).transaction() as tx:  # someone edits the ledger behind our back
        await tx.execute(
            "UPDATE ledger_entries SET amount_micros = 1 WHERE receipt_id = :r AND kind = 'charge'",
            {"r": done["receipt_id"]},
        )
    from toolcallstore.controls.spend import period_of
    from toolcallstore.ids import now_us

    url = f"/v1/admin/reconciliation?period={period_of(now_us())}&livemode=false"
    report = (await api.client.get(url, headers=api.auth())).json()
    assert report["balanced"] is False
    kinds = {(m["kind"], m["id"]) for m in report["mismatches"]}
    assert ("receipt", done["receipt_id"]) in kinds
    assert any(kind == "spend_counter" for kind, _ in kinds)  # counter says 1400, ledger 1
    tenant_view = await api.client.get(url, headers=api.auth(agent))
    assert tenant_view.status_code == 403


async def test_a_retry_after_its_request_died_closes_the_dead_execution_and_replays_that(
    api: Api,
) -> None:
    # The first request dies mid-run (its task cancelled: the server process going away leaves
    # the same rows) and time passes beyond its hold and the key's lock before the sweep runs.
    # The retry must not take the key over and run the tool again: it closes the dead execution
    # as the sweep would and replays the failure, which later replays keep.
    db = api.app.state.services.db  # type: ignore[attr-defined]
    agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    body = {"tool": "sandbox.echo", "params": {"message": "hi", "delay_ms": 2000}}
    first = asyncio.ensure_future(execute(api, agent, body, key="dies"))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if await db.fetch_val("SELECT count(*) FROM holds WHERE state = 'open'") == 1:
            break
    first.cancel()
    async with db.transaction() as tx:
        await tx.execute("UPDATE holds SET expires_at = 1")
        await tx.execute("UPDATE idempotency_keys SET locked_at = 0")
    retry = await execute(api, agent, body, key="dies")
    assert retry.status_code == 500, retry.text
    assert retry.json()["error"]["code"] == "execution_interrupted"
    assert retry.headers["Idempotent-Replayed"] == "true"
    await sweep_holds(db, job_hold_seconds=60)  # finds nothing left to close
    replay = await execute(api, agent, body, key="dies")
    assert (replay.status_code, replay.json()) == (500, retry.json())
    assert await db.fetch_val("SELECT count(*) FROM executions") == 1
    assert await db.fetch_val("SELECT count(*) FROM ledger_entries") == 0
    assert await db.fetch_val("SELECT count(*) FROM holds WHERE state = 'open'") == 0
    await ledger_agrees(api)
