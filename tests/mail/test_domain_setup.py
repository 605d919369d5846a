"""`email.domain.setup` as a job: resumed after Stalwart fails halfway without creating the
domain twice; refused for a domain the tenant does not hold, or one set up already."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.mail.helpers import Mail, hold_domain, mail_app
from toolcallstore.settings import Settings


@pytest.fixture
async def mail(settings: Settings) -> AsyncIterator[Mail]:
    async with mail_app(settings) as value:
        yield value


async def test_a_failure_after_the_domain_was_created_resumes_without_a_second_domain(
    mail: Mail,
) -> None:
    await hold_domain(mail, "resume.test")
    # Stalwart creates the domain, then fails the DKIM read twice (a JMAP method error, then a
    # 503 problem document); the queue retries the job.
    await mail.arm("x:DkimSignature/get", "method_error")
    await mail.arm("x:DkimSignature/query", "http_503")
    call = await mail.approved("email.domain.setup", {"domain": "resume.test"})
    started = await mail.post("/v1/email/domains", {"domain": "resume.test", **call})
    assert started.status_code == 202, started.text
    done = await mail.finished(started.json()["id"])
    assert done["status"] == "succeeded", done
    job = await mail.api.client.get(f"/v1/jobs/{started.json()['job_id']}",
                                    headers=mail.api.auth(mail.agent))  # fmt: skip
    assert job.json()["attempts"] == 3
    state = await mail.fake_state()
    assert state["domain_creates"]["resume.test"] == 1
    assert "tcs-admin@resume.test" in state["accounts"]
    domain = (await mail.get("/v1/email/domains/resume.test")).json()
    assert domain["status"] == "active" and domain["error"] is None
    kinds = {(r["type"], r["name"]) for r in domain["records"]}
    selector = domain["dkim"][0]["selector"]
    assert kinds == {("MX", "@"), ("TXT", "@"), ("TXT", f"{selector}._domainkey"),
                     ("TXT", "_dmarc")}  # fmt: skip
    receipt = await mail.get(f"/v1/receipts/{done['receipt_id']}")
    assert receipt.json()["amount_usd"] == "0.500000"


async def test_a_domain_set_up_already_is_refused_before_any_quote_is_used(mail: Mail) -> None:
    await hold_domain(mail, "twice.test")
    await mail.set_up("twice.test")
    call = await mail.approved("email.domain.setup", {"domain": "twice.test"})
    again = await mail.post("/v1/email/domains", {"domain": "twice.test", **call})
    assert again.status_code == 409 and again.json()["error"]["code"] == "mail_domain_exists"
    listed = (await mail.get("/v1/email/domains")).json()
    assert [d["domain"] for d in listed["data"]] == ["twice.test"]
    assert (await mail.fake_state())["domain_creates"]["twice.test"] == 1


async def test_a_domain_the_tenant_does_not_hold_is_404_and_nothing_is_made(mail: Mail) -> None:
    call = await mail.approved("email.domain.setup", {"domain": "not-mine.test"})
    r = await mail.post("/v1/email/domains", {"domain": "not-mine.test", **call})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["param"] == "domain"
    assert "not-mine.test" not in (await mail.fake_state())["domains"]
    # The refusal used nothing: once held, the same quote and approval still work.
    await hold_domain(mail, "not-mine.test")
    again = await mail.post("/v1/email/domains", {"domain": "not-mine.test", **call})
    assert again.status_code == 202, again.text
    assert (await mail.get("/v1/email/domains/other.test")).status_code == 404


async def test_setup_without_a_granted_approval_is_403_approval_required(mail: Mail) -> None:
    await hold_domain(mail, "unapproved.test")
    q = await mail.api.quote(mail.agent, "email.domain.setup", {"domain": "unapproved.test"})
    assert q.json()["requires_approval"] is True
    r = await mail.post("/v1/email/domains", {"domain": "unapproved.test",
                                              "quote_id": q.json()["id"]})  # fmt: skip
    assert r.status_code == 403 and r.json()["error"]["code"] == "approval_required"
    assert "unapproved.test" not in (await mail.fake_state())["domains"]
