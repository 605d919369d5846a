"""The hash-chained audit log (DESIGN §5.6).

Requests hand their row to `AuditWriter.record`, which returns at once; a background task
appends batches in one transaction each. Every row stores `prev_hash` and
`hash = sha256(prev_hash || canonical row)`, and `audit_head` keeps the newest (seq, hash) in
the same transaction, so an edited, deleted or truncated row breaks the chain where
`verify_chain` can point at it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.db import Database, SyncTransaction
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
_PENDING = "audit_rows"  # SyncTransaction.state key: rows to chain at COMMIT


def chain_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """sha256(prev_hash || canonical row); the canonical row is the JSON array of FIELDS."""
    return _digest(prev_hash, [row.get(f) for f in FIELDS])


def _digest(prev_hash: str, values: list[Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + orjson.dumps(values)).hexdigest()


def append_rows(tx: SyncTransaction, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to the chain in the caller's transaction.

    They are chained and inserted just before COMMIT, by one hook per transaction: a
    group-committed batch reads and writes the chain's head once, and on Postgres the head
    row (which every audited write locks) stays locked only until that COMMIT. Rows of a body
    that fails are dropped with its savepoint, as its other statements are.
    """
    tx.state[_PENDING] = (*tx.state.get(_PENDING, ()), *rows)
    tx.before_commit(_PENDING, _chain_pending)


_PG_TYPES = {"ts": "bigint", "status": "integer", "cost_micros": "bigint", "latency_us": "bigint"}
# One row, one round trip on Postgres: read and lock the head, chain the row with the same
# digest as `_digest` (sha256 of prev_hash || the JSON array of FIELDS, `rest` being that
# array's text after the seq), insert it and move the head. The head row, which every audited
# write locks, is then held for this statement and the COMMIT only.
_PG_APPEND_ONE = f"""
WITH head AS (SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE),
next AS (
    SELECT seq + 1 AS seq, hash AS prev_hash, encode(sha256(convert_to(
        hash || '[' || (seq + 1)::text || ',' || :rest::text, 'UTF8')), 'hex') AS hash
    FROM head
),
added AS (
    INSERT INTO audit_log ({", ".join(_COLUMNS)})
    SELECT next.seq, {", ".join(f":{f}::{_PG_TYPES.get(f, 'text')}" for f in FIELDS[1:])},
        next.prev_hash, next.hash
    FROM next
)
UPDATE audit_head SET seq = next.seq, hash = next.hash FROM next WHERE audit_head.id = 1
"""


def _chain_pending(tx: SyncTransaction) -> None:
    rows = tx.state.pop(_PENDING, ())
    if not rows:
        return
    if tx.dialect == "postgresql" and len(rows) == 1:
        fields = {f: rows[0].get(f) for f in FIELDS[1:]}
        rest = orjson.dumps(list(fields.values())).decode()[1:]
        tx.execute(_PG_APPEND_ONE, {**fields, "rest": rest})
        return
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    head = tx.fetch_one(f"SELECT seq, hash FROM audit_head WHERE id = 1{lock}")
    assert head is not None, "audit_head row is missing: migrations not applied"
    seq, prev = int(head["seq"]), str(head["hash"])
    chained = []
    for row in rows:
        seq += 1
        values = [seq, *(row.get(f) for f in FIELDS[1:])]
        digest = _digest(prev, values)
        chained.append((*values, prev, digest))
        prev = digest
    tx.insert_many("audit_log", _COLUMNS, chained)
    tx.execute("UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1",
               {"seq": seq, "hash": prev})  # fmt: skip


class AuditWriter:
    """Buffers audit rows off the request path and appends them in batches."""

    RETRY_SECONDS = 1.0

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

    async def run(self) -> None:
        """Flush every `flush_ms` (sooner when a batch fills) until `close`."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._flush_s)
            except TimeoutError:
                pass
            self._wake.clear()
            await self._flush_with_retry()

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
                for _ in batch:
                    self._pending.popleft()
                if self._access_log is not None:
                    self._access_log.write(batch)
                if len(self._pending) < self._high_water:
                    self._room.set()

    async def close(self) -> None:
        self._closing = True
        self._room.set()
        self._wake.set()
        await self._flush_with_retry()


@dataclass(frozen=True)
class ChainReport:
    rows_checked: int
    broken_at: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_chain(db: Database, page_size: int = 2000) -> ChainReport:
    """Walk the chain from the first row; report the first link that does not hold."""
    expected_seq, prev, checked = 1, "0" * 64, 0
    while True:
        rows = await db.fetch_all(
            "SELECT * FROM audit_log WHERE seq >= :seq ORDER BY seq LIMIT :n",
            {"seq": expected_seq, "n": page_size},
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
    head = await db.fetch_one("SELECT seq, hash FROM audit_head WHERE id = 1")
    if head is None or head["seq"] != expected_seq - 1 or head["hash"] != prev:
        return ChainReport(checked, expected_seq, "rows after this point were removed")
    return ChainReport(checked)
