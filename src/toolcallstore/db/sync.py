"""Write transactions as plain calls (`Database.run_sync`): on SQLite a batch of bodies runs
on the writer's thread under one BEGIN IMMEDIATE ... COMMIT (group commit, a SAVEPOINT per
body); on Postgres one body runs in a greenlet over asyncpg."""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Row = dict[str, Any]
Values = Mapping[str, Any] | None
T = TypeVar("T")

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` placeholders -> Postgres `$n` (a repeated name reuses its number)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


def sqlite_rows(conn: sqlite3.Connection, sql: str, values: Mapping[str, Any]) -> list[Row]:
    cursor = conn.execute(sql, values)
    try:
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        cursor.close()


class SyncTransaction:
    """The same queries as `Transaction`, as plain calls: the body of `Database.run_sync`.

    `state` is shared by the bodies of one transaction, and rolled back with a failed body's
    savepoint; `before_commit` registers, once per key, work to do when all bodies have run
    (the audit chain appends the rows the bodies left in `state`). `execute_last` is for the
    statements that lock hot rows (the spend counters): on Postgres they go to the server in
    the same message as the COMMIT, so their locks are held for no round trip.
    """

    def __init__(
        self,
        run: Callable[[str, Values], list[Row]],
        run_many: Callable[[str, Sequence[Sequence[Any]]], None],
        dialect: str,
        execute: Callable[[str, Values], Any] | None = None,
        *,
        retried: bool = False,
    ) -> None:
        self._run = run
        self._execute = execute or run
        self._run_many = run_many
        self.dialect = dialect
        self.state: dict[str, Any] = {}
        self._hooks: dict[str, Callable[[SyncTransaction], None]] = {}
        self.last: list[tuple[str, Values]] = []
        # True when a statement sent with the COMMIT refused (CommitRefused) and the body runs
        # again: it must then take its locks and decide inline.
        self.retried = retried

    def fetch_one(self, sql: str, values: Values = None) -> Row | None:
        rows = self._run(sql, values)
        return rows[0] if rows else None

    def fetch_all(self, sql: str, values: Values = None) -> list[Row]:
        return self._run(sql, values)

    def fetch_val(self, sql: str, values: Values = None) -> Any:
        rows = self._run(sql, values)
        return next(iter(rows[0].values())) if rows else None

    def execute(self, sql: str, values: Values = None) -> None:
        self._execute(sql, values)

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows:
            self._run_many(insert_sql(self.dialect, table, columns), rows)

    def execute_last(self, sql: str, values: Values = None) -> None:
        """Run `sql` after everything else, just before COMMIT (with it, on Postgres)."""
        if self.dialect == "postgresql":
            self.last.append((sql, values))
        else:  # one writer holds the whole database until COMMIT anyway
            self._execute(sql, values)

    def before_commit(self, key: str, hook: Callable[[SyncTransaction], None]) -> None:
        self._hooks.setdefault(key, hook)

    def run_hooks(self) -> None:
        for hook in self._hooks.values():
            hook(self)

    def mark(self) -> Mark:
        return dict(self.state), dict(self._hooks)

    def undo_to(self, mark: Mark) -> None:
        """Forget what a failed body left: its cached state and its COMMIT work."""
        self.state, self._hooks = dict(mark[0]), dict(mark[1])


# What a transaction's bodies have left so far: `state` and the hooks to run at COMMIT.
Mark = tuple[dict[str, Any], dict[str, Callable[[SyncTransaction], None]]]


def insert_sql(dialect: str, table: str, columns: Sequence[str]) -> str:
    if dialect == "postgresql":
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    else:
        marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


@dataclass(eq=False)
class Pending:
    body: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


Work = list[tuple[Callable[..., Any], tuple[Any, ...]]]


class _BodyFailed(Exception):
    """A body raised in a batch run without savepoints: run the batch again with them."""


def sqlite_batch(
    conn: sqlite3.Connection, work: Work, *, begun: bool = False
) -> list[tuple[bool, Any]]:
    """BEGIN IMMEDIATE (unless `begun`), the bodies, COMMIT: on whichever thread owns `conn`.

    Returns (True, result) or (False, exception) per body; a failing COMMIT fails them all.
    A batch of one body needs no savepoint: its failure rolls the whole transaction back.
    Larger batches first run without a savepoint per body (they cost a quarter of a billable
    body); if one raises, the batch is rolled back to its start and runs again with a
    SAVEPOINT per body, so that the failure undoes only its own statements, all inside the
    same transaction (the write lock is never let go in between). Bodies therefore must not
    act outside the transaction: they may run twice, only the committed run counts.
    """
    if not begun:
        conn.execute("BEGIN IMMEDIATE")
    try:
        if len(work) == 1:
            body, args = work[0]
            tx = _sqlite_transaction(conn)
            try:
                result = body(tx, *args)
            except Exception as exc:
                conn.execute("ROLLBACK")
                return [(False, exc)]
            tx.run_hooks()
            outcomes = [(True, result)]
        else:
            conn.execute("SAVEPOINT batch")
            try:
                outcomes = _run_bodies(conn, work, isolate=False)
            except _BodyFailed:
                conn.execute("ROLLBACK TO batch")
                outcomes = _run_bodies(conn, work, isolate=True)
            conn.execute("RELEASE batch")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return outcomes


def _sqlite_transaction(conn: sqlite3.Connection) -> SyncTransaction:
    return SyncTransaction(
        lambda sql, values: sqlite_rows(conn, sql, values or {}),
        lambda sql, rows: conn.executemany(sql, rows).close(),
        "sqlite",
        # No result wanted: no cursor description, no fetch, no row dicts.
        execute=lambda sql, values: conn.execute(sql, values or {}).close(),
    )


def _run_bodies(conn: sqlite3.Connection, work: Work, *, isolate: bool) -> list[tuple[bool, Any]]:
    tx = _sqlite_transaction(conn)
    outcomes: list[tuple[bool, Any]] = []
    for body, args in work:
        if isolate:
            conn.execute("SAVEPOINT body")
        mark = tx.mark()
        try:
            outcomes.append((True, body(tx, *args)))
        except Exception as exc:
            if not isolate:
                raise _BodyFailed from exc
            conn.execute("ROLLBACK TO body")
            tx.undo_to(mark)  # what the failed body cached is rolled back with it
            outcomes.append((False, exc))
        if isolate:
            conn.execute("RELEASE body")
    tx.run_hooks()
    return outcomes
