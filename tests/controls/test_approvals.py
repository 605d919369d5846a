import asyncio

import pytest

from tests.conftest import Api
from tests.controls.helpers import execute, ledger_agrees, make_key, quote, set_cap
from toolcallstore.controls.sweeper import sweep_holds
from toolcallstore.db.keys import insert_key
from toolcallstore.queue import worker

RISKY = {"action": "buy example.com"}
AGENT_SCOPES = ["quotes:create", "domains:register", "receipts:read", "jobs:read"]


def _db(api: Api):  # type: ignore[no-untyped-def]
    return api.app.state.services.db  # type: ignore[attr-defined]


async def _request(api: Api, agent: str, quote_id: str) -> dict:
    r = await api.client.post("/v1/approvals", json={"quote_id": quote_id}, headers=api.idem(agent))
    assert r.status_code == 200, r.text
    approval: dict = r.json()
    return approval


async def _decide(api: Api, secret: str, approval_id: str, verb: str = "grant"):  # type: ignore[no-untyped-def]
    return await api.client.post(f"/v1/approvals/{approval_id}/{verb}", headers=api.auth(secret))


async def _approved_job(api: Api, params: dict) -> tuple[str, dict]:
    """An agent's key, and the 202 answer of its `sandbox.irreversible` call, which another
    key approved: the call runs as a job."""
    agent = await make_key(api, AGENT_SCOPES)
    human = await make_key(api, ["approvals:grant"])
    q = (await quote(api, agent, "sandbox.irreversible", params)).json()
    approval = await _request(api, agent, q["id"])
    await _decide(api, human, approval["id"])
    started = await execute(api, agent, {"quote_id": q["id"], "approval_id": approval["id"]})
    assert started.status_code == 202, started.text
    answer: dict = started.json()
    return agent, answer


async def _finished(api: Api, secret: str, execution_id: str) -> dict:
    for _ in range(200):
        r = await api.client.get(f"/v1/executions/{execution_id}", headers=api.auth(secret))
        if r.json()["status"] != "running":
            body: dict = r.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("the execution did not finish")


async def test_a_high_risk_tool_runs_only_after_another_key_grants_it(api: Api) -> None:
    agent = await make_key(api, [*AGENT_SCOPES, "approvals:grant"])
    human = await make_key(api, ["approvals:grant"])
    q = (await quote(api, agent, "sandbox.irreversible", RISKY)).json()
    assert q["requires_approval"] is True and q["approval_reasons"] == ["tool_risk_high"]
    unapproved = await execute(api, agent, {"quote_id": q["id"]})
    assert unapproved.status_code == 403
    assert unapproved.json()["error"]["code"] == "approval_required"
    assert unapproved.json()["error"]["approval_reasons"] == ["tool_risk_high"]
    approval = await _request(api, agent, q["id"])
    assert approval["status"] == "pending" and approval["max_cost_usd"] == "0.650000"
    again = await api.client.post(
        "/v1/approvals", json={"quote_id": q["id"]}, headers=api.idem(agent)
    )
    assert again.status_code == 409 and again.json()["error"]["approval_id"] == approval["id"]
    early = await execute(api, agent, {"quote_id": q["id"], "approval_id": approval["id"]})
    assert early.status_code == 403 and "pending" in early.json()["error"]["message"]
    own = await _decide(api, agent, approval["id"])  # it holds approvals:grant, still refused
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval_forbidden"
    inbox = await api.client.get("/v1/approvals?status=pending", headers=api.auth(human))
    assert [a["id"] for a in inbox.json()["data"]] == [approval["id"]]
    granted = await _decide(api, human, approval["id"])
    assert granted.status_code == 200 and granted.json()["status"] == "granted"
    twice = await _decide(api, human, approval["id"], "deny")
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "approval_already_decided"
    started = await execute(api, agent, {"quote_id": q["id"], "approval_id": approval["id"]})
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "running" and started.json()["job_id"].startswith("job_")
    done = await _finished(api, agent, started.json()["id"])
    assert done["status"] == "succeeded" and done["amount_usd"] == "0.650000"
    assert done["result"]["effect_id"] == done["id"]
    events = await _db(api).fetch_all("SELECT type FROM events ORDER BY id")
    types = [e["type"] for e in events]
    for expected in ("approval.requested", "approval.granted", "execution.succeeded",
                     "receipt.created"):  # fmt: skip
        assert expected in types
    await ledger_agrees(api)


