"""`toolcallstore serve|migrate|tenants|keys|jobs|audit|byok|doctor|db|backup|restore`: the
operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from toolcallstore.audit import verify_chain
from toolcallstore.auth import SCOPES
from toolcallstore.byok import ENV_NAME, Keyring, rotate
from toolcallstore.db import Database
from toolcallstore.db import keys as key_repo
from toolcallstore.db import tenants as tenant_repo
from toolcallstore.db.migrate import migrate
from toolcallstore.errors import APIError, ConfigError, ToolCallError
from toolcallstore.money import usd_to_micros
from toolcallstore.objects import job_object, key_object, tenant_object
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import STATES
from toolcallstore.ratelimit import rate_limit_of
from toolcallstore.settings import Settings
from toolcallstore.webhooks.endpoints import reseal_secrets


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.env_file:
            load_env_file(Path(args.env_file))
        settings = Settings.from_env()
        if getattr(args, "database_url", None):
            settings = settings.with_(database_url=args.database_url)
        result: int = args.run(settings, args)
        return result
    except ToolCallError as exc:
        print(f"toolcallstore: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolcallstore", description=__doc__)
    parser.add_argument("--database-url", help="overrides TOOLCALLSTORE_DATABASE_URL")
    parser.add_argument(
        "--env-file",
        help="read NAME=value lines (settings and provider keys) from this file (mode 600); "
        "they override the inherited environment",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="migrate, bootstrap on first start, serve HTTP")
    serve.add_argument("--host", help="bind address (TOOLCALLSTORE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (TOOLCALLSTORE_PORT, default 8080)")
    serve.add_argument(
        "--processes",
        type=int,
        help="API processes sharing the port, each with its worker pool; Postgres only"
        " (TOOLCALLSTORE_PROCESSES, default 1)",
    )
    serve.set_defaults(run=_serve)

    sub.add_parser("migrate", help="apply pending migrations").set_defaults(run=_sync(_migrate))

    tenants = sub.add_parser("tenants", help="create or list tenants").add_subparsers(
        required=True, metavar="ACTION"
    )
    create_tenant = tenants.add_parser("create", help="create a tenant")
    create_tenant.add_argument("--name", required=True)
    create_tenant.set_defaults(run=_sync(_tenants_create))
    tenants.add_parser("list", help="list tenants").set_defaults(run=_sync(_tenants_list))

    keys = sub.add_parser("keys", help="create, list or revoke API keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    create_key = keys.add_parser("create", help="create a key; its secret is printed once")
    create_key.add_argument("--tenant", required=True, help="tenant id (ten_...)")
    create_key.add_argument("--scopes", required=True, help=f"comma-separated: {','.join(SCOPES)}")
    create_key.add_argument("--mode", choices=("live", "test"), default="test")
    create_key.add_argument("--project", help="bind the key to this project id")
    create_key.add_argument("--name", default="")
    create_key.add_argument(
        "--auto-quote-max-usd",
        help="let the key's calls quote themselves inline up to this many USD each (an agent key)",
    )
    create_key.add_argument(
        "--rate-limit-per-s",
        type=float,
        help="the key's own request rate (per second; default: TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S)",
    )
    create_key.add_argument(
        "--rate-limit-burst",
        type=int,
        help="the key's own burst (default: TOOLCALLSTORE_RATE_LIMIT_KEY_BURST, or the rate)",
    )
    create_key.add_argument(
        "--operator",
        action="store_true",
        help="with admin: make this tenant an operator tenant (its keys may then hold admin)",
    )
    create_key.set_defaults(run=_sync(_keys_create))
    list_keys = keys.add_parser("list", help="list a tenant's keys")
    list_keys.add_argument("--tenant", required=True)
    list_keys.set_defaults(run=_sync(_keys_list))
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_sync(_keys_revoke))

    jobs = sub.add_parser("jobs", help="inspect and steer the job queue").add_subparsers(
        required=True, metavar="ACTION"
    )
    list_jobs = jobs.add_parser("list", help="newest jobs first")
    list_jobs.add_argument("--state", choices=STATES)
    list_jobs.add_argument("--limit", type=int, default=50)
    list_jobs.set_defaults(run=_sync(_jobs_list))
    for action, helptext in (
        ("show", "one job in full"),
        ("retry", "requeue a failed or cancelled job with fresh attempts"),
        ("cancel", "cancel a queued job, or ask a running one to stop"),
    ):
        parser_ = jobs.add_parser(action, help=helptext)
        parser_.add_argument("job_id")
        parser_.set_defaults(run=_sync(_jobs_action), action=action)

    audit = sub.add_parser("audit", help="check the audit log").add_subparsers(
        required=True, metavar="ACTION"
    )
    audit.add_parser("verify", help="verify the hash chain").set_defaults(run=_sync(_audit_verify))

    byok = sub.add_parser("byok", help="manage tenants' stored provider keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    byok.add_parser(
        "rotate", help=f"re-encrypt stored keys under the first key of {ENV_NAME}"
    ).set_defaults(run=_byok_rotate)
    _ops_commands(sub)
    public = sub.add_parser("build-public", help="write public/ (openapi.json, llms.txt, ...)")
    public.add_argument("--out", default="public", help="directory to write (default: public)")
    public.add_argument("--site", help="site config (default: config/site.json)")
    public.add_argument("--check", action="store_true", help="exit 1 if --out is stale")
    public.set_defaults(run=_build_public)
    return parser


Command = Callable[[Database, argparse.Namespace], Awaitable[int]]


def _sync(command: Command) -> Callable[[Settings, argparse.Namespace], int]:
    """Run an async command against a connected, migrated database."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def with_db() -> int:
            db = Database(settings.database_url, readers=1)
            await db.connect()
            try:
                await migrate(db)
                return await command(db, args)
            finally:
                await db.disconnect()

        return asyncio.run(with_db())

    return run


