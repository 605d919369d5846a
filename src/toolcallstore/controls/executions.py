"""The generic flow of a billable call: quote -> approval -> hold -> run -> settle -> receipt.

Three transactions, so that no lock is held while a provider works:
1. `open_execution`: use the quote (and the approval), take the hold of the worst case, insert
   the execution (and, for job tools, its job), audit the hold. A refusal rolls all of it back.
2. the tool runs: inline with a timeout, or as a job of the queue.
3. `close_execution`: settle or release the hold, write the receipt and ledger entries, record
   the outcome (and the idempotent response), audit the settlement.
A crash between 1 and 3 leaves an open hold; `sweep_holds` (a periodic job) closes it once it
expires (sync tools) or once its job can no longer finish (job tools). Nothing is held forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.audit import append_rows
from toolcallstore.controls.ledger import Charge, settle_late, write_receipt
from toolcallstore.controls.quotes import Quote
from toolcallstore.controls.spend import Hold, close_hold, hold_spend, settle_counters
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import APIError, InternalError, ProviderError
from toolcallstore.events import record_events
from toolcallstore.idempotency import store_response
from toolcallstore.ids import new_id, now_us
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.tools import Outcome, Tool, ToolCall

log = logging.getLogger("toolcallstore.controls.executions")

# Tools with a record of their own (a media generation) keep it in step with the execution's
# end, in the transaction that closes it (settled, failed, or interrupted by the sweep).
CLOSE_HOOKS: dict[str, Callable[[SyncTransaction, Row], None]] = {}

JOB_TYPE = "tool.execute"
SWEEP_JOB_TYPE = "controls.sweep"
INTERRUPTED = "execution_interrupted"


@dataclass(frozen=True)
class Origin:
    """Who asked, for the audit rows written inside the billable transactions."""

    request_id: str
    api_key_id: str | None
    ip: str | None
    method: str = "POST"
    path: str = "/v1/executions"
    idempotency_key: str | None = None


def audit_row(origin: Origin, tenant_id: str, tool: str, reason: str, **ids: Any) -> dict[str, Any]:
    return {
        "ts": now_us(),
        "request_id": origin.request_id,
        "tenant_id": tenant_id,
        "api_key_id": origin.api_key_id,
        "method": origin.method,
        "path": origin.path,
        "route": origin.path,
        "tool": tool,
        "scope": None,
        "decision": "allowed",
        "reason": reason,
        "status": 0,  # written mid-request; the request's own row carries its final status
        "cost_micros": ids.get("cost_micros"),
        "quote_id": ids.get("quote_id"),
        "approval_id": ids.get("approval_id"),
        "receipt_id": ids.get("receipt_id"),
        "ip": origin.ip,
        "latency_us": 0,
    }


def open_execution(
    tx: SyncTransaction,
    *,
    quote: Quote,
    tool: Tool,
    approval_id: str | None,
    origin: Origin,
    hold_seconds: float,
    jobs: SqlJobStore,
) -> Row:
    """Take the hold and record the running execution (its job too, for job tools)."""
    now = now_us()
    execution_id, hold_id = new_id("exe"), new_id("hold")
    job_id = None
    if tool.mode == "job":
        job = NewJob(JOB_TYPE, {"execution_id": execution_id}, "tools", quote.tenant_id)
        job_id = (jobs.enqueue_in(tx, job)).id
    row = {
        "id": execution_id,
        "tenant_id": quote.tenant_id,
        "project_id": quote.project_id,
        "api_key_id": origin.api_key_id,
        "quote_id": quote.id,
        "approval_id": approval_id,
        "tool": tool.name,
        "livemode": int(quote.livemode),
        "state": "running",
        "hold_id": hold_id,
        "job_id": job_id,
        "request_id": origin.request_id,
        "idempotency_key": origin.idempotency_key,
        "created_at": now,
    }
    columns = ", ".join(row)
    tx.execute(
        f"INSERT INTO executions ({columns}) VALUES ({', '.join(':' + c for c in row)})", row
    )
    if tool.on_open is not None:
        tool.on_open(tx, row, quote.params)
    append_rows(
        tx,
        [
            audit_row(
                origin,
                quote.tenant_id,
                tool.name,
                "hold_taken",
                cost_micros=quote.estimate.max_cost_micros,
                quote_id=quote.id,
                approval_id=approval_id,
            )
        ],
    )
    # Last, so that on Postgres the month's counter rows (every call of the tenant waits on
    # them) stay locked only until COMMIT.
    hold_spend(
        tx,
        hold_id=hold_id,
        tenant_id=quote.tenant_id,
        project_id=quote.project_id,
        livemode=quote.livemode,
        amount_micros=quote.estimate.max_cost_micros,
        execution_id=execution_id,
        expires_at=now + int(hold_seconds * 1_000_000),
    )
    full = {**row, "receipt_id": None, "price_micros": None, "result": None, "error": None}
    return {**full, "finished_at": None}


def close_execution(
    tx: SyncTransaction,
    execution: Row,
    origin: Origin,
    *,
    outcome: Outcome | None = None,
    error: APIError | None = None,
    receipt_id: str | None = None,
    charge_failure: bool = False,
) -> Row | None:
    """Settle (outcome) or release (error) the hold, write the receipt and ledger entries, and
    finish the execution; None if someone else (the sweep, another run) already closed it.

    An error with an outcome is a failure that still cost the provider something (attempts
    that ran): the hold is released and the receipt records those costs; with
    `charge_failure` the customer also pays the outcome's price (within the hold): a stream
    that a crash cut after it had delivered part of its answer."""
    charged = outcome is not None and (error is None or charge_failure)
    price = outcome.price_micros if outcome is not None and charged else 0
    closed = close_hold(tx, execution["hold_id"], price)
    if closed is None:
        if outcome is None:
            return None
        return _settle_late(tx, execution, origin, outcome, error)
    hold, settled = closed
    charge = _charge(outcome, error, settled)
    receipt = write_receipt(tx, execution, charge, hold.period, receipt_id)
    done = _finish(tx, execution, charge, receipt["id"], outcome, error, state="running")
    _record(tx, execution, origin, done, "receipt.created",
            "hold_settled" if settled else "hold_released")  # fmt: skip
    settle_counters(tx, hold, settled)  # last: the hot counter rows, locked until COMMIT
    return done


def _charge(outcome: Outcome | None, error: APIError | None, price: int) -> Charge:
    if outcome is None:
        return Charge("failed", 0, 0, None)
    return Charge("failed" if error else "succeeded", price, outcome.provider_cost_micros,
                  outcome.provider, outcome.usage, outcome.attempts, outcome.estimated,
                  outcome.provider_costs)  # fmt: skip


def _finish(
    tx: SyncTransaction, execution: Row, charge: Charge, receipt_id: str,
    outcome: Outcome | None, error: APIError | None, *, state: str,
) -> Row:  # fmt: skip
    """Record the execution's end, if it is still in `state`."""
    done = {
        **execution,
        "state": charge.status,
        "receipt_id": receipt_id,
        "price_micros": charge.price_micros,
        "result": None if outcome is None or error else orjson.dumps(outcome.result).decode(),
        "error": None if error is None else orjson.dumps(error_summary(error)).decode(),
        "finished_at": now_us(),
    }
    tx.execute(
        "UPDATE executions SET state = :state, receipt_id = :receipt_id,"
        " price_micros = :price_micros, result = :result, error = :error,"
        " finished_at = :finished_at WHERE id = :id AND state = :was",
        {**{k: done[k] for k in ("state", "receipt_id", "price_micros", "result", "error",
                                 "finished_at", "id")}, "was": state},
    )  # fmt: skip
    hook = CLOSE_HOOKS.get(execution["tool"])
    if hook is not None:
        hook(tx, done)
    return done