async def test_an_approval_is_single_use_bound_to_its_quote_and_denial_sticks(api: Api) -> None:
    agent = await make_key(api, AGENT_SCOPES)
    human = await make_key(api, ["approvals:grant"])
    q1 = (await quote(api, agent, "sandbox.irreversible", RISKY)).json()
    q2 = (await quote(api, agent, "sandbox.irreversible", RISKY)).json()
    a1 = await _request(api, agent, q1["id"])
    await _decide(api, human, a1["id"])
    wrong_quote = await execute(api, agent, {"quote_id": q2["id"], "approval_id": a1["id"]})
    assert wrong_quote.status_code == 403
    assert "different quote" in wrong_quote.json()["error"]["message"]
    assert (
        await execute(api, agent, {"quote_id": q1["id"], "approval_id": a1["id"]})
    ).status_code == 202
    reused = await execute(api, agent, {"quote_id": q1["id"], "approval_id": a1["id"]})
    assert reused.status_code == 409  # the quote is used up, and so is its approval
    a2 = await _request(api, agent, q2["id"])
    denied = await _decide(api, human, a2["id"], "deny")
    assert denied.json()["status"] == "denied"
    refused = await execute(api, agent, {"quote_id": q2["id"], "approval_id": a2["id"]})
    assert refused.status_code == 403 and "denied" in refused.json()["error"]["message"]
    no_scope = await _decide(api, agent, a2["id"])
    assert (
        no_scope.status_code == 403
        and no_scope.json()["error"]["required_scope"] == "approvals:grant"
    )


async def test_expired_approvals_are_refused_and_swept(api: Api) -> None:
    agent = await make_key(api, AGENT_SCOPES)
    human = await make_key(api, ["approvals:grant"])
    q = (await quote(api, agent, "sandbox.irreversible", RISKY)).json()
    approval = await _request(api, agent, q["id"])
    await _decide(api, human, approval["id"])
    async with _db(api).transaction() as tx:  # stand-in for the quote's lifetime passing
        await tx.execute(
            "UPDATE approvals SET expires_at = 1 WHERE id = :id", {"id": approval["id"]}
        )
    r = await execute(api, agent, {"quote_id": q["id"], "approval_id": approval["id"]})
    assert r.status_code == 403 and "expired" in r.json()["error"]["message"]
    from toolcallstore.controls.sweeper import sweep_holds

    swept = await sweep_holds(_db(api), job_hold_seconds=60)
    assert swept["approvals_expired"] == 1
    got = await api.client.get(f"/v1/approvals/{approval['id']}", headers=api.auth(human))
    assert got.json()["status"] == "expired"
    assert (
        await _db(api).fetch_val("SELECT COUNT(*) FROM events WHERE type = 'approval.expired'") == 1
    )


async def test_quotes_above_the_tenants_threshold_need_approval(api: Api) -> None:
    assert (await set_cap(api, approval_threshold_usd="0.001")).status_code == 200
    agent = await make_key(api, ["quotes:create", "llm:chat"], auto_quote_max_usd="1")
    q = (await quote(api, agent, "sandbox.echo", {"message": "x"})).json()
    assert q["approval_reasons"] == ["above_approval_threshold"]
    inline = await execute(api, agent, {"tool": "sandbox.echo", "params": {"message": "x"}})
    assert inline.status_code == 403 and inline.json()["error"]["code"] == "quote_required"
    not_needed = await api.client.post(
        "/v1/approvals", json={"quote_id": q["id"]}, headers=api.idem(agent)
    )
    assert not_needed.status_code == 200
    assert (await set_cap(api, approval_threshold_usd=None)).status_code == 200
    cheap = (await quote(api, agent, "sandbox.echo", {"message": "x"})).json()
    assert cheap["requires_approval"] is False


