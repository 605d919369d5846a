"""DNS changes: a provider refusing half way leaves a clear partial state charged for what was
done; a zone changed since the quote refuses with 409 quote_stale; bad records are 422 naming
the record before anything is quoted; mailboxes' system-initiated changes (service.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import free_port
from tests.domains.helpers import Live, receipts_and_ledger
from toolcallstore.domains import service
from toolcallstore.domains.records import diff_records, parse_records

MX = {"name": "@", "type": "MX", "value": "mx.dns-shop.com", "priority": 10}
SPF = {"name": "@", "type": "TXT", "value": "v=spf1 mx -all"}
WWW = {"name": "www", "type": "A", "value": "192.0.2.7"}
API = {"name": "api", "type": "AAAA", "value": "2001:db8::7"}


async def _registered(live: Live, name: str) -> tuple[str, str]:
    agent, human = await live.key(), await live.key(["approvals:grant"])
    await live.register_domain(agent, human, name)
    return agent, human


async def test_a_change_refused_half_way_is_partial_and_charged_for_what_was_done(
    live: Live,
) -> None:
    agent, human = await _registered(live, "dns-shop.com")
    # The provider takes two record writes, then answers `code` != 0 under HTTP 200.
    await live.fault("openprovider", "error_under_200", path="/dns/zones/dns-shop.com",
                     method="PUT", after=2)  # fmt: skip
    r = await live.apply_dns(agent, human, "dns-shop.com", [MX, SPF, WWW, API])
    assert r.status_code == 200, r.text
    change = r.json()
    assert change["status"] == "partial"
    assert len(change["applied"]) == 2 and len(change["not_applied"]) == 2
    assert "399" in change["error"]
    assert change["amount_usd"] == "0.020000"  # two record changes of four quoted
    receipt = await receipts_and_ledger(live, change["receipt_id"])
    assert ("charge", 20_000) in receipt["ledger"] and receipt["status"] == "succeeded"
    # The domain says what is live and what is not; the live zone agrees.
    domain = await live.wait_dns(agent, "dns-shop.com", until=("partial",))
    assert domain["dns"]["applied"] == change["applied"]
    assert domain["dns"]["not_applied"] == change["not_applied"]
    zone = await live.get(agent, "/v1/domains/dns-shop.com/dns")
    live_keys = {(rec["name"], rec["type"], rec["value"]) for rec in zone["records"]}
    applied = {(op["record"]["name"], op["record"]["type"], op["record"]["value"])
               for op in change["applied"]}  # fmt: skip
    assert live_keys == applied
    assert await live.svc.db.fetch_val("SELECT count(*) FROM holds WHERE state = 'open'") == 0


async def _out_of_band_add(live: Live, domain: str, record: dict[str, Any]) -> None:
    """Someone changes the zone at OpenProvider directly (its control panel, another tool)."""
    base = live.fake("openprovider")
    login = await live.client.post(
        f"{base}/auth/login", json={"username": "someone", "password": "x", "ip": "0.0.0.0"}
    )
    token = login.json()["data"]["token"]
    r = await live.client.put(
        f"{base}/dns/zones/{domain}",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": domain, "records": {"add": [record]}},
    )
    assert r.status_code == 200 and r.json()["code"] == 0, r.text


async def test_a_zone_changed_since_the_quote_refuses_with_quote_stale(live: Live) -> None:
    agent, human = await _registered(live, "stale-shop.com")
    q = await live.quote_dns(agent, "stale-shop.com", [WWW])
    assert q.status_code == 200, q.text
    approval_id = await live.approve(agent, human, q.json()["id"])
    await _out_of_band_add(
        live, "stale-shop.com", {"name": "www", "type": "A", "value": "198.51.100.1", "ttl": 900}
    )
    body = {"records": [WWW], "quote_id": q.json()["id"], "approval_id": approval_id}
    r = await live.client.put("/v1/domains/stale-shop.com/dns", json=body,
                              headers=live.idem(agent))  # fmt: skip
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "quote_stale"
    assert await live.svc.db.fetch_val("SELECT count(*) FROM dns_changes") == 0
    zone = await live.get(agent, "/v1/domains/stale-shop.com/dns")
    assert [rec["value"] for rec in zone["records"]] == ["198.51.100.1"]
    # A fresh quote shows the diff against what is live now: remove one, add the other.
    q = await live.quote_dns(agent, "stale-shop.com", [WWW])
    diff = q.json()["breakdown"]["lines"][0]["diff"]
    assert [r["value"] for r in diff["add"]] == ["192.0.2.7"]
    assert [r["value"] for r in diff["remove"]] == ["198.51.100.1"]


BAD_RECORDS = [
        ({"name": "www", "type": "A", "value": "300.1.1.1"}, "records[1].value", "IPv4"),
        ({"name": "v6", "type": "AAAA", "value": "192.0.2.1"}, "records[1].value", "IPv6"),
        ({"name": "@", "type": "MX", "value": "mx.example.com"}, "records[1].priority",
         "priority"),
        ({"name": "www", "type": "A", "value": "192.0.2.1", "ttl": 300}, "records[1].ttl",
         "600"),
        ({"name": "www", "type": "CNAME", "value": "elsewhere.example.net"}, "records[1]",
         "CNAME"),
        ({"name": "@", "type": "CNAME", "value": "elsewhere.example.net"}, "records[1].value",
         "apex"),
        ({"name": "x", "type": "TXT", "value": "caf\u00e9"}, "records[1].value", "ASCII"),
        ({"name": "x", "type": "TXT", "value": ["a" * 256]}, "records[1].value", "255"),
        ({"name": "sip", "type": "SRV", "value": "5 5060 sip.example.com", "priority": 1},
         "records[1].name", "_service._proto"),
        ({"name": "@", "type": "CAA", "value": "0 issue letsencrypt.org"}, "records[1].value",
         "CAA"),
        ({"name": "bad name", "type": "A", "value": "192.0.2.1"}, "records[1].name", "not a"),
        ({"name": "@", "type": "NS", "value": "ns.example.com"}, "records[1].type", "one of"),
]  # fmt: skip


async def test_bad_records_are_422_naming_the_record(live: Live) -> None:
    agent = await live.key()
    for record, param, words in BAD_RECORDS:
        records = [{"name": "www", "type": "A", "value": "192.0.2.2"}, record]
        r = await live.quote_dns(agent, "any-shop.com", records)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["param"] == param and words in error["message"], error
        assert error["code"] == "invalid_record" and error["record"] == record
        # The same answer from the apply route itself, before any quote is looked at.
        r = await live.client.put("/v1/domains/any-shop.com/dns", headers=live.idem(agent),
                                  json={"records": records, "quote_id": "q_none"})  # fmt: skip
        assert (r.status_code, r.json()["error"]["param"]) == (422, param), r.text
    assert await live.svc.db.fetch_val("SELECT count(*) FROM quotes") == 0


async def test_long_txt_given_as_strings_and_srv_caa_round_trip(live: Live) -> None:
    agent, human = await _registered(live, "txt-shop.com")
    records = [
        {"name": "k._domainkey", "type": "TXT", "value": ["v=DKIM1; p=" + "B" * 240, "C" * 200]},
        {"name": "_imaps._tcp", "type": "SRV", "value": "0 993 mail.txt-shop.com", "priority": 0},
        {"name": "@", "type": "CAA", "value": '0 issue "letsencrypt.org"'},
    ]
    r = await live.apply_dns(agent, human, "txt-shop.com", records)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    done = await live.wait_dns(agent, "txt-shop.com")
    assert done["dns"]["status"] == "verified", done["dns"]
    zone = await live.get(agent, "/v1/domains/txt-shop.com/dns")
    txt = next(rec for rec in zone["records"] if rec["type"] == "TXT")
    assert txt["value"] == "v=DKIM1; p=" + "B" * 240 + "C" * 200  # unquoted, joined
    assert [len(s) for s in txt["strings"]] == [255, 196]


async def test_system_changes_for_mailboxes_merge_apply_and_verify(live: Live) -> None:
    agent, human = await _registered(live, "mail-shop.com")
    r = await live.apply_dns(agent, human, "mail-shop.com", [WWW, SPF])
    assert r.status_code == 200, r.text
    svc = live.svc
    tenant_id = await svc.db.fetch_val("SELECT tenant_id FROM domains")
    held = await service.find_held_domain(svc, tenant_id=tenant_id, livemode=False,
                                          name="mail-shop.com")  # fmt: skip
    assert held is not None and held["registrar"] == "openprovider"
    assert await service.find_held_domain(svc, tenant_id=tenant_id, livemode=True,
                                          name="mail-shop.com") is None  # fmt: skip
    upsert = [
        {"name": "@", "type": "MX", "value": "mail.mail-shop.com", "priority": 10},
        {"name": "@", "type": "TXT", "value": "v=spf1 mx ra=postmaster -all"},
        {"name": "_dmarc", "type": "TXT", "value": "v=DMARC1; p=none"},
    ]
    change_id = await service.apply_records_for(
        svc, tenant_id=tenant_id, livemode=False, project_id=None, domain="mail-shop.com",
        upsert=upsert, execution_id="exe_mailbox_1")  # fmt: skip
    again = await service.apply_records_for(
        svc, tenant_id=tenant_id, livemode=False, project_id=None, domain="mail-shop.com",
        upsert=upsert, execution_id="exe_mailbox_1")  # fmt: skip
    assert again == change_id
    status = await service.dns_change_status(svc, change_id)
    assert status["status"] in ("applied", "verified") and len(status["applied"]) == 4
    done = await live.wait_dns(agent, "mail-shop.com")
    assert done["dns"]["status"] == "verified" and done["dns"]["id"] == change_id
    zone = await live.get(agent, "/v1/domains/mail-shop.com/dns")
    values = sorted(rec["value"] for rec in zone["records"])
    # The old SPF was replaced (same name and type), the A record kept.
    assert values == ["192.0.2.7", "mail.mail-shop.com", "v=DMARC1; p=none",
                      "v=spf1 mx ra=postmaster -all"]  # fmt: skip
    assert (await service.dns_change_status(svc, change_id))["status"] == "verified"
    bad = [{"name": "@", "type": "MX", "value": "mail.mail-shop.com"}]
    with pytest.raises(Exception, match="priority"):
        await service.apply_records_for(svc, tenant_id=tenant_id, livemode=False,
                                        project_id=None, domain="mail-shop.com", upsert=bad,
                                        execution_id="exe_mailbox_2")  # fmt: skip


async def test_verify_fails_naming_the_records_that_never_answer(live: Live) -> None:
    agent, human = await _registered(live, "lost-shop.com")
    # The nameserver asked answers nothing (a closed loopback port).
    live.svc.settings = live.svc.settings.with_(
        dns_verify_timeout_seconds=1, dns_verify_nameserver=f"127.0.0.1:{free_port()}"
    )
    r = await live.apply_dns(agent, human, "lost-shop.com", [WWW])
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    done = await live.wait_dns(agent, "lost-shop.com", until=("failed",))
    assert [m["value"] for m in done["dns"]["missing"]] == ["192.0.2.7"]
    events = await live.svc.db.fetch_all("SELECT type, data FROM events WHERE type LIKE 'dns.%'")
    assert "dns.verify_failed" in {e["type"] for e in events}


async def test_a_change_resumed_after_a_crash_does_not_send_an_operation_twice(
    live: Live,
) -> None:
    """A run died after sending its first operation and before writing it down: the next run
    finds it in the live zone, counts it as applied and sends only the rest."""
    await _registered(live, "resume-shop.com")
    svc = live.svc
    held = await svc.db.fetch_one("SELECT * FROM domains WHERE name = 'resume-shop.com'")
    assert held is not None
    records = parse_records([WWW, API], "resume-shop.com")
    diff = diff_records([], records)
    change, fresh = await service._change_row(svc, held["tenant_id"], False, held,
                                              "exe_crashed", diff)  # fmt: skip
    assert fresh and change["status"] == "applying"
    await _out_of_band_add(live, "resume-shop.com", {**WWW, "ttl": 3600})  # it was sent
    change_id = await service.apply_records_for(
        svc, tenant_id=held["tenant_id"], livemode=False, project_id=None,
        domain="resume-shop.com", upsert=[WWW, API], execution_id="exe_crashed")  # fmt: skip
    assert change_id == change["id"]
    status = await service.dns_change_status(svc, change_id)
    assert status["status"] in ("applied", "verified") and status["error"] is None
    assert len(status["applied"]) == 2 and status["not_applied"] == []
    zone = await live.get(live.admin_key, "/v1/domains/resume-shop.com/dns")
    assert sorted(r["value"] for r in zone["records"]) == ["192.0.2.7", "2001:db8::7"]
