"""End to end with a test key: check -> quote (approval) -> register -> apply MX/TXT/A ->
verified by real DNS queries at the sandbox's loopback DNS server; a receipt and ledger
entries for each billable step."""

from __future__ import annotations

import dns.asyncquery
import dns.message

from tests.domains.helpers import Live, receipts_and_ledger

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 400  # more than one 255-byte string


async def test_check_register_apply_verify(live: Live) -> None:
    agent = await live.key()
    human = await live.key(["approvals:grant"])
    r = await live.client.post(
        "/v1/domains/check",
        headers=live.auth(agent),
        json={"names": ["e2e-shop.com", "premium-e2e.io"]},
    )
    assert r.status_code == 200, r.text
    by_name = {d["name"]: d for d in r.json()["data"]}
    assert by_name["e2e-shop.com"] == {
        "name": "e2e-shop.com",
        "available": True,
        "premium": False,
        "registration_usd": "9.366000",
        "renewal_usd": "9.366000",
    }
    assert by_name["premium-e2e.io"]["premium"] is True

    registered = await live.register_domain(agent, human, "e2e-shop.com")
    assert registered["status"] == "registered" and registered["registrar"] == "openprovider"
    receipt = await receipts_and_ledger(live, registered["receipt_id"])
    assert receipt["status"] == "succeeded" and receipt["amount_usd"] == "9.366000"
    assert ("charge", 9_366_000) in receipt["ledger"]

    records = [
        {"name": "@", "type": "MX", "value": "mail.e2e-shop.com", "priority": 10, "ttl": 3600},
        {"name": "@", "type": "TXT", "value": "v=spf1 mx -all"},
        {"name": "sel._domainkey", "type": "TXT", "value": LONG_TXT},
        {"name": "www", "type": "A", "value": "192.0.2.10", "ttl": 600},
    ]
    q = await live.quote_dns(agent, "e2e-shop.com", records)
    assert q.status_code == 200, q.text
    line = q.json()["breakdown"]["lines"][0]
    assert len(line["diff"]["add"]) == 4 and line["diff"]["remove"] == []
    r = await live.apply_dns(agent, human, "e2e-shop.com", records)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "applied" and len(r.json()["applied"]) == 4
    assert r.json()["amount_usd"] == "0.040000"
    done = await live.wait_dns(agent, "e2e-shop.com")
    assert done["dns"]["status"] == "verified", done
    receipt = await receipts_and_ledger(live, r.json()["receipt_id"])
    assert ("charge", 40_000) in receipt["ledger"]

    # The records answer at the loopback authoritative server, as written.
    dns_server = live.svc.domains.sandbox.dns  # type: ignore[union-attr]
    query = dns.message.make_query("sel._domainkey.e2e-shop.com", "TXT", use_edns=0, payload=4096)
    answer, _ = await dns.asyncquery.udp_with_fallback(query, dns_server.host, port=dns_server.port,
                                                       timeout=2)  # fmt: skip
    strings = answer.answer[0][0].strings
    assert len(strings) == 2 and b"".join(strings) == LONG_TXT.encode()

    zone = await live.get(agent, "/v1/domains/e2e-shop.com/dns")
    assert sorted(r["type"] for r in zone["records"]) == ["A", "MX", "TXT", "TXT"]
    events = await live.svc.db.fetch_all("SELECT type FROM events WHERE type LIKE 'd%'")
    assert {e["type"] for e in events} >= {"domain.registered", "dns.applied", "dns.verified"}


async def test_a_dns_change_through_v1_executions_and_the_domain_list(live: Live) -> None:
    """dns.apply is a tool like any other: quoted, approved and run by POST /v1/executions."""
    agent = await live.key()
    human = await live.key(["approvals:grant"])
    await live.register_domain(agent, human, "exec-shop.dev")
    first = [{"name": "www", "type": "A", "value": "192.0.2.1"},
             {"name": "old", "type": "CNAME", "value": "www.exec-shop.dev"}]  # fmt: skip
    r = await live.apply_dns(agent, human, "exec-shop.dev", first)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    second = [{"name": "www", "type": "A", "value": "192.0.2.1", "ttl": 7200}]
    q = await live.quote_dns(agent, "exec-shop.dev", second)
    diff = q.json()["breakdown"]["lines"][0]["diff"]
    assert [c["to"]["ttl"] for c in diff["change"]] == [7200]
    assert [r["name"] for r in diff["remove"]] == ["old"] and diff["add"] == []
    assert q.json()["price_usd"] == "0.020000" and q.json()["requires_approval"] is True
    approval_id = await live.approve(agent, human, q.json()["id"])
    r = await live.client.post(
        "/v1/executions",
        headers=live.idem(agent),
        json={"quote_id": q.json()["id"], "approval_id": approval_id},
    )
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "applied" and r.json()["amount_usd"] == "0.020000"
    done = await live.wait_dns(agent, "exec-shop.dev")
    assert done["dns"]["status"] == "verified"
    zone = await live.get(agent, "/v1/domains/exec-shop.dev/dns")
    assert [(r["name"], r["ttl"]) for r in zone["records"]] == [("www", 7200)]
    listed = await live.get(agent, "/v1/domains")
    assert [d["name"] for d in listed["data"]] == ["exec-shop.dev"]
    assert listed["data"][0]["status"] == "registered"
    # Another tenant's key sees none of it.
    other = await live.client.post("/v1/tenants", json={"name": "other"}, headers=live.idem())
    assert other.status_code == 200, other.text
    r = await live.client.post("/v1/keys", headers=live.idem(), json={
        "scopes": ["dns:write"], "tenant_id": other.json()["id"]})  # fmt: skip
    assert r.status_code == 200, r.text
    stranger = r.json()["secret"]
    r = await live.client.get("/v1/domains/exec-shop.dev", headers=live.auth(stranger))
    assert r.status_code == 404
    assert (await live.get(stranger, "/v1/domains"))["data"] == []
