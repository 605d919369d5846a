"""What `db copy`, `db verify`, `backup` and `restore` know about a store, whatever its tables.

Tables are never listed here: they are read from the store itself (SQLite's schema, Postgres's
catalog), so a table added by a later migration is copied and verified like the others. A
store is summed up in a *manifest*: per table its columns, row count and an order-independent
digest of its rows (a sum of row hashes, so SQLite's and Postgres's orders need not agree),
plus the money and work that must survive a move: open holds and live jobs. `verify` checks a
store against a manifest, its audit chain, and its spend counters against its ledger.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from toolcallstore.audit import verify_chain
from toolcallstore.db import Database
from toolcallstore.errors import ConfigError
from toolcallstore.settings import sqlite_path

MANIFEST_FORMAT = 1
BATCH_ROWS = 5000
# Tables a store keeps about itself: each store has its own, made by `migrate`.
OWN_TABLES = frozenset({"schema_migrations"})
_MOD = 1 << 256

# Every spend counter against the ledger and the open holds, over every period and mode
# (controls/reconciliation.py checks one period the same way).
COUNTERS_VS_LEDGER = """
SELECT c.owner_id, c.period, c.livemode, c.spent_micros, c.held_micros,
    (SELECT COALESCE(SUM(l.amount_micros), 0) FROM ledger_entries l
     WHERE l.period = c.period AND l.livemode = c.livemode AND l.kind = 'charge'
       AND (l.tenant_id = c.owner_id OR l.project_id = c.owner_id)) AS charged,
    (SELECT COALESCE(SUM(h.amount_micros), 0) FROM holds h
     WHERE h.period = c.period AND h.livemode = c.livemode AND h.state = 'open'
       AND (h.tenant_id = c.owner_id OR h.project_id = c.owner_id)) AS open_held
