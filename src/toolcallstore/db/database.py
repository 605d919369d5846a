"""A thin wrapper over `databases` that is safe for SQLite and Postgres alike.

`databases` opens a new aiosqlite connection (and thread) per acquire, issues only a deferred
BEGIN and binds connections to the current task (DESIGN §9). So on SQLite we keep one long-lived
writer connection, serialise write transactions on it with an asyncio lock and open each one
with BEGIN IMMEDIATE; reads go round-robin to a few query-only reader connections. `run_sync`
transactions (the billable ones, the audit) use a second writer connection on the event loop's
thread (loop_writer.py), which defers to the first while it holds the lock. On Postgres every
transaction takes its own pooled connection, never the task-bound one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar

import databases
from databases.core import Connection
from sqlalchemy.util import greenlet_spawn

from toolcallstore.db.loop_writer import CONNECTION_PRAGMAS, LoopWriter, Outcomes
from toolcallstore.db.pg_sync import pg_transaction
from toolcallstore.db.sync import (
    Row,
    SyncTransaction,
    Values,
    Work,
    insert_sql,
    numbered,
    sqlite_batch,
    sqlite_rows,
)
from toolcallstore.errors import ConfigError, DatabaseError
from toolcallstore.settings import sqlite_path

P = ParamSpec("P")
T = TypeVar("T")


async def _run(conn: Connection, dialect: str, sql: str, values: Values) -> list[Row]:
    """One statement with `:name` placeholders, straight on the driver.

    `databases` compiles every statement through SQLAlchemy and, on SQLite, needs three thread
    hops (execute, fetch, close) per statement; this costs one hop or one asyncpg call, which
    is most of a billable transaction's time on the single writer.
    """
    raw = conn.raw_connection
    if dialect == "postgresql":
        pg_sql, names = numbered(sql)
        params = values or {}
        return [dict(r) for r in await raw.fetch(pg_sql, *(params[n] for n in names))]
    # aiosqlite's `_execute` runs a function on the connection's own thread: the one way to
    # execute, fetch and close in a single hop.
    rows: list[Row] = await raw._execute(sqlite_rows, raw._conn, sql, dict(values or {}))
    return rows


__all__ = ["Database", "Row", "SyncTransaction", "Transaction", "Values"]


class Transaction:
    """Queries inside one write transaction; obtained from `Database.transaction()`."""

    def __init__(self, connection: Connection, dialect: str) -> None:
        self._connection = connection
        self.dialect = dialect

    async def fetch_one(self, sql: str, values: Values = None) -> Row | None:
        rows = await _run(self._connection, self.dialect, sql, values)
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, values: Values = None) -> list[Row]:
        return await _run(self._connection, self.dialect, sql, values)

    async def fetch_val(self, sql: str, values: Values = None) -> Any:
        rows = await _run(self._connection, self.dialect, sql, values)
        return next(iter(rows[0].values())) if rows else None

    async def execute(self, sql: str, values: Values = None) -> None:
        await _run(self._connection, self.dialect, sql, values)

    async def fetch_raw(self, sql: str, args: Sequence[Any]) -> list[Row]:
        """Run `?`-placeholder SQL on the driver directly, skipping `databases`' per-statement
        SQLAlchemy compilation; for the queue's hot statements."""
        raw = self._connection.raw_connection
        if self.dialect == "postgresql":
            return [dict(r) for r in await raw.fetch(_dollar_params(sql), *args)]
        cursor = await raw.execute(sql, tuple(args))
        try:
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
        finally:
            await cursor.close()

    async def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Bulk insert through the driver's own executemany: `databases` compiles every row
        through SQLAlchemy, which caps a batch at a few thousand rows a second."""
        if rows:
            sql = insert_sql(self.dialect, table, columns)
            await self._connection.raw_connection.executemany(sql, rows)


class Database:
    """Reads anywhere, writes through `transaction()`; the same API on both dialects."""

    def __init__(self, url: str, *, readers: int = 2) -> None:
        if url.startswith("sqlite"):
            self.dialect = "sqlite"
            if sqlite_path(url) is None:
                raise ConfigError("an in-memory SQLite database cannot be shared; use a file")
        elif url.startswith(("postgresql", "postgres")):
            self.dialect = "postgresql"
            url = "postgresql" + url[url.index(":") :]
        else:
            raise ConfigError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")
        self.url = url
        self._readers_wanted = max(1, readers)
        self._db = (
            databases.Database(url, min_size=1, max_size=10, reset=_keep_session)
            if self.is_postgres
            else (databases.Database(url))
        )
        self._writer: Connection | None = None
        self._readers: list[Connection] = []
        self._reader_cycle: itertools.cycle[Connection] | None = None
        self._write_lock = asyncio.Lock()
        self._loop_writer: LoopWriter | None = None

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def connect(self) -> None:
        await self._db.connect()
        if self.is_postgres:
            return
        path = sqlite_path(self.url)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._open_sqlite(query_only=False)
        await self._writer.execute("PRAGMA journal_mode=WAL")
        self._readers = [
            await self._open_sqlite(query_only=True) for _ in range(self._readers_wanted)
        ]
        self._reader_cycle = itertools.cycle(self._readers)
        self._loop_writer = LoopWriter(path, self._write_lock, self._offload)

    async def _open_sqlite(self, *, query_only: bool) -> Connection:
        conn = Connection(self._db, self._db._backend)
        await conn.__aenter__()
        for pragma in (
            "PRAGMA busy_timeout=10000",
            *CONNECTION_PRAGMAS,
            f"PRAGMA query_only={'ON' if query_only else 'OFF'}",
        ):
            await conn.execute(pragma)
        return conn

    async def disconnect(self) -> None:
        if self._loop_writer is not None:
            await self._loop_writer.close()
            self._loop_writer = None
        for conn in [*self._readers, *([self._writer] if self._writer else [])]:
            await conn.__aexit__(None, None, None)
        self._readers, self._writer, self._reader_cycle = [], None, None
        await self._db.disconnect()

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[Connection]:
        if self._reader_cycle is None:
            raise DatabaseError("database is not connected")
        yield next(self._reader_cycle)

    async def fetch_one(self, sql: str, values: Values = None) -> Row | None:
        rows = await self.fetch_all(sql, values)
        return rows[0] if rows else None

    async def fetch_all(self, sql: str, values: Values = None) -> list[Row]:
        if self.is_postgres:
            pg_sql, names = numbered(sql)
            params = values or {}
            rows = await self._db._backend._pool.fetch(pg_sql, *(params[n] for n in names))
            return [dict(r) for r in rows]
        async with self._reader() as conn:
            return await _run(conn, self.dialect, sql, values)

    async def fetch_val(self, sql: str, values: Values = None) -> Any:
        rows = await self.fetch_all(sql, values)
        return next(iter(rows[0].values())) if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One write transaction: BEGIN IMMEDIATE on the SQLite writer, BEGIN on Postgres."""
        if self.is_postgres:
            async with Connection(self._db, self._db._backend) as conn:
                async with self._begin(conn, "BEGIN") as tx:
                    yield tx
            return
        if self._writer is None:
            raise DatabaseError("database is not connected")
        async with self._write_lock, self._begin(self._writer, "BEGIN IMMEDIATE") as tx:
            yield tx

    async def run_sync(
        self, fn: Callable[Concatenate[SyncTransaction, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(tx, ...)` as one write transaction of plain (non-async) statements.

        On SQLite the body runs on the event loop's thread (`LoopWriter`, loop_writer.py), and
        bodies queued within two turns of the loop commit together (group commit): one body's
        error undoes only its own statements (`sqlite_batch`), and every caller is answered
        after the shared COMMIT. A body must not act outside its transaction: in a batch it may
        run twice, only the committed run counts. On Postgres it runs in a greenlet on a pooled
        connection. Once started, a transaction runs to its end (COMMIT or ROLLBACK) even if
        the caller is cancelled meanwhile.
        """
        body = partial(fn, **kwargs) if kwargs else fn
        if self.is_postgres:
            # Straight from asyncpg's pool: `databases`' connection wrapper costs more client
            # time than the billable transactions' statements themselves.
            async with self._db._backend._pool.acquire() as raw:
                result: T = await _finish(greenlet_spawn(pg_transaction, raw, body, args))
                return result
        if self._loop_writer is None:
            raise DatabaseError("database is not connected")
        return await self._loop_writer.run(body, args)

    async def _offload(self, work: Work) -> Outcomes:
        """A batch on aiosqlite's writer thread (the loop writer's fallback; `_write_lock`
        held): there BEGIN IMMEDIATE may wait for another process's lock."""
        assert self._writer is not None
        raw = self._writer.raw_connection
        outcomes: Outcomes = await raw._execute(sqlite_batch, raw._conn, work)
        return outcomes

    @asynccontextmanager
    async def _begin(self, conn: Connection, begin: str) -> AsyncIterator[Transaction]:
        # BEGIN, COMMIT and ROLLBACK run to their end even if the task is cancelled meanwhile:
        # a statement cut off half way would hand the writer on with a transaction still open.
        try:
            await _finish(_run(conn, self.dialect, begin, None))
            yield Transaction(conn, self.dialect)
            await _finish(_run(conn, self.dialect, "COMMIT", None))
        except BaseException:
            # A failed ROLLBACK means the connection is already out of the transaction.
            with contextlib.suppress(Exception):
                await _finish(_run(conn, self.dialect, "ROLLBACK", None))
            raise

    async def ping(self) -> bool:
        return bool(await self.fetch_val("SELECT 1") == 1)


async def _keep_session(conn: Any) -> None:
    """A pooled connection needs no reset on release: nothing we run leaves session state
    (advisory locks are transaction-level, LISTEN has its own connection, no SET), and
    asyncpg's reset costs a round trip on every release, two per billable call."""


def _dollar_params(sql: str) -> str:
    """`?` placeholders -> Postgres `$1, $2, ...` (our SQL has no `?` inside literals)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


async def _finish(awaitable: Any) -> Any:
    """Await `awaitable` to its end even through cancellation; then return its result or
    raise its error, or the cancellation if one arrived meanwhile."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = cancelled or not task.done()
        except Exception:
            break
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation takes precedence
        raise asyncio.CancelledError
    return task.result()
