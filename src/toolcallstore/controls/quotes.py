"""Quotes (DESIGN §5.1): a priced, expiring, single-use promise bound to one tool and one hash
of its params. An execution must present the quote before it expires, once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.auth import Principal
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import Gone, NotFound, StateConflict
from toolcallstore.ids import new_id, now_us
from toolcallstore.tools import Estimate, Tool

REASON_RISK = "tool_risk_high"
REASON_THRESHOLD = "above_approval_threshold"


def params_hash(tool: str, params: dict[str, Any]) -> str:
    canonical = orjson.dumps({"tool": tool, "params": params}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def approval_reasons(tool: Tool, estimate: Estimate, threshold_micros: int | None) -> list[str]:
    reasons = []
    if tool.risk == "high":
        reasons.append(REASON_RISK)
    if threshold_micros is not None and estimate.max_cost_micros > threshold_micros:
        reasons.append(REASON_THRESHOLD)
    return reasons


@dataclass(frozen=True)
class Quote:
    id: str
    tenant_id: str
    project_id: str | None
    api_key_id: str
    livemode: bool
    tool: str
    params_hash: str
    params: dict[str, Any]
    estimate: Estimate
    approval_reasons: list[str]
    inline: bool
    state: str
    expires_at: int
    used_at: int | None
    created_at: int

    @property
    def requires_approval(self) -> bool:
        return bool(self.approval_reasons)

    @classmethod
    def from_row(cls, row: Row) -> Quote:
        breakdown = orjson.loads(row["breakdown"])
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            project_id=row["project_id"],
            api_key_id=row["api_key_id"],
            livemode=bool(row["livemode"]),
            tool=row["tool"],
            params_hash=row["params_hash"],
            params=orjson.loads(row["params"]),
            estimate=Estimate(
                price_micros=int(row["price_micros"]),
                max_cost_micros=int(row["max_cost_micros"]),
                provider_cost_micros=int(row["provider_cost_micros"]),
                provider=breakdown["provider"],
                breakdown=breakdown["lines"],
            ),
            approval_reasons=orjson.loads(row["approval_reasons"]),
            inline=bool(row["inline"]),
            state=row["state"],
            expires_at=int(row["expires_at"]),
            used_at=row["used_at"],
            created_at=int(row["created_at"]),
        )


def insert_quote(
    tx: SyncTransaction,
    *,
    principal: Principal,
    project_id: str | None,
    tool: Tool,
    params: dict[str, Any],
    estimate: Estimate,
    reasons: list[str],
    ttl_s: int,
    inline: bool = False,
) -> Quote:
    now = now_us()
    row = {
        "id": new_id("q"),
        "tenant_id": principal.tenant_id,
        "project_id": project_id,
        "api_key_id": principal.key_id,
        "livemode": int(principal.livemode),
        "tool": tool.name,
        "params_hash": params_hash(tool.name, params),
        "params": orjson.dumps(params).decode(),
        "price_micros": estimate.price_micros,
        "max_cost_micros": estimate.max_cost_micros,
        "provider_cost_micros": estimate.provider_cost_micros,
        "breakdown": orjson.dumps(
            {"provider": estimate.provider, "lines": estimate.breakdown}
        ).decode(),
        "requires_approval": int(bool(reasons)),
        "approval_reasons": orjson.dumps(reasons).decode(),
        "inline": int(inline),
        "state": "used" if inline else "open",
        "expires_at": now + ttl_s * 1_000_000,
        "used_at": now if inline else None,
        "created_at": now,
    }
    columns = ", ".join(row)
    tx.execute(f"INSERT INTO quotes ({columns}) VALUES ({', '.join(':' + c for c in row)})", row)
    return Quote.from_row(row)


def visible_to(
    quote_tenant: str, quote_project: str | None, quote_live: bool, p: Principal
) -> bool:
    """Other tenants, other modes and (for project keys) other projects never see a quote."""
    return (
        quote_tenant == p.tenant_id
        and quote_live == p.livemode
        and p.key.project_id in (None, quote_project)
    )


def visible_quote(row: Row | None, principal: Principal) -> Quote:
    if row is None or not visible_to(
        row["tenant_id"], row["project_id"], bool(row["livemode"]), principal
    ):
        raise NotFound("No such quote.", param="quote_id")
    return Quote.from_row(row)


_BY_ID = "SELECT * FROM quotes WHERE id = :id"


async def get_quote(db: Database, principal: Principal, quote_id: str) -> Quote:
    return visible_quote(await db.fetch_one(_BY_ID, {"id": quote_id}), principal)


def get_quote_in(tx: SyncTransaction, principal: Principal, quote_id: str) -> Quote:
    return visible_quote(tx.fetch_one(_BY_ID, {"id": quote_id}), principal)


def use_quote(tx: SyncTransaction, principal: Principal, quote_id: str) -> Quote:
    """Mark the quote used, or say why it cannot be: 404 unknown, 409 used, 410 expired."""
    now = now_us()
    row = tx.fetch_one(
        "UPDATE quotes SET state = 'used', used_at = :now WHERE id = :id AND tenant_id = :tenant"
        " AND state = 'open' AND expires_at > :now RETURNING *",
        {"now": now, "id": quote_id, "tenant": principal.tenant_id},
    )
    if row is not None and visible_to(
        row["tenant_id"], row["project_id"], bool(row["livemode"]), principal
    ):
        return Quote.from_row(row)
    quote = get_quote_in(tx, principal, quote_id)  # 404 for the invisible ones
    if quote.state == "used":
        raise StateConflict(
            "This quote was already used by an execution; quotes are single use. Create a new"
            " quote to run the tool again.",
            code="quote_already_used",
            param="quote_id",
        )
    raise Gone(
        "This quote has expired; create a new quote (prices may have changed).",
        code="quote_expired",
        param="quote_id",
    )
