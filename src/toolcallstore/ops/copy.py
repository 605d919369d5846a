"""`toolcallstore db copy --to postgresql://...`: move a stopped SQLite store to Postgres.

The source is read in one transaction that holds SQLite's write lock, so nothing can be
written to it meanwhile (a server still running would have its writes refused, not lost from
the copy). The target must be an empty database: `migrate` creates the Postgres schema there,
then every table the SQLite store has is copied in one Postgres transaction, parents before
children (foreign keys), in batches through COPY, ids and timestamps as they are; serial
columns' sequences are moved past the copied ids. Then the target is verified against the
source's manifest (stores.py): row counts and contents per table, the audit chain, the spend
counters against the ledger, open holds and live jobs.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import asyncpg

from toolcallstore.db import Database
from toolcallstore.db.migrate import MIGRATIONS, latest_version, migrate
from toolcallstore.errors import ConfigError
from toolcallstore.ops.stores import (
    LIVE_JOBS,
    OPEN_HOLDS,
    OWN_TABLES,
    Manifest,
    Progress,
    TableSum,
    Verdict,
    is_postgres_url,
    pg_dsn,
    pg_tables,
    quoted,
    sqlite_batches,
    sqlite_file,
    sqlite_tables,
    sqlite_version,
    verify_store,
)

LOCK_WAIT_MS = 5000


def _coercer(data_type: str) -> Callable[[Any], Any]:
    """SQLite's value as the Postgres column's type wants it (asyncpg's COPY is strict)."""
    if data_type == "bytea":
        return lambda v: None if v is None else bytes(v)
    if data_type == "boolean":
        return lambda v: None if v is None else bool(v)
    if data_type in ("smallint", "integer", "bigint"):
        return lambda v: None if v is None else int(v)
    if data_type == "numeric":
        return lambda v: None if v is None else Decimal(str(v))
    if data_type in ("real", "double precision"):
        return lambda v: None if v is None else float(v)
    if data_type in ("text", "character varying", "json", "jsonb"):
        return lambda v: v if v is None or isinstance(v, str) else str(v)
    return lambda v: v


async def _fk_order(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    """`tables` with every table after those its foreign keys point to."""
    edges = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE c.contype = 'f' AND n.nspname = current_schema()"
    )
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for e in edges:
        child, parent = e["child"].strip('"'), e["parent"].strip('"')
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:
        ready = [t for t in tables if t in parents and not parents[t] - set(ordered)]
        if not ready:
            raise ConfigError(f"foreign keys form a cycle among {sorted(parents)}")
        for t in ready:
            ordered.append(t)
            del parents[t]
    return ordered


async def _check_empty(conn: asyncpg.Connection, url: str) -> None:
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    )
    if tables:
        names = ", ".join(r["tablename"] for r in tables[:8])
        more = f" and {len(tables) - 8} more" if len(tables) > 8 else ""
        raise ConfigError(
            f"the target database is not empty ({len(tables)} tables: {names}{more}); "
            "copy only into a new, empty database (createdb toolcallstore)"
        )


