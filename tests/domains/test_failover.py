"""Registration under registrar faults: failover only when nothing was done, a clean 409 for a
taken name, and an ambiguous timeout resolved by asking the registrar, never by buying twice."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.domains.helpers import CONTACT, Live, receipts_and_ledger


async def _quoted(live: Live, agent: str, human: str, name: str) -> dict[str, Any]:
    params = {"name": name, "years": 1, "contact": CONTACT}
    q = await live.quote(agent, "domains.register", params)
    assert q.status_code == 200, q.text
    approval_id = await live.approve(agent, human, q.json()["id"])
    return {**params, "quote_id": q.json()["id"], "approval_id": approval_id}


async def _count(live: Live, sql: str) -> int:
    return int(await live.svc.db.fetch_val(sql))


async def test_openprovider_down_fails_over_to_porkbun(live: Live) -> None:
    agent, human = await live.key(), await live.key(["approvals:grant"])
    body = await _quoted(live, agent, human, "failover-shop.net")
    await live.fault("openprovider", "down")  # every request: 503, maintenance
    r = await live.client.post("/v1/domains", json=body, headers=live.idem(agent))
    assert r.status_code == 202, r.text
    done = await live.wait_domain(agent, "failover-shop.net")
    assert (done["status"], done["registrar"]) == ("registered", "porkbun")
    receipt = await receipts_and_ledger(live, done["receipt_id"])
    assert receipt["providers"] == ["porkbun"] and receipt["status"] == "succeeded"
    assert receipt["amount_usd"] == "12.050000"  # OpenProvider's quoted 10.50 x 1.10 + 0.50
    assert [k for k, _ in receipt["ledger"]].count("charge") == 1
    assert (await live.fake_log("porkbun"))["creates"] == ["failover-shop.net"]
    assert (await live.fake_log("openprovider"))["creates"] == []
    assert await _count(live, "SELECT count(*) FROM holds WHERE state = 'open'") == 0


async def test_taken_at_openprovider_is_a_clean_409_without_failover(live: Live) -> None:
    agent, human = await live.key(), await live.key(["approvals:grant"])
    body = await _quoted(live, agent, human, "taken-shop.com")
    r = await live.client.post(f"{live.fake('openprovider')}/_taken",
                               json={"name": "taken-shop.com"})  # fmt: skip
    assert r.status_code == 200
    r = await live.client.post("/v1/domains", json=body, headers=live.idem(agent))
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "domain_unavailable"
    assert (await live.fake_log("porkbun"))["requests"] == []  # Porkbun never asked
    assert await _count(live, "SELECT count(*) FROM executions") == 0
    assert await _count(live, "SELECT count(*) FROM holds") == 0
    assert await _count(live, "SELECT count(*) FROM ledger_entries") == 0
    # The quote was not used: the agent may pick another name, this one stays refused.
    q = await live.client.get(f"/v1/quotes/{body['quote_id']}", headers=live.auth(agent))
    assert q.json()["status"] == "open"


async def test_timeout_after_openprovider_acted_is_resolved_by_asking(live: Live) -> None:
    agent, human = await live.key(), await live.key(["approvals:grant"])
    body = await _quoted(live, agent, human, "slow-shop.com")
    # The create is done, and its answer comes after the 2 s client timeout.
    await live.fault("openprovider", "timeout_after_acting", path="/domains", method="POST",
                     times=1, delay_ms=4000)  # fmt: skip
    r = await live.client.post("/v1/domains", json=body, headers=live.idem(agent))
    assert r.status_code == 202, r.text
    done = await live.wait_domain(agent, "slow-shop.com")
    assert (done["status"], done["registrar"]) == ("registered", "openprovider")
    receipt = await receipts_and_ledger(live, done["receipt_id"])
    assert receipt["ledger"].count(("charge", 9_366_000)) == 1
    assert [a["outcome"] for a in receipt["attempts"]] == ["registered"]
    assert (await live.fake_log("openprovider"))["creates"] == ["slow-shop.com"]
    assert (await live.fake_log("porkbun"))["requests"] == []
    attempts = await live.svc.db.fetch_val("SELECT attempts FROM domains")
    assert "timed" in attempts.lower() or "ReadTimeout" in attempts


async def test_a_dearer_failover_is_not_bought_and_the_retry_waits_for_openprovider(
    live: Live,
) -> None:
    """Porkbun's .com costs more than the price quoted from OpenProvider: no sale at a loss.
    Nothing was done anywhere, so the job retries; once OpenProvider is back it registers."""
    agent, human = await live.key(), await live.key(["approvals:grant"])
    body = await _quoted(live, agent, human, "dear-shop.com")
    await live.fault("openprovider", "down")
    r = await live.client.post("/v1/domains", json=body, headers=live.idem(agent))
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    async def first_attempt_failed() -> bool:
        job = await live.get(agent, f"/v1/jobs/{job_id}")
        return bool(job["attempts"] >= 1 and job["state"] == "queued")

    while not await first_attempt_failed():
        await asyncio.sleep(0.05)
    found = await live.get(agent, "/v1/domains/dear-shop.com")
    assert (found["status"], found["registrar"]) == ("registering", None)
    assert (await live.fake_log("porkbun"))["creates"] == []
    r = await live.client.delete(f"{live.fake('openprovider')}/_faults")
    assert r.status_code == 200
    done = await live.wait_domain(agent, "dear-shop.com")
    assert (done["status"], done["registrar"]) == ("registered", "openprovider")
    receipt = await receipts_and_ledger(live, done["receipt_id"])
    assert receipt["ledger"].count(("charge", 9_366_000)) == 1
    outcomes = [(a["provider"], a["outcome"]) for a in receipt["attempts"]]
    assert outcomes == [("openprovider", "nothing_done"), ("porkbun", "nothing_done"),
                        ("openprovider", "registered")]  # fmt: skip
    assert (await live.fake_log("porkbun"))["creates"] == []
    assert await _count(live, "SELECT count(*) FROM holds WHERE state = 'open'") == 0


async def test_a_replayed_registration_answers_the_first_202_and_buys_nothing_more(
    live: Live,
) -> None:
    agent, human = await live.key(), await live.key(["approvals:grant"])
    body = await _quoted(live, agent, human, "replay-shop.org")
    headers = live.idem(agent, key="register-replay-shop")
    first = await live.client.post("/v1/domains", json=body, headers=headers)
    assert first.status_code == 202, first.text
    await live.wait_domain(agent, "replay-shop.org")
    again = await live.client.post("/v1/domains", json=body, headers=headers)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert await _count(live, "SELECT count(*) FROM executions") == 1
    assert (await live.fake_log("openprovider"))["creates"] == ["replay-shop.org"]
    # Another key (a new request) for the same name: it is ours already, a clean 409.
    q = await live.quote(
        agent, "domains.register", {k: body[k] for k in ("name", "years", "contact")}
    )
    assert q.status_code == 409 and q.json()["error"]["code"] == "domain_unavailable"