async def test_a_cancelled_job_tool_gets_its_hold_released_by_the_sweep(api: Api) -> None:
    svc = api.app.state.services  # type: ignore[attr-defined]
    await svc.jobs.stop()  # no worker: the job stays queued until cancelled
    agent, started = await _approved_job(api, RISKY)
    cancel = await api.client.post(f"/v1/jobs/{started['job_id']}/cancel", headers=api.auth(agent))
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
    from toolcallstore.controls.sweeper import sweep_holds

    swept = await sweep_holds(_db(api), job_hold_seconds=60)
    assert swept["holds_released"] == 1  # at once: its job can no longer run, no expiry wait
    done = (await api.client.get(f"/v1/executions/{started['id']}", headers=api.auth(agent))).json()
    assert done["status"] == "failed" and done["amount_usd"] == "0.000000"
    assert await _db(api).fetch_val("SELECT COUNT(*) FROM sandbox_effects") == 0
    await ledger_agrees(api)
    tenant = await api.client.post("/v1/tenants", json={"name": "t2"}, headers=api.idem())
    stranger = await make_key(api, ["receipts:read"], tenant_id=tenant.json()["id"])
    hidden = await api.client.get(f"/v1/executions/{started['id']}", headers=api.auth(stranger))
    assert hidden.status_code == 404


async def test_a_tool_job_that_already_ran_cannot_be_cancelled_into_a_free_effect(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its first attempt acted (the purchase happened) and then failed; while it waits to be
    # retried, a cancel would have let the sweep release its hold unpaid.
    monkeypatch.setattr(worker, "backoff_us", lambda attempt: 5_000_000)
    agent, started = await _approved_job(api, RISKY | {"fail_times": 1})
    for _ in range(500):
        job = await _db(api).fetch_one("SELECT state, attempts FROM jobs WHERE id = :id",
                                       {"id": started["job_id"]})  # fmt: skip
        if (job["state"], job["attempts"]) == ("queued", 1):
            break
        await asyncio.sleep(0.02)
    assert (job["state"], job["attempts"]) == ("queued", 1), "the first attempt did not fail"
    cancel = await api.client.post(f"/v1/jobs/{started['job_id']}/cancel", headers=api.auth(agent))
    assert cancel.status_code == 409 and cancel.json()["error"]["code"] == "job_started"
    assert await _db(api).fetch_val("SELECT state FROM jobs WHERE id = :id",
                                    {"id": started["job_id"]}) == "queued"  # fmt: skip
    assert (await sweep_holds(_db(api), job_hold_seconds=60))["holds_released"] == 0


async def test_a_tool_job_that_fails_every_attempt_fails_with_its_execution(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "backoff_us", lambda attempt: 10_000)
    agent, started = await _approved_job(api, RISKY | {"fail_times": 5})
    done = await _finished(api, agent, started["id"])
    assert done["status"] == "failed" and done["amount_usd"] == "0.000000"
    for _ in range(200):
        job = (
            await api.client.get(f"/v1/jobs/{started['job_id']}", headers=api.auth(agent))
        ).json()
        if job["state"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.02)
    assert (job["state"], job["attempts"]) == ("failed", 5)
    await ledger_agrees(api)


async def test_a_live_key_neither_sees_nor_decides_test_mode_approvals(api: Api) -> None:
    # Test and live data stay apart (DESIGN §3), in the approver's inbox too.
    agent = await make_key(api, AGENT_SCOPES)
    q = await quote(api, agent, "sandbox.irreversible", RISKY)
    approval = await _request(api, agent, q.json()["id"])
    tenant_id = await _db(api).fetch_val("SELECT tenant_id FROM api_keys LIMIT 1")
    async with _db(api).transaction() as tx:  # live keys are made by live keys or the CLI
        _, live = await insert_key(tx, tenant_id=tenant_id, project_id=None, name="live",
                                   mode="live", scopes=("approvals:grant",))  # fmt: skip
    inbox = await api.client.get("/v1/approvals?status=pending", headers=api.auth(live))
    assert inbox.status_code == 200 and inbox.json()["data"] == []
    one = await api.client.get(f"/v1/approvals/{approval['id']}", headers=api.auth(live))
    assert one.status_code == 404
    assert (await _decide(api, live, approval["id"])).status_code == 404
    test_inbox = await api.client.get("/v1/approvals?status=pending", headers=api.auth())
    assert [a["id"] for a in test_inbox.json()["data"]] == [approval["id"]]
