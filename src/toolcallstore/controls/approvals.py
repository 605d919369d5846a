"""Human approval (DESIGN §5.4): requested for one quote, granted or denied by another key with
`approvals:grant`, expiring with the quote, and used at most once by the execution."""

from __future__ import annotations

from typing import Any

from toolcallstore.auth import Principal
from toolcallstore.controls.quotes import Quote, get_quote_in
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import Gone, NotFound, PermissionDenied, StateConflict
from toolcallstore.events import record_event
from toolcallstore.ids import new_id, now_us


def _visible(row: Row, principal: Principal, quote_project: str | None) -> bool:
    return row["tenant_id"] == principal.tenant_id and principal.key.project_id in (
        None,
        quote_project,
    )


_BY_ID = (
    "SELECT a.*, q.project_id AS project_id, q.api_key_id AS quote_key_id"
    " FROM approvals a JOIN quotes q ON q.id = a.quote_id WHERE a.id = :id"
)


def visible_approval(row: Row | None, principal: Principal) -> Row:
    if row is None or not _visible(row, principal, row["project_id"]):
        raise NotFound("No such approval.", param="approval_id")
    return row


async def get_approval(db: Database, principal: Principal, approval_id: str) -> Row:
    return visible_approval(await db.fetch_one(_BY_ID, {"id": approval_id}), principal)


def request_approval(tx: SyncTransaction, principal: Principal, quote: Quote) -> Row:
    if not quote.requires_approval:
        raise StateConflict(
            "This quote does not need an approval; execute it directly.",
            code="approval_not_required",
            param="quote_id",
        )
    now = now_us()
    if quote.state != "open":
        raise StateConflict("This quote was already used.", code="quote_already_used")
    if quote.expires_at <= now:
        raise Gone("This quote has expired; create a new one.", code="quote_expired")
    row = tx.fetch_one(
        "INSERT INTO approvals (id, tenant_id, quote_id, requested_by_key_id, state, expires_at,"
        " created_at) VALUES (:id, :tenant_id, :quote_id, :key, 'pending', :expires_at, :now)"
        " ON CONFLICT (quote_id) WHERE state IN ('pending', 'granted') DO NOTHING RETURNING *",
        {
            "id": new_id("appr"),
            "tenant_id": principal.tenant_id,
            "quote_id": quote.id,
            "key": principal.key_id,
            "expires_at": quote.expires_at,
            "now": now,
        },
    )
    if row is None:
        existing = tx.fetch_val(
            "SELECT id FROM approvals WHERE quote_id = :q AND state IN ('pending', 'granted')",
            {"q": quote.id},
        )
        raise StateConflict(
            f"This quote already has an open approval request ({existing}).",
            code="approval_already_requested",
            approval_id=existing,
        )
    record_event(
        tx, principal.tenant_id, "approval.requested", approval_data(row, quote),
        livemode=quote.livemode,
    )  # fmt: skip
    return row


def decide_approval(
    tx: SyncTransaction, principal: Principal, approval_id: str, *, grant: bool, note: str | None
) -> Row:
    current = visible_approval(tx.fetch_one(_BY_ID, {"id": approval_id}), principal)
    if principal.key_id in (current["requested_by_key_id"], current["quote_key_id"]):
        raise PermissionDenied(
            "A key cannot approve or deny a request it made or a quote it created; another"
            " key holding 'approvals:grant' (a human's) must decide.",
            code="self_approval_forbidden",
        )
    now = now_us()
    row = tx.fetch_one(
        "UPDATE approvals SET state = :state, decided_by_key_id = :key, decided_at = :now,"
        " note = :note WHERE id = :id AND state = 'pending' AND expires_at > :now RETURNING *",
        {
            "state": "granted" if grant else "denied",
            "key": principal.key_id,
            "now": now,
            "note": note,
            "id": approval_id,
        },
    )
    if row is None:
        if current["state"] in ("pending", "granted") and current["expires_at"] <= now:
            raise Gone("This approval request has expired.", code="approval_expired")
        raise StateConflict(
            f"This approval request is already {current['state']}.",
            code="approval_already_decided",
        )
    quote = get_quote_in(tx, principal, row["quote_id"])
    kind = "approval.granted" if grant else "approval.denied"
    record_event(tx, principal.tenant_id, kind, approval_data(row, quote), livemode=quote.livemode)
    return row


def use_approval(
    tx: SyncTransaction, principal: Principal, approval_id: str | None, quote: Quote
) -> str:
    """Consume the granted approval bound to `quote`, or refuse with 403 approval_required."""
    if approval_id is None:
        raise approval_required(quote, "This quote needs a granted approval ('approval_id').")
    row = tx.fetch_one(
        "UPDATE approvals SET state = 'used', used_at = :now WHERE id = :id"
        " AND tenant_id = :tenant AND quote_id = :quote AND state = 'granted'"
        " AND expires_at > :now RETURNING id",
        {"now": now_us(), "id": approval_id, "tenant": principal.tenant_id, "quote": quote.id},
    )
    if row is not None:
        return approval_id
    found = tx.fetch_one(
        "SELECT quote_id, state, expires_at FROM approvals WHERE id = :id AND tenant_id = :t",
        {"id": approval_id, "t": principal.tenant_id},
    )
    if found is None:
        why = "No such approval."
    elif found["quote_id"] != quote.id:
        why = "That approval was granted for a different quote."
    elif found["state"] in ("pending", "granted") and found["expires_at"] <= now_us():
        why = "That approval has expired."
    else:
        why = f"That approval is {found['state']}, not granted."
    raise approval_required(quote, why)


def approval_required(quote: Quote, why: str) -> PermissionDenied:
    return PermissionDenied(
        f'{why} Request one with POST /v1/approvals {{"quote_id": "{quote.id}"}}; a human'
        " holding 'approvals:grant' must grant it before the execution.",
        code="approval_required",
        quote_id=quote.id,
        approval_reasons=quote.approval_reasons,
    )


def approval_data(row: Row, quote: Quote) -> dict[str, Any]:
    return {
        "approval_id": row["id"],
        "quote_id": quote.id,
        "tool": quote.tool,
        "state": row["state"],
        "approval_reasons": quote.approval_reasons,
        "max_cost_micros": quote.estimate.max_cost_micros,
        "requested_by": row["requested_by_key_id"],
        "decided_by": row["decided_by_key_id"],
    }


def expire_approvals(tx: SyncTransaction) -> int:
    """Mark pending and granted approvals past their expiry as expired; returns how many."""
    rows = tx.fetch_all(
        "UPDATE approvals SET state = 'expired' WHERE state IN ('pending', 'granted')"
        " AND expires_at <= :now RETURNING id, tenant_id, quote_id",
        {"now": now_us()},
    )
    for row in rows:
        data = {"approval_id": row["id"], "quote_id": row["quote_id"], "state": "expired"}
        livemode = tx.fetch_val(
            "SELECT livemode FROM quotes WHERE id = :id", {"id": row["quote_id"]}
        )
        record_event(tx, row["tenant_id"], "approval.expired", data, livemode=bool(livemode))
    return len(rows)
