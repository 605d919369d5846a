"""Issue 22: the SQLite files hold key hashes, BYOK ciphertext and every tenant's records, so
only their owner may read them, whatever the umask."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask, under which files are created -rw-r--r--
    try:
        yield
    finally:
        os.umask(old)


def _modes(path: Path) -> dict[str, int]:
    files = (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
    return {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}


async def _write_something(database: Database) -> None:
    await migrate(database)
    async with database.transaction() as tx:
        await tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('t', 'n', 0)")


async def test_a_new_database_and_its_wal_and_shm_are_owner_only(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "new.db"
    database = Database(f"sqlite:///{path}")
    await database.connect()
    try:
        await _write_something(database)
        modes = _modes(path)
    finally:
        await database.disconnect()
    assert modes == {"new.db": 0o600, "new.db-wal": 0o600, "new.db-shm": 0o600}


async def test_an_old_world_readable_database_is_made_owner_only_at_connect(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "old.db"
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        (tmp_path / name).touch(mode=0o644)
    os.chmod(path, 0o644)
    database = Database(f"sqlite:///{path}")
    await database.connect()
    try:
        await _write_something(database)
        modes = _modes(path)
    finally:
        await database.disconnect()
    assert set(modes.values()) == {0o600}
