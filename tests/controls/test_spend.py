import asyncio
import secrets

from tests.conftest import Api
from tests.controls.helpers import ECHO_PRICE_MICROS, execute, ledger_agrees, make_key, set_cap

ECHO = {"tool": "sandbox.echo", "params": {"message": "m"}}


def _db(api: Api):  # type: ignore[no-untyped-def]
    return api.app.state.services.db  # type: ignore[attr-defined]


async def _caps(api: Api, secret: str | None = None) -> list[dict]:
    r = await api.client.get("/v1/spend_caps", headers=api.auth(secret))
    assert r.status_code == 200, r.text
    data: list[dict] = r.json()["data"]
    return data


async def test_200_concurrent_calls_against_a_cap_for_37_succeed_exactly_37_times(api: Api) -> None:
    cap = 37 * ECHO_PRICE_MICROS
    assert (await set_cap(api, monthly_cap_usd=f"0.{cap:06d}")).status_code == 200
    agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    results = await asyncio.gather(*(execute(api, agent, ECHO) for _ in range(200)))
    statuses = [r.status_code for r in results]
    assert statuses.count(200) == 37 and statuses.count(402) == 163
    refused = next(r for r in results if r.status_code == 402).json()["error"]
    assert refused["code"] == "spend_cap_exceeded" and refused["limit_source"] == "tenant"
    assert refused["cap_usd"] == "0.051800" and refused["requested_usd"] == "0.001400"
    assert {"spent_usd", "held_usd", "remedy_hint"} <= refused.keys()
    tenant = (await _caps(api))[0]
    assert (tenant["spent_usd"], tenant["held_usd"], tenant["remaining_usd"]) == (
        "0.051800", "0.000000", "0.000000",
    )  # fmt: skip
    db = _db(api)
    assert await db.fetch_val("SELECT COUNT(*) FROM receipts") == 37
    assert await db.fetch_val("SELECT COUNT(*) FROM holds") == 37  # refusals took no hold
    assert await db.fetch_val("SELECT COUNT(*) FROM executions") == 37
    await ledger_agrees(api)


async def test_retry_after_only_when_a_pending_hold_could_free_room(api: Api) -> None:
    assert (await set_cap(api, monthly_cap_usd="0.002")).status_code == 200  # room for one
    agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    slow = asyncio.create_task(
        execute(api, agent, {"tool": "sandbox.echo", "params": {"message": "x", "delay_ms": 500}})
    )
    while await _db(api).fetch_val("SELECT COUNT(*) FROM holds WHERE state = 'open'") == 0:
        await asyncio.sleep(0.01)
    while_held = await execute(api, agent, ECHO)
    assert while_held.status_code == 402 and while_held.headers["retry-after"] == "1"
    assert while_held.json()["error"]["held_usd"] == "0.001400"
    assert (await slow).status_code == 200
    after = await execute(api, agent, ECHO)
    assert after.status_code == 402 and "retry-after" not in after.headers
    assert after.json()["error"]["spent_usd"] == "0.001400"
    assert "Raise" in after.json()["error"]["remedy_hint"]


async def test_no_retry_after_when_the_projects_cap_can_never_take_the_call(api: Api) -> None:
    # The tenant's cap is full only of a call in flight (waiting would do), but the project's
    # is below the call's price: waiting can never help, so no Retry-After, and it says so.
    project = (await api.client.post("/v1/projects", json={"name": "p"}, headers=api.idem())).json()
    assert (await set_cap(api, monthly_cap_usd="0.002")).status_code == 200  # room for one
    capped = await set_cap(api, project_id=project["id"], monthly_cap_usd="0.001")
    assert capped.status_code == 200
    tenant_agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    project_agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1",
                                   project_id=project["id"])  # fmt: skip
    slow = asyncio.create_task(execute(api, tenant_agent, {
        "tool": "sandbox.echo", "params": {"message": "x", "delay_ms": 500}}))  # fmt: skip
    while await _db(api).fetch_val("SELECT COUNT(*) FROM holds WHERE state = 'open'") == 0:
        await asyncio.sleep(0.01)
    refused = await execute(api, project_agent, ECHO)
    assert (await slow).status_code == 200
    assert refused.status_code == 402 and "retry-after" not in refused.headers
    error = refused.json()["error"]
    assert (error["limit_source"], error["cap_usd"]) == ("project", "0.001000")
    assert "Raise" in error["remedy_hint"]