def _open_source(url: str) -> sqlite3.Connection:
    path = sqlite_file(url)
    if not path.exists():
        raise ConfigError(f"no SQLite store at {path}")
    conn = sqlite3.connect(path, timeout=LOCK_WAIT_MS / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")  # no writer can get in until the copy is done
    except sqlite3.OperationalError as exc:
        conn.close()
        raise ConfigError(
            f"the SQLite store is being written to ({exc}): stop the server first "
            "(pm2 stop toolcallstore), then copy"
        ) from None
    return conn


async def copy_store(source_url: str, target_url: str, *, quiet: bool = False) -> Verdict:
    """Copy the SQLite store at `source_url` into the empty Postgres database at `target_url`,
    then verify the target; returns the verification's verdict."""
    if is_postgres_url(source_url) or not source_url.startswith("sqlite"):
        raise ConfigError("db copy reads an SQLite store: set --database-url sqlite:///...")
    if not is_postgres_url(target_url):
        raise ConfigError("db copy --to takes a postgresql://user@host:port/database URL")
    source = _open_source(source_url)
    try:
        version = sqlite_version(source)
        if version != latest_version("sqlite"):
            raise ConfigError(
                f"the SQLite store's schema is at version {version}, this code's at "
                f"{latest_version('sqlite')}: run `toolcallstore migrate` on it first"
            )
        conn = await asyncpg.connect(pg_dsn(target_url))
        try:
            await _check_empty(conn, target_url)
        finally:
            await conn.close()
        target = Database(target_url, readers=1)
        await target.connect()
        try:
            await migrate(target)
        finally:
            await target.disconnect()
        try:
            manifest = await _copy_rows(source, target_url, quiet=quiet)
        except BaseException:
            # The rows were rolled back with their transaction; the schema goes too, so the
            # database is empty again and the copy can simply be run once more.
            await _drop_schema(target_url)
            raise
    finally:
        source.execute("ROLLBACK")
        source.close()
    return await verify_store(target_url, manifest)


async def _copy_rows(source: sqlite3.Connection, target_url: str, *, quiet: bool) -> Manifest:
    tables = {t: c for t, c in sqlite_tables(source).items() if t not in OWN_TABLES}
    manifest = Manifest("sqlite", sqlite_version(source))
    conn = await asyncpg.connect(pg_dsn(target_url))
    try:
        types = await pg_tables(conn)
        for table, columns in tables.items():
            if table not in types:
                raise ConfigError(f"table {table} has no counterpart in the Postgres schema")
            lost = [c for c in columns if c not in types[table]]
            if lost:
                raise ConfigError(f"{table}.{', '.join(lost)} have no Postgres counterpart")
        order = await _fk_order(conn, list(tables))
        counts = {t: source.execute(f"SELECT count(*) FROM {quoted(t)}").fetchone()[0]
                  for t in order}  # fmt: skip
        progress = None if quiet else Progress(sum(counts.values()))
        async with conn.transaction():
            # Rows the migrations seeded (the audit chain's head) are replaced by the source's.
            for table in reversed(order):
                await conn.execute(f"DELETE FROM {quoted(table)}")
            for table in order:
                columns = tables[table]
                coerce = [_coercer(types[table][c]) for c in columns]
                summed = manifest.tables[table] = TableSum(columns)
                for batch in sqlite_batches(source, table, columns):
                    summed.add(batch)
                    records = [tuple(f(v) for f, v in zip(coerce, row, strict=True))
                               for row in batch]  # fmt: skip
                    await conn.copy_records_to_table(table, records=records, columns=columns)
                    if progress:
                        progress.advance(len(batch), table)
            await _move_sequences(conn, order)
        if progress:
            progress.finish()
    finally:
        await conn.close()
    holds = source.execute(OPEN_HOLDS).fetchone()
    manifest.open_holds, manifest.open_held_micros = int(holds[0]), int(holds[1])
    manifest.live_jobs = int(source.execute(LIVE_JOBS).fetchone()[0])
    return manifest


async def _drop_schema(url: str) -> None:
    """Drop what the migrations created in a database that was empty before the copy."""
    conn = await asyncpg.connect(pg_dsn(url))
    try:
        async with conn.transaction():
            for table in await pg_tables(conn):
                await conn.execute(f"DROP TABLE IF EXISTS {quoted(table)} CASCADE")
            for name in sorted(_created_functions()):
                await conn.execute(f"DROP FUNCTION IF EXISTS {quoted(name)} CASCADE")
    finally:
        await conn.close()


def _created_functions() -> set[str]:
    found: set[str] = set()
    for path in (MIGRATIONS / "postgresql").glob("*.sql"):
        found.update(re.findall(r"CREATE (?:OR REPLACE )?FUNCTION (\w+)", path.read_text()))
    return found


async def _move_sequences(conn: asyncpg.Connection, tables: list[str]) -> None:
    """Every serial or identity column's sequence past the largest copied value."""
    rows = await conn.fetch(
        "SELECT table_name, column_name,"
        " pg_get_serial_sequence(quote_ident(table_name), column_name) AS seq"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
    )
    for r in rows:
        if r["table_name"] not in tables or r["seq"] is None:
            continue
        top = await conn.fetchval(
            f"SELECT max({quoted(r['column_name'])}) FROM {quoted(r['table_name'])}"
        )
        if top is None:
            await conn.execute("SELECT setval($1::regclass, 1, false)", r["seq"])
        else:
            await conn.execute("SELECT setval($1::regclass, $2)", r["seq"], int(top))
