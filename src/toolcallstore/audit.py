"""The hash-chained audit log (DESIGN §5.6).

Requests hand their row to `AuditWriter.record`, which returns at once; a background task
appends batches in one transaction each; billable transactions append theirs in their own
transaction (`append_rows`). Every chained row stores `prev_hash` and
`hash = sha256(prev_hash || canonical row)`, and `audit_head` keeps the newest (seq, hash), so
an edited, deleted, inserted or reordered row breaks the chain where `verify_chain` points.

SQLite has one writer: rows are chained as they are inserted. On Postgres a chain head locked
by every writer would serialise every billable transaction, so rows are inserted unchained,
stamped with their transaction's id, and `seal` chains them later in (xid, id) order, taking
only rows below the oldest transaction still running: no row can ever appear before a sealed
one. One process seals at a time (an advisory lock); `AuditWriter.run` seals round after round
while rounds find rows, and every `SEAL_SECONDS` when idle, so a committed row is sealed within
a second while no transaction stays open longer than that. `verify_chain` reports the unsealed tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.db import Database, SyncTransaction
from toolcallstore.ids import now_us
from toolcallstore.logs import AccessLog

log = logging.getLogger("toolcallstore.audit")

FIELDS = (
    "seq",
    "ts",
    "request_id",
    "tenant_id",
    "api_key_id",
    "method",
    "path",
    "route",
    "tool",
    "scope",
    "decision",
    "reason",
    "status",
    "cost_micros",
    "quote_id",
    "approval_id",
    "receipt_id",
    "ip",
    "latency_us",
)
_COLUMNS = (*FIELDS, "prev_hash", "hash")
_PENDING = "audit_rows"  # SyncTransaction.state key: rows to insert at COMMIT


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """sha256(prev_hash || canonical row); the canonical row is the JSON array of FIELDS."""
    return _digest(prev_hash, [row.get(f) for f in FIELDS])


def _digest(prev_hash: str, values: list[Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + orjson.dumps(values)).hexdigest()


def append_rows(tx: SyncTransaction, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to the log in the caller's transaction.

    They are inserted just before COMMIT, by one hook per transaction: on SQLite chained with
    the head read and written once per group-committed batch; on Postgres unchained, for the
    sealer. Rows of a body that fails are dropped with its savepoint, as its other statements
    are.
    """
    tx.state[_PENDING] = (*tx.state.get(_PENDING, ()), *rows)
    tx.before_commit(_PENDING, _insert_pending)


