"""`toolcallstore backup DEST` and `toolcallstore restore SRC`.

SQLite: SQLite's online backup API copies the live database page by page in one read
transaction, so the snapshot is consistent while the server keeps writing (WAL lets writers
carry on meanwhile). Postgres: `pg_dump -Fc` of a snapshot exported from a repeatable-read
transaction, in which the manifest is read too, so both describe the same instant.

Beside DEST goes DEST.manifest.json (stores.py): `restore` checks the restored store against
it, and checks its audit chain and spend counters, as `db copy` does. A restore goes only into
an empty place: a file that does not exist yet, or an empty Postgres database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import asyncpg

from toolcallstore.errors import ConfigError
from toolcallstore.ops.copy import copy_store
from toolcallstore.ops.stores import (
    Manifest,
    Verdict,
    is_postgres_url,
    pg_dsn,
    pg_manifest,
    sqlite_file,
    sqlite_manifest,
    verify_store,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_MAGIC = b"PGDMP"


def manifest_path(backup: Path) -> Path:
    return backup.with_name(backup.name + ".manifest.json")


def _fresh(dest: Path) -> None:
    if dest.exists():
        raise ConfigError(f"{dest} already exists: back up to a new file")
    dest.parent.mkdir(parents=True, exist_ok=True)


async def backup(url: str, dest: Path) -> Manifest:
    """Snapshot the store at `url` into `dest` (mode 0600) and its manifest beside it."""
    _fresh(dest)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        if is_postgres_url(url):
            manifest = await _pg_backup(url, partial)
        else:
            manifest = await asyncio.to_thread(_sqlite_backup, url, partial)
        manifest.write(manifest_path(dest))
        os.chmod(manifest_path(dest), 0o600)
        partial.rename(dest)  # complete, or not there at all
    finally:
        partial.unlink(missing_ok=True)
    return manifest


def _sqlite_backup(url: str, dest: Path) -> Manifest:
    path = sqlite_file(url)
    if not path.exists():
        raise ConfigError(f"no SQLite store at {path}")
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    target = sqlite3.connect(dest)
    try:
        # pages=-1: the whole database in one step, one read transaction: a consistent
        # snapshot however busy the writer (in steps, each write elsewhere restarts it).
        source.backup(target, pages=-1)
    finally:
        source.close()
    try:
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        target.execute("BEGIN")
        manifest = sqlite_manifest(target)
        target.execute("COMMIT")
    finally:
        target.close()
    return manifest


async def _pg_backup(url: str, dest: Path) -> Manifest:
    if shutil.which("pg_dump") is None:
        raise ConfigError("pg_dump is not installed (apt-get install postgresql-client)")
    conn = await asyncpg.connect(pg_dsn(url))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            dump = await asyncio.create_subprocess_exec(
                "pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                f"--snapshot={snapshot}", f"--file={dest}", f"--dbname={pg_dsn(url)}",
                stderr=subprocess.PIPE,
            )  # fmt: skip
            manifest = await pg_manifest(conn)
            _, err = await dump.communicate()
            if dump.returncode != 0:
                raise ConfigError(f"pg_dump failed: {err.decode(errors='replace').strip()}")
    finally:
        await conn.close()
    os.chmod(dest, 0o600)
    return manifest


async def restore(src: Path, url: str, *, quiet: bool = False) -> Verdict:
    """Restore the backup `src` into the empty place `url`, then verify it against the
    backup's manifest."""
    if not src.is_file():
        raise ConfigError(f"no backup at {src}")
    expected = Manifest.read(manifest_path(src))
    head = src.read_bytes()[:16]
    if head.startswith(SQLITE_MAGIC):
        if is_postgres_url(url):  # an SQLite backup into Postgres: that is a copy
            return await copy_store(f"sqlite:///{src.resolve()}", url, quiet=quiet)
        await asyncio.to_thread(_sqlite_restore, src, sqlite_file(url))
    elif head.startswith(PG_DUMP_MAGIC):
        if not is_postgres_url(url):
            raise ConfigError("a pg_dump backup restores into Postgres: --to postgresql://...")
        await _pg_restore(src, url)
    else:
        raise ConfigError(f"{src} is neither an SQLite backup nor a pg_dump archive")
    return await verify_store(url, expected)


def _sqlite_restore(src: Path, dest: Path) -> None:
    if dest.exists() and dest.stat().st_size > 0:
        raise ConfigError(f"{dest} already exists: restore into a new path, then point "
                          "TOOLCALLSTORE_DATABASE_URL at it")  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT, 0o600))
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        source.backup(target, pages=-1)
        target.execute("PRAGMA journal_mode=WAL")
    finally:
        source.close()
        target.close()


async def _pg_restore(src: Path, url: str) -> None:
    if shutil.which("pg_restore") is None:
        raise ConfigError("pg_restore is not installed (apt-get install postgresql-client)")
    conn = await asyncpg.connect(pg_dsn(url))
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await conn.close()
    if count:
        raise ConfigError(f"the target database is not empty ({count} tables): restore only "
                          "into a new, empty database")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
        f"--dbname={pg_dsn(url)}", str(src), stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise ConfigError(f"pg_restore failed: {err.decode(errors='replace').strip()}")
