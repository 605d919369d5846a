"""End to end with the test key, over real sockets: a registered sandbox domain -> mail setup
-> MX/SPF/DKIM/DMARC answer on the sandbox's authoritative DNS server -> a mailbox -> its
credentials open a JMAP session on the fake; its password is then found nowhere."""

from __future__ import annotations

import logging

import dns.asyncquery
import dns.message
import httpx
import pytest

from tests.mail.helpers import Mail, hold_domain, mail_app, stored_anywhere
from toolcallstore.settings import Settings


async def _answers(mail: Mail, qname: str, rtype: str) -> list[str]:
    server = mail.api.svc.domains.sandbox
    assert server is not None and server.dns.running
    query = dns.message.make_query(qname, rtype, use_edns=0, payload=4096)
    response, _ = await dns.asyncquery.udp_with_fallback(query, server.dns.host, timeout=2.0,
                                                         port=server.dns.port)  # fmt: skip
    out = []
    for rrset in response.answer:
        for rdata in rrset:
            if rtype == "TXT":
                out.append(b"".join(rdata.strings).decode())
            else:
                out.append(rdata.to_text())
    return out


async def test_setup_publishes_the_records_and_a_new_mailbox_logs_in_over_jmap(
    settings: Settings, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    async with mail_app(settings) as mail:
        await hold_domain(mail, "e2e-mail.test")
        domain = await mail.set_up("e2e-mail.test")
        assert domain["status"] == "active" and domain["missing"] == []
        assert domain["dns_status"] == "verified"
        selector = domain["dkim"][0]["selector"]

        assert await _answers(mail, "e2e-mail.test", "MX") == ["10 mail.e2e-mail.test."]
        spf = await _answers(mail, "e2e-mail.test", "TXT")
        assert spf == ["v=spf1 mx ra=postmaster -all"]
        (dkim,) = await _answers(mail, f"{selector}._domainkey.e2e-mail.test", "TXT")
        async with httpx.AsyncClient() as client:  # the key Stalwart signs with
            keys = await client.post(mail.stalwart + "/jmap/", auth=("admin",
                                     "sandbox-stalwart-admin"), json={
                "using": ["urn:ietf:params:jmap:core", "urn:stalwart:jmap"],
                "methodCalls": [["x:DkimSignature/get", {"accountId": "a0", "ids": None}, "0"]],
            })  # fmt: skip
        published = [k["publicKey"] for k in keys.json()["methodResponses"][0][1]["list"]]
        assert dkim.startswith("v=DKIM1; k=rsa;") and dkim.split("p=")[1] in published
        (dmarc,) = await _answers(mail, "_dmarc.e2e-mail.test", "TXT")
        assert dmarc.startswith("v=DMARC1; p=none;")

        params = {"address": "ada@e2e-mail.test", "display_name": "Ada", "quota_mb": 100}
        call = await mail.approved("email.mailbox.create", params)
        created = await mail.post("/v1/email/mailboxes", {**params, **call}, key="e2e-ada")
        assert created.status_code == 200, created.text
        box = created.json()
        password = box["password"]
        async with httpx.AsyncClient() as client:
            session = await client.get(mail.stalwart + "/.well-known/jmap", follow_redirects=True,
                                       auth=("ada@e2e-mail.test", password))  # fmt: skip
        assert session.status_code == 200, session.text
        assert session.json()["username"] == "ada@e2e-mail.test"
        assert "urn:ietf:params:jmap:mail" in session.json()["primaryAccounts"]

        replay = await mail.post("/v1/email/mailboxes", {**params, **call}, key="e2e-ada")
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.json()["id"] == box["id"] and replay.json()["password"] is None
        later = [await mail.get(f"/v1/email/mailboxes/{box['id']}"),
                 await mail.get("/v1/email/mailboxes"),
                 await mail.get("/v1/email/domains/e2e-mail.test"),
                 await mail.get(f"/v1/executions/{box['execution_id']}"),
                 await mail.get(f"/v1/receipts/{box['receipt_id']}")]  # fmt: skip
        assert all(r.status_code == 200 for r in later), [r.text for r in later]
        assert later[4].json()["amount_usd"] == "1.000000"  # the first month
        assert not any(password in r.text for r in [replay, *later])
        assert await stored_anywhere(mail, password) == []
        audit = await mail.api.svc.db.fetch_all("SELECT * FROM audit_log")
        assert len(audit) > 10 and not any(password in repr(row) for row in audit)
        # The domain administrator's password is sealed, never stored in the clear either.
        row = await mail.api.svc.db.fetch_one("SELECT * FROM mail_domains")
        assert row is not None and row["admin_ciphertext"]
        assert row["admin_name"] == "tcs-admin@e2e-mail.test"
    out, err = capfd.readouterr()
    assert password not in out + err and password not in caplog.text