def _print(obj: Any) -> None:
    print(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode())


async def _migrate(db: Database, args: argparse.Namespace) -> int:
    print("schema is up to date")
    return 0


async def _tenants_create(db: Database, args: argparse.Namespace) -> int:
    async with db.transaction() as tx:
        tenant = await tenant_repo.insert_tenant(tx, args.name)
    _print(tenant_object(tenant))
    return 0


async def _tenants_list(db: Database, args: argparse.Namespace) -> int:
    page = await tenant_repo.list_tenants(db, limit=1000, starting_after=None)
    _print([tenant_object(r) for r in page.rows])
    return 0


async def _keys_create(db: Database, args: argparse.Namespace) -> int:
    scopes = tuple(sorted({s.strip() for s in args.scopes.split(",") if s.strip()}))
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ConfigError(f"unknown or empty scopes: {', '.join(unknown) or '(none)'}")
    auto_quote = None
    if args.auto_quote_max_usd is not None:
        try:
            auto_quote = usd_to_micros(args.auto_quote_max_usd)
        except ValueError as exc:
            raise ConfigError(f"--auto-quote-max-usd {exc}") from None
    try:
        rate, burst = rate_limit_of(
            {"rate_limit_per_s": args.rate_limit_per_s, "rate_limit_burst": args.rate_limit_burst}
        )
    except APIError as exc:
        flag = "--" + str(exc.details["param"]).replace("_", "-")
        raise ConfigError(f"{flag}: {exc.message}") from None
    async with db.transaction() as tx:
        if await tenant_repo.get_tenant(tx, args.tenant) is None:
            raise ConfigError(f"no tenant {args.tenant}")
        if args.project and await tenant_repo.get_project(tx, args.tenant, args.project) is None:
            raise ConfigError(f"no project {args.project} in tenant {args.tenant}")
        if "admin" in scopes and not await tenant_repo.is_operator_tenant(tx, args.tenant):
            if not args.operator:
                message = tenant_repo.admin_refused(args.tenant)
                raise ConfigError(f"{message} To make it an operator tenant, add --operator.")
            await tenant_repo.make_operator_tenant(tx, args.tenant)
        key, secret = await key_repo.insert_key(
            tx,
            tenant_id=args.tenant,
            project_id=args.project,
            name=args.name,
            mode=args.mode,
            scopes=scopes,
            auto_quote_max_micros=auto_quote,
            rate_limit_per_s=rate,
            rate_limit_burst=burst,
        )
    _print(key_object(key, secret))
    return 0