async def test_a_refused_call_can_be_retried_with_the_same_key_once_the_cap_is_raised(
    api: Api,
) -> None:
    assert (await set_cap(api, monthly_cap_usd="0.001")).status_code == 200
    agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    key = secrets.token_hex(8)
    first = await execute(api, agent, ECHO, key=key)
    assert first.status_code == 402  # a rejection before execution is not stored
    assert (await set_cap(api, monthly_cap_usd="1.00")).status_code == 200
    second = await execute(api, agent, ECHO, key=key)
    assert second.status_code == 200 and "idempotent-replayed" not in second.headers


async def test_a_project_cap_binds_its_project_and_names_itself(api: Api) -> None:
    project = (await api.client.post("/v1/projects", json={"name": "p"}, headers=api.idem())).json()
    capped = await set_cap(api, project_id=project["id"], monthly_cap_usd="0.0028")
    assert capped.status_code == 200 and capped.json()["owner"] == "project"
    agent = await make_key(api, ["llm:chat", "receipts:read"], auto_quote_max_usd="1",
                           project_id=project["id"])  # fmt: skip
    results = [await execute(api, agent, ECHO) for _ in range(3)]
    assert [r.status_code for r in results] == [200, 200, 402]
    assert results[2].json()["error"]["limit_source"] == "project"
    caps = {c["owner"]: c for c in await _caps(api, agent)}
    assert caps["project"]["spent_usd"] == caps["tenant"]["spent_usd"] == "0.002800"
    await ledger_agrees(api)


async def test_setting_a_cap_answers_with_that_owners_cap(api: Api) -> None:
    project = (await api.client.post("/v1/projects", json={"name": "p"}, headers=api.idem())).json()
    tenant = (await set_cap(api, monthly_cap_usd="10")).json()
    assert (tenant["owner"], tenant["project_id"], tenant["monthly_cap_usd"]) == (
        "tenant", None, "10.000000")  # fmt: skip
    capped = (await set_cap(api, project_id=project["id"], monthly_cap_usd="2")).json()
    assert (capped["owner"], capped["project_id"], capped["monthly_cap_usd"]) == (
        "project", project["id"], "2.000000")  # fmt: skip


async def test_only_billing_managers_set_caps_and_bad_amounts_are_refused(api: Api) -> None:
    billing = await make_key(api, ["billing:manage"])
    agent = await make_key(api, ["llm:chat"])
    denied = await api.client.post(
        "/v1/spend_caps", json={"monthly_cap_usd": "5"}, headers=api.auth(agent)
    )
    assert (
        denied.status_code == 403 and denied.json()["error"]["required_scope"] == "billing:manage"
    )
    for bad in ("-1", "1.0000001", "abc", True):
        r = await api.client.post(
            "/v1/spend_caps", json={"monthly_cap_usd": bad}, headers=api.auth(billing)
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "monthly_cap_usd", bad
    ok = await api.client.post(
        "/v1/spend_caps", json={"monthly_cap_usd": "5"}, headers=api.auth(billing)
    )
    assert ok.json()["monthly_cap_usd"] == "5.000000"
    cleared = await api.client.post(
        "/v1/spend_caps", json={"monthly_cap_usd": None}, headers=api.auth(billing)
    )
    assert cleared.json()["monthly_cap_usd"] is None and cleared.json()["remaining_usd"] is None
