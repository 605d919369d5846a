"""What the operator status page shows, gathered in one pass of cheap queries.

Providers come from this process's breakers (each process learns on its own). The full audit
chain walk and the month's reconciliation are the two expensive parts: the walk runs only when
the operator asks for it, the reconciliation at most once a minute per process.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any

from toolcallstore.admin.session import SignedOut
from toolcallstore.audit import ChainReport, chain_hash, verify_chain
from toolcallstore.controls.reconciliation import reconcile
from toolcallstore.db import Database
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.store import Job
from toolcallstore.services import Services

RECONCILE_EVERY_S = 60.0
JOBS_SHOWN = 20
IDLE = ("closed", 0)


@dataclass
class AdminState:
    """Per-process state of the operator pages: signed-out sessions and the costly results."""

    signed_out: SignedOut = field(default_factory=SignedOut)
    chain: tuple[float, ChainReport] | None = None  # when (unix s) the full walk ran, and what
    reconciled: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)


async def gather(svc: Services, state: AdminState) -> dict[str, Any]:
    now = time.time()
    return {
        "object": "operator_status",
        "generated": int(now),
        "pid_note": "Providers are as this process has seen them.",
        "providers": providers(svc),
        "queues": await queues(svc, now),
        "money": await money(svc.db, state, now),
        "audit": await audit_status(svc.db, state),
        "webhooks": await failing_webhooks(svc.db, now),
    }


def providers(svc: Services) -> dict[str, Any]:
    """Targets this process has called or whose breaker is not closed; worst first."""
    report = svc.health.report(list(svc.lanes.models))
    seen = [t for t in report if (t["state"], t["calls"]) != IDLE or t["last_error"]]
    # Lanes with their own breaker settings keep their own state of a target.
    seen += [{**t, "target": f"{t['target']} (lane {t['lane']})"}
             for t in svc.health.lane_report()]  # fmt: skip
    rank = {"open": 0, "half_open": 1, "closed": 2}
    seen.sort(key=lambda t: (rank[t["state"]], -t["error_rate"], t["target"]))
    return {"targets": seen, "idle": len(report) - len(seen)}


def _job_view(job: Job, now: float) -> dict[str, Any]:
    last = job.errors[-1]["error"] if job.errors else None
    return {
        "id": job.id,
        "queue": job.queue,
        "type": job.type,
        "tenant_id": job.tenant_id,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "age_s": round(now - job.created_at / 1_000_000, 1),
        "last_error": last,
        "cancel_requested": job.cancel_requested,
    }


async def queues(svc: Services, now: float) -> dict[str, Any]:
    store = svc.job_store
    depth: dict[str, dict[str, Any]] = {}
    for queue, job_state, count in await store.depth():
        depth.setdefault(queue, {"queued": 0, "running": 0, "oldest_queued_age_s": None})
        depth[queue][job_state] = count
    rows = await svc.db.fetch_all(
        "SELECT queue, MIN(run_at) AS oldest FROM jobs WHERE state = 'queued' AND run_at <= :now"
        " GROUP BY queue",
        {"now": int(now * 1_000_000)},
    )
    for row in rows:
        entry = depth.setdefault(row["queue"], {"queued": 0, "running": 0})
        entry["oldest_queued_age_s"] = round(now - int(row["oldest"]) / 1_000_000, 1)
    failed = await store.recent("failed", JOBS_SHOWN)
    live = await svc.db.fetch_all(
        "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY run_at, id LIMIT :n",
        {"n": JOBS_SHOWN},
    )
    return {
        "depth": [{"queue": q, **v} for q, v in sorted(depth.items())],
        "failed": [_job_view(job, now) for job in failed],
        "live": [_job_view(Job.from_row(row), now) for row in live],
    }


def _month_start(now: float) -> tuple[str, int]:
    t = time.gmtime(now)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return f"{t.tm_year:04d}-{t.tm_mon:02d}", start


async def money(db: Database, state: AdminState, now: float) -> dict[str, Any]:
    period, _ = _month_start(now)
    t = time.gmtime(now)
    day_start_us = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) * 1_000_000
    rows = await db.fetch_all(
        "SELECT l.tenant_id, l.livemode, MAX(t.name) AS name,"
        " SUM(l.amount_micros) AS month,"
        " SUM(CASE WHEN l.created_at >= :day THEN l.amount_micros ELSE 0 END) AS today"
        " FROM ledger_entries l LEFT JOIN tenants t ON t.id = l.tenant_id"
        " WHERE l.period = :period AND l.kind = 'charge'"
        " GROUP BY l.tenant_id, l.livemode ORDER BY l.tenant_id, l.livemode",
        {"period": period, "day": day_start_us},
    )
    spend = [
        {"tenant_id": r["tenant_id"], "name": r["name"], "livemode": bool(r["livemode"]),
         "today_usd": micros_to_usd(int(r["today"] or 0)),
         "month_usd": micros_to_usd(int(r["month"] or 0))}
        for r in rows
    ]  # fmt: skip
    holds = await db.fetch_all(
        "SELECT tenant_id, livemode, COUNT(*) AS n, SUM(amount_micros) AS amount,"
        " MIN(expires_at) AS next_expiry FROM holds WHERE state = 'open'"
        " GROUP BY tenant_id, livemode ORDER BY tenant_id, livemode"
    )
    open_holds = [
        {"tenant_id": r["tenant_id"], "livemode": bool(r["livemode"]), "count": int(r["n"]),
         "amount_usd": micros_to_usd(int(r["amount"] or 0)),
         "next_expiry_in_s": round(int(r["next_expiry"]) / 1_000_000 - now, 1)}
        for r in holds
    ]  # fmt: skip
    mismatches = []
    for livemode in (True, False):
        report = await _reconciled(db, state, period, livemode, now)
        mismatches += [{**m, "livemode": livemode} for m in report["mismatches"]]
    return {"period": period, "spend": spend, "open_holds": open_holds,
            "reconciliation": {"balanced": not mismatches, "mismatches": mismatches}}  # fmt: skip


async def _reconciled(
    db: Database, state: AdminState, period: str, livemode: bool, now: float
) -> dict[str, Any]:
    name = f"{period}:{livemode}"
    cached = state.reconciled.get(name)
    if cached is None or now - cached[0] >= RECONCILE_EVERY_S:
        cached = state.reconciled[name] = (now, await reconcile(db, period, livemode))
    return cached[1]


async def audit_status(db: Database, state: AdminState) -> dict[str, Any]:
    """The cheap check on every refresh: the head matches the last row, which matches its own
    hash; plus the unsealed tail (Postgres) and the last full walk, if one ran."""
    # One statement, one snapshot: the head and the newest row as the same commit left them.
    row = await db.fetch_one(
        "SELECT h.seq AS head_seq, h.hash AS head_hash, l.* FROM audit_head h"
        " LEFT JOIN audit_log l ON l.seq = (SELECT MAX(seq) FROM audit_log) WHERE h.id = 1"
    )
    problem = None
    if row is None:
        problem = "the chain's head is missing"
    elif row["seq"] is None:
        problem = None if int(row["head_seq"]) == 0 else "the head names rows that are gone"
    elif int(row["head_seq"]) != int(row["seq"]) or row["head_hash"] != row["hash"]:
        problem = "the head does not match the newest row"
    elif chain_hash(row["prev_hash"], row) != row["hash"]:
        problem = "the newest row does not match its hash"
    unsealed = 0
    if db.is_postgres:
        unsealed = int(await db.fetch_val("SELECT count(*) FROM audit_log WHERE seq IS NULL") or 0)
    walk = None
    if state.chain is not None:
        at, report = state.chain
        walk = {"at": int(at), "ok": report.ok, "rows_checked": report.rows_checked,
                "broken_at": report.broken_at, "problem": report.problem}  # fmt: skip
    return {
        "rows": 0 if row is None or row["seq"] is None else int(row["seq"]),
        "tail_ok": problem is None,
        "problem": problem,
        "unsealed": unsealed,
        "full_check": walk,
    }


async def verify_now(db: Database, state: AdminState) -> ChainReport:
    report = await verify_chain(db, while_writing=True)
    state.chain = (time.time(), report)
    return report


async def failing_webhooks(db: Database, now: float) -> list[dict[str, Any]]:
    rows = await db.fetch_all(
        "SELECT e.id, e.tenant_id, e.url, e.livemode, e.disabled, e.disabled_reason,"
        " e.failing_since, (SELECT COALESCE(d.last_error, 'HTTP ' || d.last_status)"
        "   FROM webhook_deliveries d WHERE d.endpoint_id = e.id"
        "   AND (d.last_error IS NOT NULL OR d.last_status NOT BETWEEN 200 AND 299)"
        "   ORDER BY d.created_at DESC, d.id DESC LIMIT 1) AS last_error,"
        " (SELECT COUNT(*) FROM webhook_deliveries d"
        "   WHERE d.endpoint_id = e.id AND d.state = 'pending') AS pending"
        " FROM webhook_endpoints e WHERE e.deleted_at IS NULL"
        " AND (e.failing_since IS NOT NULL OR e.disabled = 1) ORDER BY e.failing_since, e.id"
        " LIMIT 50"
    )
    return [
        {"id": r["id"], "tenant_id": r["tenant_id"], "url": r["url"],
         "livemode": bool(r["livemode"]), "disabled": bool(r["disabled"]),
         "disabled_reason": r["disabled_reason"],
         "failing_for_s": None if r["failing_since"] is None
         else round(now - int(r["failing_since"]) / 1_000_000, 1),
         "last_error": r["last_error"], "pending_deliveries": int(r["pending"] or 0)}
        for r in rows
    ]  # fmt: skip
