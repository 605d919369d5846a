"""Monthly spend caps enforced with holds (DESIGN §5.2).

Every billable call takes a hold of its worst-case cost inside one write transaction that raises
the tenant's (and project's) counter row for the month only if `spent + held + amount <= cap`,
so no interleaving can overshoot a cap (SQLite: the writer's BEGIN IMMEDIATE; Postgres: the
counter row's lock, always tenant first). Afterwards the hold is settled (the actual cost moves
from `held` to `spent`) or released. Test-mode and live-mode spend are counted apart, as Stripe
keeps test data apart.

A tenant's counter row is the one row all its calls write, so on Postgres its update is the
transaction's last statement and travels with the COMMIT (`execute_last`): the row is locked
for no round trip. The cap is checked in that statement; if it no longer fits, the statement
raises, the transaction rolls back, and its body runs again (`tx.retried`) to lock the rows and
answer 402 with the figures it saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import SpendCapExceeded
from toolcallstore.ids import now_us
from toolcallstore.money import micros_to_usd


def period_of(us: int) -> str:
    """The UTC month 'YYYY-MM' an epoch-microsecond time falls in."""
    return time.strftime("%Y-%m", time.gmtime(us // 1_000_000))


@dataclass(frozen=True)
class Hold:
    id: str
    tenant_id: str
    project_id: str | None
    period: str
    livemode: bool
    amount_micros: int

    @classmethod
    def from_row(cls, row: Row) -> Hold:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            project_id=row["project_id"],
            period=row["period"],
            livemode=bool(row["livemode"]),
            amount_micros=int(row["amount_micros"]),
        )

    @property
    def owners(self) -> list[str]:
        return [self.tenant_id] if self.project_id is None else [self.tenant_id, self.project_id]


def _locked_counter(tx: SyncTransaction, owner_id: str, period: str, livemode: bool) -> Row:
    """The owner's counter row for the month (created at 0 if new) with its cap, locked on
    Postgres; on SQLite the writer's BEGIN IMMEDIATE already excludes every other writer."""
    key = {"owner_id": owner_id, "period": period, "livemode": int(livemode)}
    tx.execute(
        "INSERT INTO spend_counters (owner_id, period, livemode, spent_micros, held_micros)"
        " VALUES (:owner_id, :period, :livemode, 0, 0)"
        " ON CONFLICT (owner_id, period, livemode) DO NOTHING",
        key,
    )
    table = "tenants" if owner_id.startswith("ten_") else "projects"
    lock = " FOR UPDATE OF c" if tx.dialect == "postgresql" else ""
    row = tx.fetch_one(
        "SELECT c.spent_micros, c.held_micros, o.monthly_cap_micros AS cap"
        f" FROM spend_counters c JOIN {table} o ON o.id = c.owner_id"
        " WHERE c.owner_id = :owner_id AND c.period = :period AND c.livemode = :livemode"
        f"{lock}",
        key,
    )
    assert row is not None
    return row


def hold_spend(
    tx: SyncTransaction,
    *,
    hold_id: str,
    tenant_id: str,
    project_id: str | None,
    livemode: bool,
    amount_micros: int,
    execution_id: str,
    expires_at: int,
) -> Hold:
    """Reserve `amount_micros` against every cap that applies, or raise 402 and change nothing."""
    now = now_us()
    hold = Hold(hold_id, tenant_id, project_id, period_of(now), livemode, amount_micros)
    tx.execute(
        "INSERT INTO holds (id, tenant_id, project_id, period, livemode, amount_micros, state,"
        " execution_id, expires_at, created_at) VALUES (:id, :tenant_id, :project_id, :period,"
        " :livemode, :amount, 'open', :execution_id, :expires_at, :now)",
        {
            "id": hold.id,
            "tenant_id": tenant_id,
            "project_id": project_id,
            "period": hold.period,
            "livemode": int(livemode),
            "amount": amount_micros,
            "execution_id": execution_id,
            "expires_at": expires_at,
            "now": now,
        },
    )
    for owner_id in hold.owners:  # tenant first, then project: the lock order on Postgres
        try:
            _take(tx, owner_id, hold.period, livemode, amount_micros)
        except SpendCapExceeded as refused:
            # The tenant's cap may only be full of holds in flight (a retry could pass), while
            # the project's leaves no room whatever settles: then that is the answer, without
            # Retry-After.
            if refused.headers and project_id is not None and owner_id != project_id:
                lasting = _lasting_refusal(tx, project_id, hold.period, livemode, amount_micros)
                if lasting is not None:
                    raise lasting from None
            raise
    return hold


# Postgres, sent with the COMMIT: create or raise the counter if the cap allows, else raise
# (toolcallstore_refuse is volatile, so it runs only when its CASE branch is reached).
_PG_TAKE = {
    table: f"""
INSERT INTO spend_counters AS c (owner_id, period, livemode, spent_micros, held_micros)
SELECT :owner_id, :period, :livemode, 0, :amount
WHERE CASE WHEN :amount <= COALESCE((SELECT monthly_cap_micros FROM {table}
    WHERE id = :owner_id), :amount) THEN true ELSE toolcallstore_refuse(:owner_id) END
ON CONFLICT (owner_id, period, livemode) DO UPDATE SET held_micros = c.held_micros + :amount
WHERE CASE WHEN c.spent_micros + c.held_micros + :amount <= COALESCE((SELECT monthly_cap_micros
    FROM {table} WHERE id = :owner_id), c.spent_micros + c.held_micros + :amount)
    THEN true ELSE toolcallstore_refuse(:owner_id) END
"""
    for table in ("tenants", "projects")
}


