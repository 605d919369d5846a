"""Mailboxes are priced per month: the first month is the creating call's receipt, each later
month one receipt from the monthly job however often it runs; a deleted mailbox stops."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.controls.helpers import ledger_agrees
from tests.mail.helpers import hold_domain, mail_app
from toolcallstore.controls.spend import period_of
from toolcallstore.ids import now_us
from toolcallstore.mail.months import charge_mailbox_months
from toolcallstore.settings import Settings

MONTH_MICROS = 1_000_000  # models.json: 0.40 x 1.25 + 0.50


def _next_month(us: int) -> int:
    now = datetime.fromtimestamp(us / 1_000_000, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return int(datetime(year, month, 2, tzinfo=UTC).timestamp() * 1_000_000)


async def test_each_month_of_a_live_mailbox_is_charged_once(settings: Settings) -> None:
    async with mail_app(settings) as mail:
        await hold_domain(mail, "months.test")
        await mail.set_up("months.test")
        kept = (await mail.create_mailbox("kept@months.test")).json()
        dropped = (await mail.create_mailbox("dropped@months.test")).json()
        first = await mail.get(f"/v1/receipts/{kept['receipt_id']}")
        assert first.json()["amount_usd"] == "1.000000"
        svc = mail.api.app.state.services  # type: ignore[attr-defined]
        # This month is paid by the creating calls: the job charges nothing more.
        assert (await charge_mailbox_months(svc.db, svc.tools.pricing))["charged"] == 0
        await mail.api.client.delete(f"/v1/email/mailboxes/{dropped['id']}",
                                     headers=mail.api.auth(mail.agent))  # fmt: skip
        later = _next_month(now_us())
        ran = [await charge_mailbox_months(svc.db, svc.tools.pricing, later) for _ in range(2)]
        assert [r["charged"] for r in ran] == [1, 0]
        period = period_of(later)
        rows = await svc.db.fetch_all(
            "SELECT r.price_micros, r.usage, r.status FROM receipts r"
            " WHERE r.period = :p AND r.tool = 'email.mailbox.create'",
            {"p": period},
        )
        assert len(rows) == 1 and rows[0]["price_micros"] == MONTH_MICROS
        assert kept["id"] in rows[0]["usage"] and rows[0]["status"] == "succeeded"
        spent = await svc.db.fetch_val(
            "SELECT spent_micros FROM spend_counters WHERE owner_id = :t AND period = :p",
            {"t": (await mail.get("/v1/me")).json()["tenant_id"], "p": period},
        )
        assert spent == MONTH_MICROS
        await ledger_agrees(mail.api)  # this month's receipts, ledger and counters agree