FROM spend_counters c ORDER BY c.owner_id, c.period, c.livemode
"""
OPEN_HOLDS = "SELECT count(*) AS n, COALESCE(SUM(amount_micros), 0) AS micros FROM holds" \
    " WHERE state = 'open'"  # fmt: skip
LIVE_JOBS = "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql:", "postgres:", "postgresql+"))


def pg_dsn(url: str) -> str:
    """A libpq/asyncpg DSN from a store URL (postgres://, postgresql+asyncpg://, ...)."""
    return "postgresql" + url[url.index(":") :]


def sqlite_file(url: str) -> Path:
    path = sqlite_path(url)
    if path is None:
        raise ConfigError(f"{url} is not an SQLite file URL (sqlite:///path/to/store.db)")
    return path


# -- rows, in batches, from either dialect ---------------------------------------------------


def normal(value: Any) -> Any:
    """A value as both dialects give it back: blobs as hex, booleans as 0/1."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "b:" + bytes(value).hex()
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    return str(value)


def row_hash(values: Sequence[Any]) -> int:
    digest = hashlib.sha256(orjson.dumps([normal(v) for v in values])).digest()
    return int.from_bytes(digest, "big")


@dataclass
class TableSum:
    columns: list[str]
    rows: int = 0
    total: int = 0

    def add(self, batch: Iterable[Sequence[Any]]) -> None:
        for values in batch:
            self.rows += 1
            self.total = (self.total + row_hash(values)) % _MOD

    def as_json(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "digest": f"{self.total:064x}"}


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Table name -> columns, from the SQLite schema (in creation order)."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY rowid"
        )
    ]
    return {n: [c[1] for c in conn.execute(f"PRAGMA table_info({quoted(n)})")] for n in names}


def sqlite_order(conn: sqlite3.Connection, table: str) -> str:
    pk = sorted((c[5], c[1]) for c in conn.execute(f"PRAGMA table_info({quoted(table)})") if c[5])
    return " ORDER BY " + ", ".join(quoted(c) for _, c in pk) if pk else ""


def sqlite_batches(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], size: int = BATCH_ROWS
) -> Iterable[list[tuple[Any, ...]]]:
    cursor = conn.execute(
        f"SELECT {', '.join(quoted(c) for c in columns)} FROM {quoted(table)}"
        + sqlite_order(conn, table)
    )
    while batch := cursor.fetchmany(size):
        yield batch


async def pg_tables(conn: asyncpg.Connection) -> dict[str, dict[str, str]]:
    """Table name -> {column: data type}, from the Postgres catalog of the current schema."""
    rows = await conn.fetch(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t ON t.table_schema = c.table_schema"
        "  AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'"
        " WHERE c.table_schema = current_schema() ORDER BY c.table_name, c.ordinal_position"
    )
    tables: dict[str, dict[str, str]] = {}
    for r in rows:
        tables.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    return tables


async def pg_batches(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], size: int = BATCH_ROWS
) -> AsyncIterator[list[asyncpg.Record]]:
    """Rows through a server-side cursor; the caller holds a transaction open."""
    sql = f"SELECT {', '.join(quoted(c) for c in columns)} FROM {quoted(table)}"
    cursor = await conn.cursor(sql)
    while batch := await cursor.fetch(size):
        yield batch


# -- manifests -------------------------------------------------------------------------------


@dataclass
class Manifest:
    dialect: str
    schema_version: int
    tables: dict[str, TableSum] = field(default_factory=dict)
    open_holds: int = 0
    open_held_micros: int = 0
    live_jobs: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "dialect": self.dialect,
            "schema_version": self.schema_version,
            "tables": {name: t.as_json() for name, t in sorted(self.tables.items())},
            "open_holds": self.open_holds,
            "open_held_micros": self.open_held_micros,
            "live_jobs": self.live_jobs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ConfigError(f"unknown manifest format {data.get('format')!r}")
        manifest = cls(data["dialect"], int(data["schema_version"]))
        for name, t in data["tables"].items():
            manifest.tables[name] = TableSum(list(t["columns"]), int(t["rows"]),
                                             int(t["digest"], 16))  # fmt: skip
        manifest.open_holds = int(data["open_holds"])
        manifest.open_held_micros = int(data["open_held_micros"])
        manifest.live_jobs = int(data["live_jobs"])
        return manifest

    def write(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.as_json(), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            raise ConfigError(f"no manifest at {path}") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is not a readable manifest: {exc}") from None


def sqlite_version(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
                   .fetchone()[0])  # fmt: skip
    except sqlite3.OperationalError:
        return 0


def sqlite_manifest(conn: sqlite3.Connection, progress: Progress | None = None) -> Manifest:
    """The manifest of an SQLite store, read in the caller's (read) transaction."""
    manifest = Manifest("sqlite", sqlite_version(conn))
    for table, columns in sqlite_tables(conn).items():
        if table in OWN_TABLES:
            continue
        summed = manifest.tables[table] = TableSum(columns)
        for batch in sqlite_batches(conn, table, columns):
            summed.add(batch)
            if progress:
                progress.advance(len(batch), table)
    holds = conn.execute(OPEN_HOLDS).fetchone()
    manifest.open_holds, manifest.open_held_micros = int(holds[0]), int(holds[1])
    manifest.live_jobs = int(conn.execute(LIVE_JOBS).fetchone()[0])
    return manifest


async def pg_manifest(
    conn: asyncpg.Connection, columns_of: dict[str, list[str]] | None = None
) -> Manifest:
    """The manifest of a Postgres store, read in the caller's transaction; with `columns_of`,
    a table's digest covers those of its columns (a copy's target has some its source lacks)."""
    version = await conn.fetchval(
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0"
        " ELSE (SELECT coalesce(max(version), 0) FROM schema_migrations) END"
    )
    manifest = Manifest("postgresql", int(version))
    for table, types in sorted((await pg_tables(conn)).items()):
        if table in OWN_TABLES:
            continue
        columns = (columns_of or {}).get(table) or list(types)
        if any(c not in types for c in columns):  # a column lost: reported as differing rows
            count = await conn.fetchval(f"SELECT count(*) FROM {quoted(table)}")
            manifest.tables[table] = TableSum(columns, int(count), -1)
            continue
        summed = manifest.tables[table] = TableSum(columns)
        async for batch in pg_batches(conn, table, columns):
            summed.add(batch)
    holds = await conn.fetchrow(OPEN_HOLDS)
    manifest.open_holds, manifest.open_held_micros = int(holds["n"]), int(holds["micros"])
    manifest.live_jobs = int(await conn.fetchval(LIVE_JOBS))
    return manifest


# -- verification ----------------------------------------------------------------------------


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def print(self, out: Any = None) -> None:
        out = out or sys.stdout
        for note in self.notes:
            print(f"  ok    {note}", file=out)
        for problem in self.problems:
            print(f"  FAIL  {problem}", file=out)
        print("verified: the store matches" if self.ok else
              f"verification FAILED: {len(self.problems)} problem(s)", file=out)  # fmt: skip


async def store_manifest(url: str, columns_of: dict[str, list[str]] | None = None) -> Manifest:
    """The manifest of the store at `url` (read in one snapshot); with `columns_of`, each
    table's digest covers those columns (a copy's target has columns its source lacks)."""
    if is_postgres_url(url):
        conn = await asyncpg.connect(pg_dsn(url))
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await pg_manifest(conn, columns_of)
        finally:
            await conn.close()
    path = sqlite_file(url)
    if not path.exists():
        raise ConfigError(f"no SQLite store at {path}")
    sconn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sconn.execute("BEGIN")
        manifest = sqlite_manifest(sconn)
        sconn.execute("COMMIT")
        return manifest
    finally:
        sconn.close()


async def verify_store(url: str, expected: Manifest | None = None) -> Verdict:
    """The store's own consistency (audit chain, spend counters against the ledger and open
    holds) and, given `expected`, that it holds what the manifest says, table by table."""
    verdict = Verdict()
    columns_of = {t: s.columns for t, s in expected.tables.items()} if expected else None
    found = await store_manifest(url, columns_of)
    if expected is not None:
        compare(expected, found, verdict)
    db = Database(url, readers=1)
    await db.connect()
    try:
        chain = await verify_chain(db)
        if chain.ok:
            tail = f" ({chain.unsealed} newer rows not sealed yet)" if chain.unsealed else ""
            verdict.notes.append(f"audit chain intact: {chain.rows_checked} rows{tail}")
        else:
            verdict.problems.append(f"audit chain broken at seq {chain.broken_at}: {chain.problem}")
        off = 0
        for c in await db.fetch_all(COUNTERS_VS_LEDGER):
            if int(c["spent_micros"]) != int(c["charged"]):
                off += 1
                verdict.problems.append(
                    f"spend counter {c['owner_id']} {c['period']} says {c['spent_micros']} "
                    f"micros spent, the ledger charged {c['charged']}"
                )
            if int(c["held_micros"]) != int(c["open_held"]):
                off += 1
                verdict.problems.append(
                    f"spend counter {c['owner_id']} {c['period']} says {c['held_micros']} "
                    f"micros held, open holds add up to {c['open_held']}"
                )
        if not off:
            verdict.notes.append("spend counters equal the ledger and the open holds")
    finally:
        await db.disconnect()
    return verdict


def compare(expected: Manifest, found: Manifest, verdict: Verdict) -> None:
    missing = sorted(set(expected.tables) - set(found.tables))
    for table in missing:
        verdict.problems.append(f"table {table} is missing")
    rows = 0
    for table, want in sorted(expected.tables.items()):
        got = found.tables.get(table)
        if got is None:
            continue
        rows += got.rows
        if got.rows != want.rows:
            verdict.problems.append(f"table {table} has {got.rows} rows, expected {want.rows}")
        elif got.total != want.total:
            verdict.problems.append(f"table {table}: its rows' contents differ from the source")
    if not any(p.startswith("table ") for p in verdict.problems):
        verdict.notes.append(f"{len(expected.tables)} tables, {rows} rows, contents identical")
    if (found.open_holds, found.open_held_micros) != (
        expected.open_holds,
        expected.open_held_micros,
    ):
        verdict.problems.append(
            f"{found.open_holds} open holds of {found.open_held_micros} micros, expected "
            f"{expected.open_holds} of {expected.open_held_micros}"
        )
    else:
        verdict.notes.append(f"{found.open_holds} open holds carried over")
    if found.live_jobs != expected.live_jobs:
        verdict.problems.append(
            f"{found.live_jobs} queued or running jobs, expected {expected.live_jobs}"
        )
    else:
        verdict.notes.append(f"{found.live_jobs} queued or running jobs carried over")


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr: `[#####.....]  52%  1,204/2,310 rows  ledger`."""

    WIDTH = 30

    def __init__(self, total: int, *, out: Any = None, label: str = "rows") -> None:
        self.total, self.done, self.label = max(total, 1), 0, label
        self.out = out or sys.stderr
        self._last = -1

    def advance(self, n: int, what: str = "") -> None:
        self.done += n
        percent = min(100, self.done * 100 // self.total)
        if percent == self._last and self.done < self.total:
            return
        self._last = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.out.write(
            f"\r[{bar}] {percent:3d}%  {self.done:,}/{self.total:,} {self.label}  {what:<24}"
        )
        self.out.flush()

    def finish(self) -> None:
        self.out.write("\n")
        self.out.flush()