def _take(tx: SyncTransaction, owner_id: str, period: str, livemode: bool, amount: int) -> None:
    """Raise the owner's `held` by `amount` if its cap allows, else raise 402."""
    table = "tenants" if owner_id.startswith("ten_") else "projects"
    key = {"owner_id": owner_id, "period": period, "livemode": int(livemode), "amount": amount}
    if tx.dialect == "postgresql" and not tx.retried:
        tx.execute_last(_PG_TAKE[table], key)
        return
    # The common case in one statement: the row exists and the amount fits. On Postgres the
    # UPDATE waits for a concurrent holder's row lock and re-checks its WHERE on the new row.
    taken = tx.fetch_one(
        "UPDATE spend_counters SET held_micros = held_micros + :amount"
        " WHERE owner_id = :owner_id AND period = :period AND livemode = :livemode"
        " AND spent_micros + held_micros + :amount <= COALESCE("
        f"(SELECT monthly_cap_micros FROM {table} WHERE id = :owner_id),"
        " spent_micros + held_micros + :amount) RETURNING owner_id",
        key,
    )
    if taken is not None:
        return
    counter = _locked_counter(tx, owner_id, period, livemode)  # new month, or over the cap
    cap = None if counter["cap"] is None else int(counter["cap"])
    spent, held = int(counter["spent_micros"]), int(counter["held_micros"])
    if cap is not None and spent + held + amount > cap:
        raise cap_exceeded(owner_id, cap, spent, held, amount)
    tx.execute(
        "UPDATE spend_counters SET held_micros = held_micros + :amount"
        " WHERE owner_id = :owner_id AND period = :period AND livemode = :livemode",
        key,
    )


def _lasting_refusal(
    tx: SyncTransaction, owner_id: str, period: str, livemode: bool, amount: int
) -> SpendCapExceeded | None:
    """The owner's refusal if its cap has no room for `amount` even once every hold is gone."""
    counter = _locked_counter(tx, owner_id, period, livemode)
    cap = None if counter["cap"] is None else int(counter["cap"])
    spent = int(counter["spent_micros"])
    if cap is None or spent + amount <= cap:
        return None
    return cap_exceeded(owner_id, cap, spent, int(counter["held_micros"]), amount)


def cap_exceeded(owner_id: str, cap: int, spent: int, held: int, amount: int) -> SpendCapExceeded:
    source = "tenant" if owner_id.startswith("ten_") else "project"
    # Only in-flight holds can free room; if what is already spent leaves none, waiting is useless.
    transient = held > 0 and spent + amount <= cap
    remedy = (
        "Calls in flight hold part of the cap; retry after they settle."
        if transient
        else f"Raise the {source}'s monthly cap (POST /v1/spend_caps) or wait for next month."
    )
    return SpendCapExceeded(
        f"This call may cost up to {micros_to_usd(amount)} USD, which would exceed the {source}'s"
        f" monthly spend cap of {micros_to_usd(cap)} USD ({micros_to_usd(spent)} spent,"
        f" {micros_to_usd(held)} held by calls in flight).",
        headers={"Retry-After": "1"} if transient else None,
        limit_source=source,
        cap_usd=micros_to_usd(cap),
        spent_usd=micros_to_usd(spent),
        held_usd=micros_to_usd(held),
        requested_usd=micros_to_usd(amount),
        remedy_hint=remedy,
    )


def close_hold(tx: SyncTransaction, hold_id: str, settled_micros: int) -> tuple[Hold, int] | None:
    """Settle (`settled_micros` > 0) or release (0) an open hold; returns it with the amount
    settled, or None if it was already closed.

    The actual cost is clamped to the hold: a call can never be charged more than it held.
    """
    # One conditional UPDATE claims the hold, so two closers (a settle racing the sweep) can
    # never both move its money.
    row = tx.fetch_one(
        "UPDATE holds SET state = CASE WHEN amount_micros > 0 AND :actual > 0"
        " THEN 'settled' ELSE 'released' END,"
        " settled_micros = CASE WHEN :actual < amount_micros THEN :actual ELSE amount_micros END,"
        " closed_at = :now WHERE id = :id AND state = 'open' RETURNING *",
        {"actual": max(settled_micros, 0), "now": now_us(), "id": hold_id},
    )
    if row is None:
        return None
    hold = Hold.from_row(row)
    actual = int(row["settled_micros"])
    return hold, actual


def settle_counters(tx: SyncTransaction, hold: Hold, actual: int) -> None:
    """Move a closed hold's amount out of `held` and its settled part into `spent`, as the
    transaction's last statements (with the COMMIT on Postgres)."""
    for owner_id in hold.owners:  # the same lock order as hold_spend: tenant, then project
        tx.execute_last(
            "UPDATE spend_counters SET held_micros = held_micros - :amount,"
            " spent_micros = spent_micros + :actual WHERE owner_id = :owner_id"
            " AND period = :period AND livemode = :livemode",
            {"amount": hold.amount_micros, "actual": actual, "owner_id": owner_id,
             "period": hold.period, "livemode": int(hold.livemode)},
        )  # fmt: skip


async def counters(
    db: Database, owner_ids: list[str], period: str, livemode: bool
) -> dict[str, Row]:
    """The month's counters of each owner that has one."""
    if not owner_ids:
        return {}
    marks = ", ".join(f":o{i}" for i in range(len(owner_ids)))
    rows = await db.fetch_all(
        "SELECT owner_id, spent_micros, held_micros FROM spend_counters"
        f" WHERE owner_id IN ({marks}) AND period = :period AND livemode = :livemode",
        {
            **{f"o{i}": o for i, o in enumerate(owner_ids)},
            "period": period,
            "livemode": int(livemode),
        },
    )
    return {row["owner_id"]: row for row in rows}
