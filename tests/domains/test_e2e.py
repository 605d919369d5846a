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