async def _keys_list(db: Database, args: argparse.Namespace) -> int:
    found, _ = await key_repo.list_keys(db, args.tenant, limit=1000, starting_after=None)
    _print([key_object(k) for k in found])
    return 0


async def _keys_revoke(db: Database, args: argparse.Namespace) -> int:
    async with db.transaction() as tx:
        key = await key_repo.revoke_key(tx, args.tenant, args.key_id)
    if key is None:
        raise ConfigError(f"no key {args.key_id} in tenant {args.tenant}")
    _print(key_object(key))
    return 0


async def _jobs_list(db: Database, args: argparse.Namespace) -> int:
    store = SqlJobStore(db)
    for queue, state, count in await store.depth():
        print(f"# queue {queue}: {count} {state}")
    for job in await store.recent(args.state, args.limit):
        print(
            f"{job.id}  {job.state:<9} {job.type:<24} attempts {job.attempts}/{job.max_attempts}"
            f"  progress {job.progress}%"
        )
    return 0


async def _jobs_action(db: Database, args: argparse.Namespace) -> int:
    store = SqlJobStore(db)
    act = {"show": store.get, "retry": store.retry, "cancel": store.cancel}[args.action]
    job = await act(args.job_id)
    if job is None:
        raise ConfigError(f"no job {args.job_id}")
    _print(job_object(job))
    return 0


async def _audit_verify(db: Database, args: argparse.Namespace) -> int:
    report = await verify_chain(db)
    if report.ok:
        tail = f"; {report.unsealed} newer rows not sealed yet" if report.unsealed else ""
        print(f"audit chain intact: {report.rows_checked} rows verified{tail}")
        return 0
    print(
        f"audit chain BROKEN at seq {report.broken_at}: {report.problem} "
        f"({report.rows_checked} rows verified before it)"
    )
    return 1


