"""`toolcallstore doctor`: a sound deployment passes; each kind of fault is named in plain
words and makes the command exit non-zero."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import PG_URL
from tests.ops.helpers import MASTER_KEY, cli
from toolcallstore.audit import append_rows
from toolcallstore.controls.pricing import REPO_CONFIG
from toolcallstore.db import Database
from toolcallstore.db.migrate import latest_version, migrate
from toolcallstore.ids import now_us
from toolcallstore.ops.doctor import Doctor, Options, doctor
from toolcallstore.settings import Settings

REPO = REPO_CONFIG.parent


@pytest.fixture
async def store(database_url: str) -> Settings:
    db = Database(database_url, readers=1)
    await db.connect()
    try:
        await migrate(db)
    finally:
        await db.disconnect()
    return Settings(database_url=database_url)


def env_file(tmp_path: Path, database_url: str, mode: int = 0o600) -> Path:
    path = tmp_path / "toolcallstore.env"
    path.write_text(f"TOOLCALLSTORE_DATABASE_URL={database_url}\nOPENAI_API_KEY=sk-live-x\n")
    path.chmod(mode)
    return path


def failures(doctor: Doctor) -> list[str]:
    return [f"{f.check}: {f.words}" for f in doctor.findings if f.status == "FAIL"]


async def test_a_sound_deployment_passes_and_a_faulty_one_exits_1(
    store: Settings, tmp_path: Path
) -> None:
    file = env_file(tmp_path, store.database_url)
    options = Options(env_file=file, public_dir=REPO / "public", min_free_mb=1)
    sound = await doctor(store, options, {"OPENAI_API_KEY": "sk-live-x"})
    assert not failures(sound), failures(sound)
    out = io.StringIO()
    sound.report(out)
    assert "all checks passed" in out.getvalue()
    assert "premium: live via openai" in out.getvalue()  # a lane with a live key
    assert "sk-live-x" not in out.getvalue()  # credentials are named, never shown

    file.chmod(0o644)
    faulty = await asyncio.to_thread(
        cli, "--env-file", str(file), "doctor", "--public", str(tmp_path / "public"),
        "--min-free-mb", "1",
    )  # fmt: skip
    assert faulty.returncode == 1, faulty.stdout + faulty.stderr
    assert f"{file} is readable by others (mode 644)" in faulty.stdout
    assert f"chmod 600 {file}" in faulty.stdout
    assert f"no {tmp_path / 'public'}/: run `toolcallstore build-public" in faulty.stdout
    assert "2 problem(s) found" in faulty.stdout
    assert "ok    database" in faulty.stdout  # the URL came from the env file


async def test_env_file_owner(store: Settings, tmp_path: Path) -> None:
    file = env_file(tmp_path, store.database_url)
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(file, 65534, 65534)
    doctor = Doctor(store, Options(env_file=file), {})
    doctor.check_env_file()
    assert failures(doctor) == [
        f"env file: {file} is owned by uid 65534, not by the user running the store (uid 0): "
        "chown it to that user"
    ]


async def test_byok_keys_without_the_master_key(store: Settings) -> None:
    db = Database(store.database_url, readers=1)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO tenants (id, name, created_at) "
                             "VALUES ('ten_1', 'a', 1)")  # fmt: skip
            await tx.execute(
                "INSERT INTO byok_keys (id, tenant_id, provider, master_key_id, nonce,"
                " ciphertext, last4, created_at) VALUES ('byok_1', 'ten_1', 'openai', 'k9', :b,"
                " :b, 'abcd', 1)", {"b": b"x"},
            )  # fmt: skip
        doctor = Doctor(store, Options(), {})
        await doctor.check_master_key(db)
        assert failures(doctor) == [
            "master key: 1 BYOK key(s) are stored but TOOLCALLSTORE_MASTER_KEY is not set: they "
            "cannot be decrypted; set it in the env file"
        ]
        doctor = Doctor(store.with_(master_key=MASTER_KEY), Options(), {})
        await doctor.check_master_key(db)
        assert failures(doctor) == [
            "master key: BYOK keys are encrypted under key id(s) k9, which "
            "TOOLCALLSTORE_MASTER_KEY lacks"
        ]
        doctor = Doctor(store.with_(master_key="k1:not-base64!"), Options(), {})
        await doctor.check_master_key(db)
        assert failures(doctor)[0].startswith("master key: TOOLCALLSTORE_MASTER_KEY cannot be read")
        assert "not-base64" not in failures(doctor)[0]
    finally:
        await db.disconnect()


async def test_database_missing_unreachable_or_not_migrated(
    store: Settings, tmp_path: Path
) -> None:
    db = Database(store.database_url, readers=1)
    await db.connect()
    try:
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM schema_migrations WHERE version = "
                             "(SELECT max(version) FROM schema_migrations)")  # fmt: skip
    finally:
        await db.disconnect()
    doctor = Doctor(store, Options(), {})
    assert await doctor.check_database() is None
    want = latest_version("postgresql" if PG_URL else "sqlite")
    assert failures(doctor)[0].endswith(f"needs {want}: run `toolcallstore migrate`")
    missing = Doctor(Settings(database_url=f"sqlite:///{tmp_path / 'nope.db'}"), Options(), {})
    assert await missing.check_database() is None
    assert "no SQLite store at" in failures(missing)[0]
    assert not (tmp_path / "nope.db").exists()  # the doctor does not create one
    down = Doctor(Settings(database_url="postgresql://postgres@127.0.0.1:1/x"), Options(), {})
    assert await down.check_database() is None
    assert failures(down)[0].startswith("database: cannot reach 127.0.0.1:1/x")


async def test_sqlite_not_in_wal_mode_world_readable_or_short_of_disk(tmp_path: Path) -> None:
    path = tmp_path / "store.db"  # SQLite's own checks, whichever database the run tests
    store = Settings(database_url=f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    path.chmod(0o644)
    doctor = Doctor(store, Options(min_free_mb=10**9), {})
    doctor.check_sqlite_file()
    found = failures(doctor)
    assert found[0] == (f"sqlite: {path} is in journal mode delete, not WAL: readers would "
                        "block the writer; the next `serve` sets WAL")  # fmt: skip
    assert found[1] == f"sqlite: {path} is readable by others (mode 644): chmod 600 {path}*"
    assert found[2].startswith("disk: ") and "at least 1000000000 MB wanted" in found[2]


async def test_clock_behind_the_newest_audit_row(store: Settings) -> None:
    db = Database(store.database_url, readers=1)
    await db.connect()
    try:
        doctor = Doctor(store, Options(), {})
        await doctor.check_clock(db)
        assert not failures(doctor)
        row = {"ts": now_us() + 3600 * 1_000_000, "request_id": "req_x", "method": "GET",
               "path": "/", "decision": "allow", "status": 200, "latency_us": 1}  # fmt: skip
        await db.run_sync(append_rows, [row])
        doctor = Doctor(store, Options(), {})
        await doctor.check_clock(db)
        assert len(failures(doctor)) == 1
        assert "s in the future: the clock went back" in failures(doctor)[0]
    finally:
        await db.disconnect()


async def test_caddyfile_and_public_missing_or_stale(store: Settings, tmp_path: Path) -> None:
    public = tmp_path / "public"
    shutil.copytree(REPO / "public", public)
    (public / "llms.txt").write_text("an old llms.txt\n")
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text((REPO_CONFIG / "Caddyfile").read_text() + "\n# edited by hand\n")
    doctor = Doctor(store, Options(caddyfile=caddyfile, public_dir=public), {})
    doctor.check_caddyfile()
    doctor.check_public()
    assert failures(doctor) == [
        f"caddy: {caddyfile} differs from this version's {REPO_CONFIG / 'Caddyfile'}: copy it "
        "over, then `systemctl reload caddy`",
        f"public: {public}/ is out of date (llms.txt): run "
        f"`toolcallstore build-public --out {public}`",
    ]
    gone = Doctor(store, Options(caddyfile=tmp_path / "none", public_dir=tmp_path / "none"), {})
    gone.check_caddyfile()
    gone.check_public()
    assert failures(gone) == [
        f"caddy: no Caddyfile at {tmp_path / 'none'}",
        f"public: no {tmp_path / 'none'}/: run `toolcallstore build-public --out "
        f"{tmp_path / 'none'}`",
    ]


def test_providers_with_live_credentials_are_listed_by_kind() -> None:
    environ = {"OPENPROVIDER_USERNAME": "u", "OPENPROVIDER_PASSWORD": "p", "FAL_KEY": "k",
               "PORKBUN_API_KEY": "only half"}  # fmt: skip
    doctor = Doctor(Settings(stripe_api_key="sk_live_x"), Options(), environ)
    doctor.check_providers()
    said = {f.check: f.words for f in doctor.findings}
    assert said["domains"] == "live: openprovider; sandbox only: porkbun"
    assert said["media"].startswith("live: fal; sandbox only: leonardo")
    assert said["payments"] == "live: none; sandbox only: stripe"  # no webhook secret
    assert said["mail"] == "live: none; sandbox only: stalwart"
    assert not failures(doctor)  # sandbox-only providers are worth knowing, not wrong
