"""Numbered migrations per dialect (`migrations/<dialect>/NNNN_name.sql`), applied in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from toolcallstore.db.database import Database, Transaction
from toolcallstore.errors import DatabaseError
from toolcallstore.ids import now_us

MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant: every process that migrates the same Postgres database takes this lock first.
_PG_MIGRATION_LOCK = 7_463_021_001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def load_migrations(dialect: str) -> list[Migration]:
    found = []
    for path in sorted((MIGRATIONS / dialect).glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise DatabaseError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], _split(path.read_text())))
    versions = [m.version for m in found]
    # Increasing and unique; a gap is allowed (numbers are handed out to branches ahead of
    # their merge, so a branch may carry 0015 before 0009..0014 have landed).
    if not versions or versions[0] < 1 or versions != sorted(set(versions)):
        raise DatabaseError(f"{dialect} migrations are not numbered 1, 2, ...: {versions}")
    return found


def latest_version(dialect: str) -> int:
    return load_migrations(dialect)[-1].version


def _split(script: str) -> tuple[str, ...]:
    """Statements split at `;`, except inside `$$ ... $$` (a function's body)."""
    body = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    statements, current = [], []
    for i, part in enumerate(body.split("$$")):
        if i % 2:  # inside a dollar-quoted body
            current.append(f"$${part}$$")
            continue
        *done, rest = part.split(";")
        for piece in done:
            statements.append("".join([*current, piece]).strip())
            current = []
        current.append(rest)
    statements.append("".join(current).strip())
    return tuple(s for s in statements if s)


async def _ensure_table(tx: Transaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )


async def current_version(db: Database) -> int:
    """The highest applied migration, 0 for an empty database."""
    table = (
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
        if db.is_postgres
        else "SELECT count(*) FROM sqlite_master WHERE name = 'schema_migrations'"
    )
    if not await db.fetch_val(table):
        return 0
    return int(await db.fetch_val("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate(db: Database) -> list[int]:
    """Apply every pending migration in one transaction; returns the versions applied."""
    migrations = load_migrations(db.dialect)
    async with db.transaction() as tx:
        if db.is_postgres:
            await tx.execute("SELECT pg_advisory_xact_lock(:key)", {"key": _PG_MIGRATION_LOCK})
        await _ensure_table(tx)
        done = int(await tx.fetch_val("SELECT coalesce(max(version), 0) FROM schema_migrations"))
        newest = migrations[-1].version
        if done > newest:
            raise DatabaseError(
                f"database schema is at version {done}, newer than this code ({newest})"
            )
        applied = []
        for migration in (m for m in migrations if m.version > done):
            for statement in migration.statements:
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (:version, :name, :at)",
                {"version": migration.version, "name": migration.name, "at": now_us()},
            )
            applied.append(migration.version)
    return applied