def _byok_rotate(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.master_key:
        raise ConfigError(
            f"{ENV_NAME} is not set: put the new key first and the old ones after it, e.g. "
            f"{ENV_NAME}=k2:<new base64>,k1:<old base64>"
        )
    keyring = Keyring.parse(settings.master_key)

    async def run(db: Database, args: argparse.Namespace) -> int:
        count = await rotate(db, keyring)
        print(f"re-encrypted {count} BYOK key(s) under master key id '{keyring.current_kid}'")
        endpoints = await reseal_secrets(db, keyring)
        print(f"re-encrypted the signing secrets of {endpoints} webhook endpoint(s)")
        return 0

    return _sync(run)(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.server import serve

    if args.host:
        settings = settings.with_(host=args.host)
    if args.port:
        settings = settings.with_(port=args.port)
    if args.processes is not None:
        settings = settings.with_(processes=args.processes)
    serve(settings)
    return 0


def _build_public(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.app import create_app
    from toolcallstore.site.build import build_site, load_site, stale_files, write_site

    files = build_site(create_app(settings), load_site(args.site))
    out = Path(args.out)
    if args.check:
        stale = stale_files(files, out)
        for name in stale:
            print(f"stale: {out / name}", file=sys.stderr)
        return 1 if stale else 0
    for name in write_site(files, out):
        print(f"wrote {out / name}")
    return 0


def load_env_file(path: Path) -> None:
    """`NAME=value` lines into os.environ (blank lines and # comments skipped; a value may be
    quoted). PM2 starts the server with `--env-file`, so secrets stay out of PM2's dump."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the env file {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number} is not NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ[name] = value


def _ops_commands(sub: Any) -> None:
    doctor = sub.add_parser("doctor", help="check this deployment; exit 1 on any problem")
    doctor.add_argument("--caddyfile", help="the Caddyfile Caddy serves (default config/Caddyfile)")
    doctor.add_argument("--public", default="public", help="the built public/ directory")
    doctor.add_argument("--min-free-mb", type=int, default=1024,
                        help="free disk wanted beside an SQLite store (default 1024)")  # fmt: skip
    doctor.set_defaults(run=_doctor)

    db = sub.add_parser("db", help="move and check the store's database").add_subparsers(
        required=True, metavar="ACTION"
    )
    copy = db.add_parser(
        "copy", help="copy the (stopped) SQLite store into an empty Postgres database, verify"
    )
    copy.add_argument("--to", required=True, help="postgresql://user@host:port/database (empty)")
    copy.add_argument("--quiet", action="store_true", help="no progress bar")
    copy.set_defaults(run=_db_copy)
    verify = db.add_parser(
        "verify", help="check a store: audit chain, spend counters, and against a source"
    )
    verify.add_argument("url", nargs="?", help="the store to check (default: --database-url)")
    against = verify.add_mutually_exclusive_group()
    against.add_argument("--against", help="the store it was copied from (its URL)")
    against.add_argument("--manifest", help="a backup's .manifest.json it must match")
    verify.set_defaults(run=_db_verify)

    backup = sub.add_parser("backup", help="snapshot the running store into DEST (+ manifest)")
    backup.add_argument("dest", help="a new file: the SQLite snapshot or the pg_dump archive")
    backup.set_defaults(run=_backup)
    restore = sub.add_parser("restore", help="restore a backup into an empty place, verify")
    restore.add_argument("src", help="the backup file (its .manifest.json beside it)")
    restore.add_argument("--to", help="where: a new SQLite path URL or an empty Postgres "
                         "database (default: --database-url)")  # fmt: skip
    restore.add_argument("--quiet", action="store_true")
    restore.set_defaults(run=_restore)


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.ops.doctor import Options, doctor

    options = Options(
        env_file=Path(args.env_file) if args.env_file else None,
        public_dir=Path(args.public),
        min_free_mb=args.min_free_mb,
    )
    if args.caddyfile:
        options.caddyfile = Path(args.caddyfile)
    found = asyncio.run(doctor(settings, options, dict(os.environ)))
    found.report()
    return 1 if found.failed else 0


def _db_copy(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.ops.copy import copy_store

    verdict = asyncio.run(copy_store(settings.database_url, args.to, quiet=args.quiet))
    print(f"copied {_shown(settings.database_url)} into {_shown(args.to)}")
    verdict.print()
    return 0 if verdict.ok else 1


def _db_verify(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.ops.stores import Manifest, store_manifest, verify_store

    async def run() -> int:
        expected = None
        if args.against:
            expected = await store_manifest(args.against)
        elif args.manifest:
            expected = Manifest.read(Path(args.manifest))
        verdict = await verify_store(args.url or settings.database_url, expected)
        verdict.print()
        return 0 if verdict.ok else 1

    return asyncio.run(run())


def _backup(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.ops.backup import backup, manifest_path

    dest = Path(args.dest)
    manifest = asyncio.run(backup(settings.database_url, dest))
    rows = sum(t.rows for t in manifest.tables.values())
    print(f"backed up {_shown(settings.database_url)} to {dest} ({len(manifest.tables)} tables, "
          f"{rows} rows); manifest {manifest_path(dest)}")  # fmt: skip
    return 0


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from toolcallstore.ops.backup import restore

    target = args.to or settings.database_url
    verdict = asyncio.run(restore(Path(args.src), target, quiet=args.quiet))
    print(f"restored {args.src} into {_shown(target)}")
    verdict.print()
    return 0 if verdict.ok else 1


def _shown(url: str) -> str:
    """A database URL without its password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"