def _record(
    tx: SyncTransaction, execution: Row, origin: Origin, done: Row, receipt_event: str,
    reason: str,
) -> None:  # fmt: skip
    ids = {"execution_id": execution["id"], "receipt_id": done["receipt_id"]}
    settled = done["price_micros"]
    record_events(tx, execution["tenant_id"], [
        (f"execution.{done['state']}", {**ids, "tool": execution["tool"]}),
        (receipt_event, {**ids, "status": done["state"], "amount_micros": settled}),
    ], livemode=bool(execution["livemode"]))  # fmt: skip
    append_rows(tx, [audit_row(origin, execution["tenant_id"], execution["tool"], reason,
                               cost_micros=settled, quote_id=execution["quote_id"],
                               approval_id=execution["approval_id"],
                               receipt_id=done["receipt_id"])])  # fmt: skip


def _settle_late(
    tx: SyncTransaction, execution: Row, origin: Origin, outcome: Outcome,
    error: APIError | None,
) -> Row | None:  # fmt: skip
    """The tool finished after the sweep had released its hold as abandoned (its job lost its
    lease on its last attempt, and acted anyway): what it did is still charged, once, within
    what it held, without a hold. None if the execution was closed any other way."""
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    current = tx.fetch_one(
        "SELECT e.state, e.error, e.receipt_id, h.amount_micros, h.period FROM executions e"
        f" JOIN holds h ON h.id = e.hold_id WHERE e.id = :id{lock}",
        {"id": execution["id"]},
    )
    if current is None or current["state"] != "failed" or current["error"] is None:
        return None
    if orjson.loads(current["error"]).get("code") != INTERRUPTED:
        return None
    price = 0 if error is not None else min(outcome.price_micros, int(current["amount_micros"]))
    charge = _charge(outcome, error, price)
    settle_late(tx, current["receipt_id"], charge)
    done = _finish(tx, execution, charge, current["receipt_id"], outcome, error, state="failed")
    _record(tx, execution, origin, done, "receipt.updated", "settled_late")
    log.warning("execution %s finished after its hold was released; settled late for %d micros",
                execution["id"], price)  # fmt: skip
    hold = Hold("", execution["tenant_id"], execution["project_id"], current["period"],
                bool(execution["livemode"]), 0)  # fmt: skip
    settle_counters(tx, hold, price)  # nothing held any more: only `spent` moves
    return done


