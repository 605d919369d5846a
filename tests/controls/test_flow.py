from tests.conftest import Api
from tests.controls.helpers import ECHO_PRICE_MICROS, execute, ledger_agrees, make_key, quote


async def test_quote_execute_receipt_for_sandbox_echo(api: Api) -> None:
    agent = await make_key(api, ["quotes:create", "llm:chat", "receipts:read"])
    q = await quote(api, agent, "sandbox.echo", {"message": "hi"})
    assert q.status_code == 200, q.text
    body = q.json()
    assert body["price_usd"] == "0.001400" and body["max_cost_usd"] == "0.001400"
    assert body["requires_approval"] is False and "provider_cost_usd" not in body["breakdown"]
    r = await execute(api, agent, {"quote_id": body["id"]})
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "succeeded" and done["result"] == {"message": "hi"}
    assert done["amount_usd"] == "0.001400"
    assert r.headers["toolcall-receipt-id"] == done["receipt_id"]
    receipt = (
        await api.client.get(f"/v1/receipts/{done['receipt_id']}", headers=api.auth(agent))
    ).json()
    assert receipt["amount_usd"] == "0.001400" and "provider_cost_usd" not in receipt
    admin_view = (
        await api.client.get(f"/v1/receipts/{done['receipt_id']}", headers=api.auth())
    ).json()
    assert admin_view["provider_cost_usd"] == "0.001000" and admin_view["margin_usd"] == "0.000400"
    report = await ledger_agrees(api)
    assert report["total"]["customer_price_usd"] == "0.001400"
    assert ECHO_PRICE_MICROS == 1400


async def test_billable_transactions_write_their_audit_rows_into_an_intact_chain(api: Api) -> None:
    from toolcallstore.audit import verify_chain

    agent = await make_key(api, ["llm:chat"], auto_quote_max_usd="1")
    body = {"tool": "sandbox.echo", "params": {"message": "ünïcödé ✓"}}
    import asyncio

    results = await asyncio.gather(*(execute(api, agent, body) for _ in range(20)))
    assert all(r.status_code == 200 for r in results)
    svc = api.app.state.services  # type: ignore[attr-defined]
    await svc.audit.flush()
    reasons = await svc.db.fetch_all(
        "SELECT reason, COUNT(*) AS n FROM audit_log WHERE reason LIKE 'hold_%' GROUP BY reason"
    )
    assert {r["reason"]: r["n"] for r in reasons} == {"hold_taken": 20, "hold_settled": 20}
    report = await verify_chain(svc.db)
    assert report.ok, report
