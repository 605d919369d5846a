import asyncio
from pathlib import Path

import pytest

from toolcallstore.db import Database, SyncTransaction
from toolcallstore.db.migrate import current_version, latest_version, load_migrations, migrate


async def test_migrations_record_the_schema_version_and_are_idempotent(db: Database) -> None:
    assert await current_version(db) == latest_version(db.dialect) >= 1
    assert await migrate(db) == []
    rows = await db.fetch_all("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, latest_version(db.dialect) + 1))


def test_both_dialects_have_the_same_migrations() -> None:
    sqlite = [(m.version, m.name) for m in load_migrations("sqlite")]
    postgres = [(m.version, m.name) for m in load_migrations("postgresql")]
    assert sqlite == postgres


async def test_concurrent_read_modify_write_transactions_lose_no_update(db: Database) -> None:
    # Each transaction reads then writes: with a deferred BEGIN on SQLite this is where
    # SQLITE_BUSY or lost updates appear; BEGIN IMMEDIATE / row locks serialise them.
    await db.fetch_one("SELECT 1")
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t', '0', 0)")

    async def increment() -> None:
        async with db.transaction() as tx:
            lock = " FOR UPDATE" if db.is_postgres else ""
            value = await tx.fetch_val(f"SELECT name FROM tenants WHERE id = 't'{lock}")
            await asyncio.sleep(0)
            await tx.execute(
                "UPDATE tenants SET name = :n WHERE id = 't'", {"n": str(int(value) + 1)}
            )

    await asyncio.gather(*(increment() for _ in range(100)))
    assert await db.fetch_val("SELECT name FROM tenants WHERE id = 't'") == "100"


async def test_a_failed_transaction_leaves_nothing_behind(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('a', 'a', 0)")
            raise RuntimeError("boom")
    assert await db.fetch_val("SELECT count(*) FROM tenants") == 0
    # The writer is usable again at once.
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('b', 'b', 0)")
    assert await db.fetch_val("SELECT count(*) FROM tenants") == 1


async def test_a_cancelled_transaction_rolls_back_and_frees_the_writer(db: Database) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('c', 'c', 0)")
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('d', 'd', 0)")
    names = [r["name"] for r in await db.fetch_all("SELECT name FROM tenants ORDER BY name")]
    assert names == ["d"]


async def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    await db.connect()
    await migrate(db)
    assert await db.fetch_val("PRAGMA journal_mode") == "wal"
    with pytest.raises(Exception, match="FOREIGN KEY"):
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO projects (id, tenant_id, name, created_at)"
                " VALUES ('p', 'nope', 'p', 0)"
            )
    await db.disconnect()


async def test_an_unknown_database_scheme_is_refused() -> None:
    from toolcallstore.errors import ConfigError

    with pytest.raises(ConfigError, match="mysql"):
        Database("mysql://localhost/x")


async def test_run_sync_bodies_committed_together_fail_alone(db: Database) -> None:
    # On SQLite concurrent bodies share one transaction (group commit); a failing body must
    # undo only its own statements, and every other body's write must land exactly once.
    def insert(tx: SyncTransaction, i: int) -> int:
        tx.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, 0)",
            {"id": f"ten_{i}", "name": str(i)},
        )
        if i % 3 == 0:
            raise ValueError(f"body {i} fails after writing")
        return i

    results = await asyncio.gather(
        *(db.run_sync(insert, i) for i in range(60)), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, ValueError)]
    assert len(failed) == 20 and [r for r in results if isinstance(r, int)] == [
        i for i in range(60) if i % 3
    ]
    names = {r["name"] for r in await db.fetch_all("SELECT name FROM tenants")}
    assert names == {str(i) for i in range(60) if i % 3}


async def test_a_run_sync_body_sees_the_bodies_committed_before_it(db: Database) -> None:
    await db.run_sync(
        lambda tx: tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t', '0', 0)")
    )

    def increment(tx: SyncTransaction) -> None:
        lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""  # as the spend counters do
        value = int(tx.fetch_val(f"SELECT name FROM tenants WHERE id = 't'{lock}"))
        tx.execute("UPDATE tenants SET name = :v WHERE id = 't'", {"v": str(value + 1)})

    await asyncio.gather(*(db.run_sync(increment) for _ in range(100)))
    assert await db.fetch_val("SELECT name FROM tenants WHERE id = 't'") == "100"
