"""`toolcallstore doctor`: check a deployment and say what is wrong in plain words.

Each check gives `ok`, `info` (worth knowing, not wrong) or `FAIL` with what to do about it;
any FAIL makes the command exit 1. Which providers have live credentials is a table
(`PROVIDERS`): a new provider is one line there.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg

from toolcallstore.byok import ENV_NAME, Keyring
from toolcallstore.controls.pricing import REPO_CONFIG
from toolcallstore.db import Database
from toolcallstore.db.migrate import current_version, latest_version
from toolcallstore.errors import ToolCallError
from toolcallstore.ops.stores import pg_dsn
from toolcallstore.settings import PREFIX, Settings, sqlite_path

Status = Literal["ok", "info", "FAIL"]


@dataclass(frozen=True)
class Finding:
    status: Status
    check: str
    words: str


@dataclass(frozen=True)
class Provider:
    """A provider whose live credentials are `names`: each a Settings field (lower case) or
    an environment variable; all must be set for the provider to be live."""

    kind: str
    name: str
    names: tuple[str, ...]


# One line per provider. LLM providers come from config/models.json (their api_key_env).
PROVIDERS: tuple[Provider, ...] = (
    Provider("payments", "stripe", ("stripe_api_key", "stripe_webhook_secret")),
    Provider("media", "leonardo", ("LEONARDO_API_KEY",)),
    Provider("media", "gemini-image", ("GEMINI_API_KEY",)),
    Provider("media", "fal", ("FAL_KEY",)),
    Provider("media", "replicate", ("REPLICATE_API_TOKEN",)),
    Provider("media", "runware", ("RUNWARE_API_KEY",)),
    Provider("media", "stability", ("STABILITY_API_KEY",)),
    Provider("domains", "openprovider", ("OPENPROVIDER_USERNAME", "OPENPROVIDER_PASSWORD")),
    Provider("domains", "porkbun", ("PORKBUN_API_KEY", "PORKBUN_SECRET_API_KEY")),
    Provider("mail", "stalwart", ("stalwart_url", "stalwart_user", "stalwart_password")),
)


@dataclass
class Options:
    env_file: Path | None = None
    caddyfile: Path = REPO_CONFIG / "Caddyfile"
    public_dir: Path = Path("public")
    min_free_mb: int = 1024
    max_clock_skew_s: float = 5.0


class Doctor:
    def __init__(self, settings: Settings, options: Options, environ: dict[str, str]) -> None:
        self.settings = settings
        self.options = options
        self.environ = environ
        self.findings: list[Finding] = []

    def add(self, status: Status, check: str, words: str) -> None:
        self.findings.append(Finding(status, check, words))

    @property
    def failed(self) -> bool:
        return any(f.status == "FAIL" for f in self.findings)

    def report(self, out: Any = None) -> None:
        out = out or sys.stdout
        for f in self.findings:
            print(f"{f.status:<5} {f.check:<12} {f.words}", file=out)
        failures = sum(f.status == "FAIL" for f in self.findings)
        print(f"\n{failures} problem(s) found" if failures else "\nall checks passed", file=out)

    async def run(self) -> None:
        self.check_env_file()
        db = await self.check_database()
        if db is not None:
            try:
                await self.check_master_key(db)
                await self.check_clock(db)
            finally:
                await db.disconnect()
        for check, name in (
            (self.check_sqlite_file, "sqlite"),
            (self.check_caddyfile, "caddy"),
            (self.check_public, "public"),
            (self.check_providers, "providers"),
        ):
            try:
                check()
            except (ToolCallError, OSError) as exc:  # a bad setting elsewhere, said plainly
                self.add("FAIL", name, f"could not be checked: {exc}")  # fmt: skip

    # -- secrets --------------------------------------------------------------------------

    def check_env_file(self) -> None:
        path = self.options.env_file
        if path is None:
            self.add("info", "env file", "none given (--env-file): settings come from the "
                     "environment only")  # fmt: skip
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self.add("FAIL", "env file", f"{path} does not exist")
            return
        problems = []
        if st.st_mode & 0o077:
            problems.append(
                f"{path} is readable by others (mode {st.st_mode & 0o777:o}); it holds "
                f"secrets: chmod 600 {path}"
            )
        if st.st_uid != os.geteuid():
            problems.append(
                f"{path} is owned by uid {st.st_uid}, not by the user running the store "
                f"(uid {os.geteuid()}): chown it to that user"
            )
        for problem in problems:
            self.add("FAIL", "env file", problem)
        if not problems:
            self.add("ok", "env file", f"{path}: mode 600, owned by the store's user")

    async def check_master_key(self, db: Database) -> None:
        live = " FROM byok_keys WHERE deleted_at IS NULL"
        stored = int(await db.fetch_val("SELECT count(*)" + live) or 0)
        keyring = None
        if self.settings.master_key:
            try:
                keyring = Keyring.parse(self.settings.master_key)
            except ToolCallError as exc:
                self.add("FAIL", "master key", f"{ENV_NAME} cannot be read: {exc}")
                return
        if stored and keyring is None:
            self.add("FAIL", "master key", f"{stored} BYOK key(s) are stored but {ENV_NAME} is "
                     "not set: they cannot be decrypted; set it in the env file")  # fmt: skip
            return
        if keyring is not None and stored:
            rows = await db.fetch_all("SELECT DISTINCT master_key_id" + live)
            kids = {r["master_key_id"] for r in rows}
            unknown = sorted(kids - set(keyring.kids))
            if unknown:
                self.add("FAIL", "master key", f"BYOK keys are encrypted under key id(s) "
                         f"{', '.join(unknown)}, which {ENV_NAME} lacks")  # fmt: skip
                return
        if keyring is None:
            self.add("ok", "master key", "not set, and no BYOK keys are stored (BYOK is off)")
        else:
            self.add("ok", "master key", f"set; {stored} BYOK key(s) stored")

    # -- database -------------------------------------------------------------------------

    async def check_database(self) -> Database | None:
        url = self.settings.database_url
        shown = url.split("@")[-1] if "@" in url else url
        path = sqlite_path(url) if url.startswith("sqlite") else None
        if url.startswith("sqlite") and (path is None or not path.exists()):
            self.add("FAIL", "database", f"no SQLite store at {path}: check "
                     "TOOLCALLSTORE_DATABASE_URL (the first `serve` creates it)")  # fmt: skip
            return None
        db = Database(url, readers=1)
        try:
            await db.connect()
            version = await current_version(db)
        except Exception as exc:
            self.add("FAIL", "database", f"cannot reach {shown}: {type(exc).__name__}: {exc}")
            return None
        want = latest_version(db.dialect)
        if version < want:
            self.add("FAIL", "database", f"{shown} is at schema version {version}, this code "
                     f"needs {want}: run `toolcallstore migrate`")  # fmt: skip
            await db.disconnect()
            return None
        if version > want:
            self.add("FAIL", "database", f"{shown} is at schema version {version}, newer than "
                     f"this code ({want}): deploy the newer code")  # fmt: skip
            await db.disconnect()
            return None
        self.add("ok", "database", f"{shown} reachable, schema at version {version}")
        return db

    def check_sqlite_file(self) -> None:
        if not self.settings.database_url.startswith("sqlite"):
            return
        path = sqlite_path(self.settings.database_url)
        if path is None or not path.exists():
            return
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        if mode != "wal":
            self.add("FAIL", "sqlite", f"{path} is in journal mode {mode}, not WAL: readers "
                     "would block the writer; the next `serve` sets WAL")  # fmt: skip
        else:
            self.add("ok", "sqlite", f"{path} in WAL mode")
        if path.stat().st_mode & 0o077:
            self.add("FAIL", "sqlite", f"{path} is readable by others "
                     f"(mode {path.stat().st_mode & 0o777:o}): chmod 600 {path}*")  # fmt: skip
        free_mb = shutil.disk_usage(path.parent).free // (1024 * 1024)
        size_mb = path.stat().st_size // (1024 * 1024)
        need = max(self.options.min_free_mb, 2 * size_mb)
        if free_mb < need:
            self.add("FAIL", "disk", f"{free_mb} MB free beside {path} ({size_mb} MB): at "
                     f"least {need} MB wanted for growth and a backup")  # fmt: skip
        else:
            self.add("ok", "disk", f"{free_mb} MB free beside the store ({size_mb} MB)")

    async def check_clock(self, db: Database) -> None:
        now = time.time()
        if time.gmtime(now).tm_year < 2025:
            self.add("FAIL", "clock", f"the system clock says {time.strftime('%Y-%m-%d')}: "
                     "set it (timedatectl set-ntp true)")  # fmt: skip
            return
        newest = await db.fetch_val("SELECT max(ts) FROM audit_log")
        if newest is not None and int(newest) / 1e6 > now + 60:
            ahead = int(newest) / 1e6 - now
            self.add("FAIL", "clock", f"the newest audit row is {ahead:.0f} s in the future: "
                     "the clock went back; ids, periods and holds' expiry rely on it")  # fmt: skip
            return
        if db.is_postgres:
            conn = await asyncpg.connect(pg_dsn(db.url))
            try:
                before = time.time()
                server = float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
                skew = server - (before + time.time()) / 2
            finally:
                await conn.close()
            if abs(skew) > self.options.max_clock_skew_s:
                self.add("FAIL", "clock", f"this host's clock and the database server's differ "
                         f"by {skew:+.1f} s: run NTP on both")  # fmt: skip
                return
        self.add("ok", "clock", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))

    # -- edge -----------------------------------------------------------------------------

    def check_caddyfile(self) -> None:
        path = self.options.caddyfile
        shipped = REPO_CONFIG / "Caddyfile"
        if not path.is_file():
            self.add("FAIL", "caddy", f"no Caddyfile at {path}")
            return
        if path.resolve() != shipped.resolve() and shipped.is_file():
            if path.read_bytes() != shipped.read_bytes():
                self.add("FAIL", "caddy", f"{path} differs from this version's {shipped}: copy "
                         "it over, then `systemctl reload caddy`")  # fmt: skip
                return
        self.add("ok", "caddy", f"{path} is this version's")

    def check_public(self) -> None:
        from toolcallstore.app import create_app
        from toolcallstore.site.build import build_site, load_site, stale_files

        out = self.options.public_dir
        if not out.is_dir():
            self.add("FAIL", "public", f"no {out}/: run `toolcallstore build-public --out {out}`")
            return
        app = create_app(self.settings.with_(master_key=""))  # the site needs no secrets
        stale = stale_files(build_site(app, load_site()), out)
        if stale:
            shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
            self.add("FAIL", "public", f"{out}/ is out of date ({shown}): run "
                     f"`toolcallstore build-public --out {out}`")  # fmt: skip
        else:
            self.add("ok", "public", f"{out}/ is current")

    # -- providers ------------------------------------------------------------------------

    def credential(self, name: str) -> str:
        if name.islower() and hasattr(self.settings, name):
            return str(getattr(self.settings, name) or "")
        return self.environ.get(name) or self.environ.get(PREFIX + name) or ""

    def check_providers(self) -> None:
        from toolcallstore.controls.pricing import load_pricing
        from toolcallstore.lanes.catalog import load_catalog

        catalog = load_catalog(load_pricing(self.settings.models_file or None), self.environ)
        for lane in sorted(catalog.lanes.values(), key=lambda lane: lane.id):
            live = sorted({m.target.provider for t in lane.targets
                           if (m := catalog.models[t]).api_key and m.base_url_ready})  # fmt: skip
            words = f"live via {', '.join(live)}" if live else "no live credentials: test only"
            self.add("info", "lane", f"{lane.id}: {words}")
        for kind in sorted({p.kind for p in PROVIDERS}):
            live = [p.name for p in PROVIDERS if p.kind == kind
                    and all(self.credential(n) for n in p.names)]  # fmt: skip
            absent = [p.name for p in PROVIDERS if p.kind == kind and p.name not in live]
            words = f"live: {', '.join(live) or 'none'}"
            if absent:
                words += f"; sandbox only: {', '.join(absent)}"
            self.add("info", kind, words)


async def doctor(settings: Settings, options: Options, environ: dict[str, str]) -> Doctor:
    found = Doctor(settings, options, environ)
    await found.run()
    return found