def _insert_pending(tx: SyncTransaction) -> None:
    rows = tx.state.pop(_PENDING, ())
    if not rows:
        return
    if tx.dialect == "postgresql":
        tx.insert_many("audit_log", FIELDS[1:], [[r.get(f) for f in FIELDS[1:]] for r in rows])
        return
    head = tx.fetch_one("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert head is not None, "audit_head row is missing: migrations not applied"
    seq, prev = int(head["seq"]), str(head["hash"])
    chained = []
    now = now_us()
    for row in rows:
        seq += 1
        values = [seq, *(row.get(f) for f in FIELDS[1:])]
        digest = _digest(prev, values)
        chained.append((*values, prev, digest, now))
        prev = digest
    tx.insert_many("audit_log", (*_COLUMNS, "sealed_at"), chained)
    tx.execute("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1",
               {"seq": seq, "hash": prev})  # fmt: skip


# Any constant: the one sealer of a Postgres database holds it for its transaction.
_SEAL_LOCK = 7_463_021_002
SEAL_BATCH = 5000
_UNSEALED = f"""
SELECT id, {", ".join(FIELDS[1:])} FROM audit_log
WHERE seq IS NULL AND xid < :horizon ORDER BY xid, id LIMIT :n
"""
_SEAL = """
UPDATE audit_log SET seq = u.seq, prev_hash = u.prev_hash, hash = u.hash, sealed_at = :now
FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[]), CAST(:prevs AS text[]),
            CAST(:hashes AS text[])) AS u(id, seq, prev_hash, hash)
WHERE audit_log.id = u.id
"""


BUSY = -1  # seal_rows: another process (or task) is sealing now


def seal_rows(tx: SyncTransaction) -> int:
    """Chain the unsealed rows that no running transaction can precede; returns how many (0 on
    SQLite), or BUSY when another sealing round holds the lock."""
    if tx.dialect != "postgresql":
        return 0
    if not tx.fetch_val("SELECT pg_try_advisory_xact_lock(:k)", {"k": _SEAL_LOCK}):
        return BUSY
    # Taken before this transaction writes anything: every transaction below it has ended,
    # and every later one gets a larger id.
    horizon = tx.fetch_val("SELECT pg_snapshot_xmin(pg_current_snapshot())")
    rows = tx.fetch_all(_UNSEALED, {"horizon": horizon, "n": SEAL_BATCH})
    if not rows:
        return 0
    head = tx.fetch_one("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
    assert head is not None, "audit_head row is missing: migrations not applied"
    seq, prev = int(head["seq"]), str(head["hash"])
    ids, seqs, prevs, hashes = [], [], [], []
    for row in rows:
        seq += 1
        digest = chain_hash(prev, {**row, "seq": seq})
        ids.append(row["id"])
        seqs.append(seq)
        prevs.append(prev)
        hashes.append(digest)
        prev = digest
    tx.execute(_SEAL, {"ids": ids, "seqs": seqs, "prevs": prevs, "hashes": hashes,
                       "now": now_us()})  # fmt: skip
    tx.execute("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1",
               {"seq": seq, "hash": prev})  # fmt: skip
    return len(rows)


async def seal(db: Database, *, wait_for_lock_s: float = 0.0) -> int:
    """Seal everything sealable now, in rounds of SEAL_BATCH rows; when another round holds
    the lock, wait up to `wait_for_lock_s` for it (0: leave the rows to that round)."""
    total, deadline = 0, time.monotonic() + wait_for_lock_s
    while True:
        sealed = await db.run_sync(seal_rows)
        if sealed == BUSY:
            if time.monotonic() >= deadline:
                return total
            await asyncio.sleep(0.01)
            continue
        total += sealed
        if sealed < SEAL_BATCH:
            return total


class AuditWriter:
    """Buffers audit rows off the request path and appends them in batches."""

    RETRY_SECONDS = 1.0
    SEAL_SECONDS = 0.2

    def __init__(
        self,
        db: Database,
        *,
        flush_ms: int,
        batch_size: int,
        access_log: AccessLog | None = None,
    ) -> None:
        self._db = db
        self._access_log = access_log
        self._flush_s = flush_ms / 1000
        self._batch_size = batch_size
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._room = asyncio.Event()
        self._high_water = max(batch_size * 4, 20_000)
        self._closing = False
        self._closed = asyncio.Event()
        self._running = False
        # Rows whose request waits for their commit: id(row) -> its waiter.
        self._durable: dict[int, asyncio.Future[None]] = {}

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def record(self, row: dict[str, Any]) -> None:
        """Queue a row; returns at once unless the writer has fallen far behind, in which
        case the request waits for room: an audit row is never dropped to go faster."""
        self._pending.append(row)
        if len(self._pending) >= self._batch_size:
            self._wake.set()
        if len(self._pending) >= self._high_water and not self._closing:
            self._room.clear()
            await self._room.wait()

    async def record_durable(self, row: dict[str, Any]) -> None:
        """Queue a row and return once it is committed: the writer is woken at once, and the
        rows of every request waiting meanwhile commit together in its next batch (a group
        commit: one transaction, however many requests). Without a running writer (or while
        closing) this is `record`."""
        if not self._running or self._closing:
            await self.record(row)
            return
        done = asyncio.get_running_loop().create_future()
        self._durable[id(row)] = done
        self._pending.append(row)
        self._wake.set()
        await done

    async def run(self) -> None:
        """Flush every `flush_ms` (sooner when a batch fills or a durable row waits) until
        `close`; on Postgres seal alongside, in a task of its own."""
        sealer = asyncio.create_task(self._seal_until_closed()) if self._db.is_postgres else None
        self._running = True
        try:
            while not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._flush_s)
                except TimeoutError:
                    pass
                self._wake.clear()
                await self._flush_with_retry()
        finally:
            if sealer is not None:
                await sealer

    async def _seal_until_closed(self) -> None:
        """Round after round while rounds find rows; idle, a look every SEAL_SECONDS."""
        while not self._closing:
            busy = await self._seal_logged()
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self.SEAL_SECONDS)

    async def _seal_logged(self) -> bool:
        try:
            return await seal(self._db) > 0
        except Exception:
            log.exception("audit sealing failed; will retry")
            return False

    async def seal(self, wait_s: float = 5.0) -> int:
        """Flush, then chain every row committed so far (Postgres; 0 on SQLite), waiting up to
        `wait_s` for transactions still open and for another process's sealing round."""
        await self.flush()
        if not self._db.is_postgres:
            return 0
        total, deadline = 0, time.monotonic() + wait_s
        while True:
            total += await seal(self._db)
            left = await self._db.fetch_val("SELECT count(*) FROM audit_log WHERE seq IS NULL")
            if not left or time.monotonic() > deadline:
                return total
            await asyncio.sleep(0.01)

    async def _flush_with_retry(self) -> None:
        while self._pending:
            try:
                await self.flush()
            except Exception:
                log.exception("audit flush failed; %d rows kept for retry", len(self._pending))
                if self._closing:
                    return
                await asyncio.sleep(self.RETRY_SECONDS)

    async def flush(self) -> None:
        """Append what is buffered now; rows stay buffered unless their transaction commits."""
        async with self._flushing:
            while self._pending:
                size = min(self._batch_size, len(self._pending))
                batch = [self._pending[i] for i in range(size)]
                await self._db.run_sync(append_rows, batch)
                for row in batch:
                    self._pending.popleft()
                    waiter = self._durable.pop(id(row), None) if self._durable else None
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                if self._access_log is not None:
                    self._access_log.write(batch)
                if len(self._pending) < self._high_water:
                    self._room.set()

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._room.set()
        self._wake.set()
        await self._flush_with_retry()
        for waiter in self._durable.values():  # flushing failed at shutdown: answer anyway
            if not waiter.done():
                waiter.set_result(None)
        self._durable.clear()
        if self._db.is_postgres:
            # The last rows, sealed by this process even if its sealing task (or another
            # process) held the lock a moment ago: an orderly stop leaves no unsealed tail of
            # its own unless an older transaction elsewhere is still open.
            try:
                await seal(self._db, wait_for_lock_s=self.SEAL_SECONDS * 10)
            except Exception:
                log.exception("audit sealing at shutdown failed; the next start seals them")


