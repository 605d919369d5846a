import asyncio
import contextlib
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from toolcallstore.db import Database, SyncTransaction
from toolcallstore.db.migrate import current_version, latest_version, load_migrations, migrate


async def test_migrations_record_the_schema_version_and_are_idempotent(db: Database) -> None:
    assert await current_version(db) == latest_version(db.dialect) >= 1
    assert await migrate(db) == []
    rows = await db.fetch_all("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in load_migrations(db.dialect)]


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
            # Work registered for COMMIT goes with the failed body too.
            tx.before_commit(f"late_{i}", lambda t: t.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (:id, 'hook', 0)",
                {"id": f"hook_{i}"}))  # fmt: skip
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


async def test_a_lone_run_sync_body_that_fails_leaves_nothing_and_runs_no_hook(
    db: Database,
) -> None:
    # A batch of one body runs without a savepoint: its failure must roll back its
    # statements and skip the work it registered for COMMIT (as the audit chain does).
    def insert_then_fail(tx: SyncTransaction) -> None:
        tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'one', 0)")
        tx.before_commit(
            "late",
            lambda t: t.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ('t2', 'hook', 0)"
            ),
        )
        raise ValueError("refused after writing")

    with pytest.raises(ValueError, match="refused after writing"):
        await db.run_sync(insert_then_fail)
    assert await db.fetch_val("SELECT count(*) FROM tenants") == 0
    assert await db.run_sync(_add_tenant, "t3") == "t3"
    assert [r["id"] for r in await db.fetch_all("SELECT id FROM tenants")] == ["t3"]


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


async def _sqlite_db(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    await db.connect()
    await migrate(db)
    return db


def _add_tenant(tx: SyncTransaction, tenant_id: str) -> str:
    tx.execute("INSERT INTO tenants (id, name, created_at) VALUES (:id, :id, 0)", {"id": tenant_id})
    return tenant_id


HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_cli', 'cli', 0)")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
"""


async def test_a_write_lock_held_by_another_process_neither_fails_nor_freezes_run_sync(
    tmp_path: Path,
) -> None:
    # run_sync transactions run on the event loop's thread and never wait for SQLite's lock
    # there: while another process (say the CLI) holds it, they wait elsewhere, and the loop
    # goes on serving, here the reads and the coroutine that lets the other process commit.
    db = await _sqlite_db(tmp_path / "lock.db")
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_WRITE_LOCK, str(tmp_path / "lock.db"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert other.stdout is not None and other.stdin is not None
        assert await other.stdout.readline() == b"locked\n"
        writes = [asyncio.ensure_future(db.run_sync(_add_tenant, f"ten_{i}")) for i in range(5)]
        # The loop must keep turning: a writer waiting on the loop's thread (busy_timeout)
        # would freeze it for seconds. 1 s is far above any healthy gap between two ticks.
        longest, last = 0.0, time.monotonic()
        for _ in range(25):
            await asyncio.sleep(0.02)
            assert await db.fetch_val("SELECT count(*) FROM tenants") == 0
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
        assert longest < 1.0
        assert not any(w.done() for w in writes)  # waiting for the lock, not failed
        other.stdin.write(b"go\n")
        await other.stdin.drain()
        assert await other.stdout.readline() == b"committed\n"
        assert await asyncio.gather(*writes) == [f"ten_{i}" for i in range(5)]
        # Then back on the loop's own connection.
        assert await db.run_sync(_add_tenant, "ten_after") == "ten_after"
        rows = await db.fetch_all("SELECT id FROM tenants ORDER BY id")
        assert [r["id"] for r in rows] == ["ten_0", "ten_1", "ten_2", "ten_3", "ten_4",
                                           "ten_after", "ten_cli"]  # fmt: skip
    finally:
        if other.returncode is None:
            other.kill()
        await other.wait()
        await db.disconnect()


async def test_run_sync_waits_for_an_open_async_transaction_and_then_commits(
    tmp_path: Path,
) -> None:
    db = await _sqlite_db(tmp_path / "mixed.db")
    try:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0)")
            writes = [asyncio.ensure_future(db.run_sync(_add_tenant, f"ten_{i}")) for i in "bc"]
            await asyncio.sleep(0.05)
            assert not any(w.done() for w in writes)
        assert await asyncio.gather(*writes) == ["ten_b", "ten_c"]
        rows = await db.fetch_all("SELECT id FROM tenants ORDER BY id")
        assert [r["id"] for r in rows] == ["ten_a", "ten_b", "ten_c"]
        with pytest.raises(Exception, match="FOREIGN KEY"):
            await db.run_sync(
                lambda tx: tx.execute(
                    "INSERT INTO projects (id, tenant_id, name, created_at)"
                    " VALUES ('p', 'nope', 'p', 0)"
                )
            )
    finally:
        await db.disconnect()


async def test_the_wal_is_copied_back_into_the_database_file_while_the_server_writes(
    tmp_path: Path,
) -> None:
    # The loop's writer never checkpoints (that would stall the loop); a background thread
    # does. The database file alone, without its -wal, must come to hold what was committed.
    db = await _sqlite_db(tmp_path / "ckpt.db")
    try:
        for chunk in range(5):
            await asyncio.gather(
                *(db.run_sync(_add_tenant, f"ten_{chunk}_{i}") for i in range(200))
            )
        copy = tmp_path / "copy.db"
        count = 0
        for _ in range(100):  # the checkpoint runs every 0.25 s; allow it 10 s
            await asyncio.sleep(0.1)
            shutil.copyfile(tmp_path / "ckpt.db", copy)  # no -wal beside it: the file alone
            with contextlib.closing(sqlite3.connect(copy)) as conn:
                with contextlib.suppress(sqlite3.OperationalError):  # no tables there yet
                    count = conn.execute("SELECT count(*) FROM tenants").fetchone()[0]
            if count == 1000:
                break
        assert count == 1000
    finally:
        await db.disconnect()
