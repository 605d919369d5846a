"""run_sync's writes on both dialects: values of any text survive as written, a body reads its
own earlier writes, and a failing write undoes the whole body. On Postgres these writes are
queued and sent inlined with the next read or the COMMIT (db/pg_sync.py), so the text cases are
the ones a hostile value would use to break out of a literal."""

from __future__ import annotations

import pytest

from toolcallstore.db import Database, SyncTransaction
from toolcallstore.db.pg_sync import literal

NASTY = [
    "plain",
    "it's",
    "''; DROP TABLE tenants; --",
    "back\\slash\\",
    "$$ dollar $$",
    "$t$ a tag-shaped text $t$ and $t0$",
    "ünïcødé ✓ 𝄞",
    "new\nline\ttab",
    "",
]


async def test_text_of_any_shape_is_stored_as_written(db: Database) -> None:
    def write(tx: SyncTransaction) -> None:
        for i, name in enumerate(NASTY):
            tx.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, :at)",
                {"id": f"ten_{i}", "name": name, "at": i},
            )
        tx.insert_many("tenants", ("id", "name", "created_at"),
                       [(f"ten_m{i}", name, i) for i, name in enumerate(NASTY)])  # fmt: skip

    await db.run_sync(write)
    rows = await db.fetch_all("SELECT id, name FROM tenants WHERE id LIKE 'ten_%' ORDER BY id")
    stored = {r["id"]: r["name"] for r in rows}
    assert [stored[f"ten_{i}"] for i in range(len(NASTY))] == NASTY
    assert [stored[f"ten_m{i}"] for i in range(len(NASTY))] == NASTY
    assert await db.fetch_val("SELECT count(*) FROM schema_migrations") >= 1  # nothing dropped


async def test_a_body_reads_what_it_wrote_before(db: Database) -> None:
    def write_then_read(tx: SyncTransaction) -> str | None:
        tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_r', 'first', 0)")
        tx.execute("UPDATE tenants SET name = 'second' WHERE id = 'ten_r'")
        found: str | None = tx.fetch_val("SELECT name FROM tenants WHERE id = 'ten_r'")
        return found

    assert await db.run_sync(write_then_read) == "second"


async def test_a_write_that_fails_at_commit_undoes_the_whole_body(db: Database) -> None:
    await db.run_sync(lambda tx: tx.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES ('ten_dup', 'x', 0)"))  # fmt: skip

    def clash(tx: SyncTransaction) -> None:
        tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_new', 'y', 0)")
        tx.execute("INSERT INTO tenants (id, name, created_at) VALUES ('ten_dup', 'z', 0)")

    with pytest.raises(Exception):  # noqa: B017 - the driver's own unique-violation error
        await db.run_sync(clash)
    assert await db.fetch_val("SELECT count(*) FROM tenants WHERE id = 'ten_new'") == 0


def test_only_integers_null_and_text_are_inlined() -> None:
    assert literal(7) == "7" and literal(None) == "NULL"
    for text in ("a$q1$b", "$t$", "$t$ $t0$ $t1$"):
        quoted = literal(text)
        assert quoted is not None
        tag = quoted[: quoted.index("$", 1) + 1]
        assert quoted == f"{tag}{text}{tag}" and tag not in text
    assert literal(True) is None and literal(1.5) is None and literal(b"x") is None
    assert literal("nul\x00") is None  # left to the driver, which refuses it
