"""Shared steps of the controls tests: keys with given scopes, quotes, executions, approvals."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from tests.conftest import Api

ECHO_PRICE_MICROS = 1400  # models.json: 0.001 x 1.20 + 0.0002
IRREVERSIBLE_PRICE_MICROS = 650_000  # 0.50 x 1.10 + 0.10


async def make_key(api: Api, scopes: list[str], **extra: Any) -> str:
    r = await api.client.post("/v1/keys", json={"scopes": scopes, **extra}, headers=api.idem())
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def quote(
    api: Api, secret: str, tool: str, params: dict[str, Any], **extra: Any
) -> httpx.Response:
    body = {"tool": tool, "params": params, **extra}
    return await api.client.post("/v1/quotes", json=body, headers=api.idem(secret))


async def execute(
    api: Api, secret: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {**api.auth(secret), "Idempotency-Key": key or secrets.token_hex(8)}
    return await api.client.post("/v1/executions", json=body, headers=headers)


async def set_cap(api: Api, **body: Any) -> httpx.Response:
    return await api.client.post("/v1/spend_caps", json=body, headers=api.auth())


async def ledger_agrees(api: Api) -> dict[str, Any]:
    """The operator's reconciliation of this month (test mode): balanced, and its figures."""
    from toolcallstore.controls.spend import period_of
    from toolcallstore.ids import now_us

    r = await api.client.get(
        f"/v1/admin/reconciliation?period={period_of(now_us())}&livemode=false",
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    assert report["balanced"], report["mismatches"]
    return report
