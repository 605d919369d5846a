"""`Database.run_sync` on Postgres: one body, one transaction, on one pooled asyncpg
connection, each statement awaited from the body's greenlet (`await_only`).

A billable transaction is mostly inserts and updates whose results nobody reads, and each
statement sent on its own costs a round trip and most of a millisecond of client and server
time. So `execute` and `insert_many` only queue their statement, with its values inlined as
literals; the queue goes to the server in one simple-protocol message when the body next reads
(`fetch_*`), or with the COMMIT. Statements keep their order, and a read sees every write
queued before it. `execute_last` statements (the hot counter rows) go last, in the COMMIT's own
message. A statement whose values cannot be inlined safely runs at once with parameters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.util import await_only

from toolcallstore.db.sync import Row, SyncTransaction, Values, numbered

T = TypeVar("T")

# A statement sent with the COMMIT raises this SQLSTATE (from `toolcallstore_refuse`, migration
# 0006) when its check no longer holds under the row lock: the transaction rolls back and its
# body runs once more with `retried` set, to decide (and explain) inline.
COMMIT_REFUSED_SQLSTATE = "TC409"
_PG_ATTEMPTS = 3
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


class _Statements:
    """One connection's statements for one transaction: run now, or queued until needed."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.queued: list[str] = []

    def flush(self) -> None:
        if self.queued:
            message = ";\n".join(self.queued)
            self.queued.clear()
            await_only(self.raw.execute(message))

    def fetch(self, sql: str, values: Values) -> list[Row]:
        self.flush()
        pg_sql, names = numbered(sql)
        params = values or {}
        return [dict(r) for r in await_only(self.raw.fetch(pg_sql, *(params[n] for n in names)))]

    def execute(self, sql: str, values: Values) -> None:
        text = inline(sql, values)
        if text is None:
            self.fetch(sql, values)
        else:
            self.queued.append(text)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.flush()
        await_only(self.raw.executemany(sql, rows))

    def queue_insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> bool:
        """Queue a multi-row INSERT; False if a value cannot be inlined."""
        tuples = []
        for row in rows:
            literals = [literal(value) for value in row]
            if not all(isinstance(text, str) for text in literals):
                return False
            tuples.append("(" + ", ".join(str(text) for text in literals) + ")")
        self.queued.append(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join(tuples)}")
        return True


class PgTransaction(SyncTransaction):
    """SyncTransaction whose writes wait for the next read or the COMMIT (module docstring)."""

    def __init__(self, statements: _Statements, *, retried: bool) -> None:
        super().__init__(statements.fetch, statements.execute_many, "postgresql",
                         execute=statements.execute, retried=retried)  # fmt: skip
        self._statements = statements

    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if rows and not self._statements.queue_insert(table, columns, rows):
            super().insert_many(table, columns, rows)

    def commit_message(self) -> str:
        last = []
        for sql, values in self.last:
            text = inline(sql, values)
            if text is None:
                raise TypeError("execute_last takes only values that can be inlined")
            last.append(text)
        return ";\n".join([*self._statements.queued, *last, "COMMIT"])


def pg_transaction(raw: Any, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """Runs in a greenlet: BEGIN, the body, then what it queued and COMMIT in one message."""
    for attempt in range(_PG_ATTEMPTS):
        await_only(raw.execute("BEGIN"))
        tx = PgTransaction(_Statements(raw), retried=attempt > 0)
        try:
            result = fn(tx, *args)
            tx.run_hooks()
            message = tx.commit_message()
        except BaseException:
            await_only(raw.execute("ROLLBACK"))
            raise
        try:
            await_only(raw.execute(message))
        except BaseException as exc:
            await_only(raw.execute("ROLLBACK"))
            if getattr(exc, "sqlstate", None) != COMMIT_REFUSED_SQLSTATE:
                raise
            continue
        return result
    raise RuntimeError("a statement sent with COMMIT kept refusing on an inline retry")


def inline(sql: str, values: Values) -> str | None:
    """`sql` with its `:name` placeholders replaced by literals, for the simple protocol; None
    if a value has a type that is not inlined (it then runs with parameters)."""
    parts, names = _split(sql)
    params = values or {}
    out = [parts[0]]
    for name, part in zip(names, parts[1:], strict=True):
        text = literal(params[name])
        if text is None:
            return None
        out.append(text)
        out.append(part)
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _split(sql: str) -> tuple[list[str], list[str]]:
    """The text around each `:name` placeholder, and the names in order."""
    pieces = _NAMED.split(sql)
    return pieces[0::2], pieces[1::2]


def literal(value: Any) -> str | None:
    """A value as SQL text: integers and NULL as such, text dollar-quoted under a tag that does
    not occur in it (no escaping, so no server setting can change its meaning); None for any
    other type."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if "\x00" in value:
            return None  # Postgres text cannot hold it: let the driver refuse it
        tag, n = "$t$", 0
        while tag in value:
            tag, n = f"$t{n}$", n + 1
        return f"{tag}{value}{tag}"
    return None