def error_summary(error: APIError) -> dict[str, Any]:
    return {"type": error.type, "code": error.code, "message": error.message}


def execution_object(row: Row) -> dict[str, Any]:
    price = row["price_micros"]
    return {
        "id": row["id"],
        "object": "execution",
        "tool": row["tool"],
        "status": row["state"],
        "quote_id": row["quote_id"],
        "approval_id": row["approval_id"],
        "receipt_id": row["receipt_id"],
        "job_id": row["job_id"],
        "project_id": row["project_id"],
        "amount_usd": None if price is None else micros_to_usd(int(price)),
        "result": _json(row["result"]),
        "error": _json(row["error"]),
        "livemode": bool(row["livemode"]),
        "created": int(row["created_at"]) // 1_000_000,
        "finished": None if row["finished_at"] is None else int(row["finished_at"]) // 1_000_000,
    }


def _json(raw: str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def outcome_response(done: Row) -> tuple[int, dict[str, Any]]:
    """The HTTP answer for a closed execution: 200 with it, or 502 naming it and its receipt."""
    body = execution_object(done)
    if done["state"] == "succeeded":
        return 200, body
    error = body["error"] or {}
    failure = ProviderError(
        f"The tool failed: {error.get('message', 'unknown error')} Its hold was released and"
        " nothing was charged.",
        code=error.get("code", "provider_error"),
        execution_id=done["id"],
        receipt_id=done["receipt_id"],
    )
    return failure.status, failure.envelope(done["request_id"])


async def run_tool(tool: Tool, call: ToolCall) -> Outcome | APIError:
    """Run a tool; its exceptions become the APIError recorded on the failed execution."""
    try:
        outcome = await _with_timeout(tool, call)
    except APIError as error:
        return error
    except TimeoutError:
        return ProviderError(f"The tool did not finish within {tool.timeout_s:g} s.",
                             code="tool_timeout")  # fmt: skip
    except Exception as exc:
        log.exception("tool %s failed", tool.name)
        return ProviderError(f"{type(exc).__name__}: {exc}"[:300])
    return outcome


async def _with_timeout(tool: Tool, call: ToolCall) -> Outcome:
    # asyncio.timeout runs the tool in the caller's task; wait_for would start one per call.
    async with asyncio.timeout(tool.timeout_s):
        return await tool.execute(call)


async def interrupt_execution(db: Database, execution: Row) -> bool:
    """Close an execution whose process died: release its hold, write a failed receipt, and
    store the answer its idempotency key replays. False if it was closed meanwhile."""
    return await db.run_sync(_interrupt, execution)


def close_abandoned(tx: SyncTransaction, api_key_id: str, key: str) -> tuple[int, Any] | None:
    """A retry found its key still claimed long after the claim's fence: the request died. If
    it had opened an execution whose hold has expired and the sweep has not closed it yet,
    close it now as the sweep would, and return the answer it stored for the key."""
    found = tx.fetch_all(
        "SELECT e.* FROM holds h JOIN executions e ON e.id = h.execution_id"
        " WHERE h.state = 'open' AND h.expires_at <= :now"  # the holds_open index
        " AND e.api_key_id = :api_key_id AND e.idempotency_key = :key AND e.state = 'running'",
        {"now": now_us(), "api_key_id": api_key_id, "key": key},
    )
    closed = [execution for execution in found if _interrupt(tx, execution)]
    if not closed:
        return None
    stored = tx.fetch_one(
        "SELECT status, response_body FROM idempotency_keys"
        " WHERE api_key_id = :api_key_id AND key = :key AND state = 'done'",
        {"api_key_id": api_key_id, "key": key},
    )
    if stored is None:
        return None
    return int(stored["status"]), orjson.loads(stored["response_body"])


def _checkpointed(delivered: str) -> Outcome:
    """The outcome a streaming call checkpointed (lanes/chat.py), flagged as an estimate."""
    fields = orjson.loads(delivered)
    fields["usage"] = {**fields.get("usage", {}), "estimated": True, "interrupted": True}
    fields["estimated"] = True
    return Outcome(**fields)


def _interrupt(tx: SyncTransaction, execution: Row) -> bool:
    if execution["job_id"] is not None:
        # Looked at again inside this transaction: the sweep read the job's state before it,
        # and a job queued or running again (a retry) can still finish and settle its hold.
        lock = " FOR SHARE" if tx.dialect == "postgresql" else ""
        job_state = tx.fetch_val(
            f"SELECT state FROM jobs WHERE id = :id{lock}", {"id": execution["job_id"]}
        )
        if job_state in ("queued", "running"):
            return False
    origin = Origin(execution["request_id"], None, None, "INTERNAL", f"job:{SWEEP_JOB_TYPE}")
    delivered = execution.get("delivered")
    if delivered:  # a stream cut by the crash: what it delivered, at its last checkpoint
        error = InternalError(
            "The stream was interrupted (the server restarted) after it had delivered part of"
            " its answer: what it delivered up to its last checkpoint is charged, estimated.",
            code=INTERRUPTED,
        )
        done = close_execution(tx, execution, origin, outcome=_checkpointed(delivered),
                               error=error, charge_failure=True)  # fmt: skip
    else:
        error = InternalError(
            "The execution was interrupted before it finished (the server restarted); its hold"
            " was released and nothing was charged.",
            code=INTERRUPTED,
        )
        done = close_execution(tx, execution, origin, error=error)
    if done is None:
        return False
    if execution["idempotency_key"] and execution["job_id"] is None:
        envelope = error.envelope(execution["request_id"])
        envelope["error"].update(execution_id=done["id"], receipt_id=done["receipt_id"])
        store_response(tx, execution["api_key_id"], execution["idempotency_key"], 500, envelope)
    return True