@dataclass(frozen=True)
class ChainReport:
    rows_checked: int
    broken_at: int | None = None
    problem: str | None = None
    unsealed: int = 0  # rows not chained yet (Postgres): the newest, still unprotected

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_chain(
    db: Database, page_size: int = 2000, *, while_writing: bool = False
) -> ChainReport:
    """Walk the chain from the first row; report the first link that does not hold.

    `while_writing` (a running store, e.g. the operator page): walk up to the head as it was
    when the walk began, so that rows appended meanwhile are not taken for an insertion."""
    expected_seq, prev, checked = 1, "0" * 64, 0
    head, upto = None, 2**62
    if while_writing:
        head = await db.fetch_one("SELECT seq, hash FROM audit_head WHERE id = 1")
        upto = 0 if head is None else int(head["seq"])
    while True:
        rows = await db.fetch_all(
            "SELECT * FROM audit_log WHERE seq >= :seq AND seq <= :upto ORDER BY seq LIMIT :n",
            {"seq": expected_seq, "upto": upto, "n": page_size},
        )
        for row in rows:
            if row["seq"] != expected_seq:
                return ChainReport(checked, expected_seq, f"row {expected_seq} is missing")
            if row["prev_hash"] != prev:
                return ChainReport(checked, row["seq"], "prev_hash does not match the row before")
            if chain_hash(prev, row) != row["hash"]:
                return ChainReport(checked, row["seq"], "row content does not match its hash")
            prev, expected_seq, checked = row["hash"], expected_seq + 1, checked + 1
        if len(rows) < page_size:
            break
    if not while_writing:
        head = await db.fetch_one("SELECT seq, hash FROM audit_head WHERE id = 1")
    last = expected_seq - 1
    if head is None or int(head["seq"]) > last:
        return ChainReport(checked, expected_seq, "rows after this point were removed")
    if int(head["seq"]) < last:
        return ChainReport(checked, int(head["seq"]) + 1, "rows from here on were added")
    if head["hash"] != prev:
        return ChainReport(checked, last, "the chain's head does not match this row")
    unsealed = await db.fetch_val("SELECT count(*) FROM audit_log WHERE seq IS NULL")
    return ChainReport(checked, unsealed=int(unsealed or 0))
