"""`toolcallstore serve`: migrate, bootstrap an empty database, then run uvicorn: in this process,
or (`--processes N`, Postgres only) in N processes sharing the listening socket, each with its
own lifespan and worker pool."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from toolcallstore.app import begin_drain, create_app
from toolcallstore.bootstrap import bootstrap
from toolcallstore.db import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.errors import ConfigError
from toolcallstore.head_limits import HeadLimitProtocol
from toolcallstore.logs import configure_logging
from toolcallstore.settings import Settings

# What each process of `serve --processes N` runs to build its app.
APP_FACTORY = "toolcallstore.server:app_from_environment"


async def prepare(settings: Settings) -> None:
    db = Database(settings.database_url, readers=1)
    await db.connect()
    try:
        await migrate(db)
        key_file = settings.resolved_admin_key_file()
        created = await bootstrap(db, key_file)
    finally:
        await db.disconnect()
    if created is not None:
        tenant_id, secret = created
        print(
            f"Created tenant {tenant_id} and an admin test-mode key. It is shown only now and "
            f"saved (mode 0600) to {key_file}:\n\n    {secret}\n",
            flush=True,
        )


def tune_gc() -> None:
    """Freeze what exists at start-up and collect the young generation less often.

    Measured with bench/gateway_overhead.py at 32 connections (2026-11-26): with CPython's
    defaults the collector took ~9% of the CPU (each full collection walked the ~90,000 objects
    of the imported modules, ~30 ms, a p99 spike each time); frozen, those are never walked
    again, and a first threshold of 10,000 instead of 700 leaves ~3%: +12% calls per second.
    Request objects are freed by reference counting; cycles still go, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def check_processes(settings: Settings) -> None:
    if settings.processes < 1:
        raise ConfigError(f"--processes must be at least 1, not {settings.processes}")
    if settings.processes > 1 and settings.is_sqlite:
        raise ConfigError(
            f"--processes {settings.processes} needs Postgres: SQLite allows one writer at a "
            "time, so more processes would only queue behind one another for it. Serve SQLite "
            "with one process (raise TOOLCALLSTORE_WORKERS for more jobs at once), or set "
            "TOOLCALLSTORE_DATABASE_URL=postgresql://..."
        )


def app_from_environment() -> Starlette:
    """One process of `serve --processes N`: the settings its parent exported, its own app."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    app = create_app(settings)
    tune_gc()
    return app


def serve(settings: Settings, app: Starlette | None = None, *, factory: str = APP_FACTORY) -> None:
    """Bootstrap, then serve `create_app(settings)` (or `app`, built from the same settings:
    benchmarks add routes to it) with uvicorn. With `settings.processes` > 1, each process
    builds its app with `factory` ("module:function", reading `Settings.from_env()`) instead."""
    configure_logging(settings.log_level)
    check_processes(settings)
    if settings.processes > 1 and app is not None:
        raise ConfigError("several processes build their own app: pass `factory`, not `app`")
    asyncio.run(prepare(settings))  # once, before any process serves: no bootstrap race
    print(f"ToolCall Store listening on http://{settings.host}:{settings.port}", flush=True)
    if settings.processes > 1:
        # Spawned processes start from the environment: hand them these settings (command
        # line overrides included). uvicorn binds the socket here and shares it; on SIGTERM
        # or SIGINT it stops every process (each runs its lifespan's shutdown) and exits.
        os.environ.update(settings.to_env())
        _run_uvicorn(settings, factory, factory=True, workers=settings.processes)
        return
    app = app or create_app(settings)
    tune_gc()
    _run_uvicorn(settings, app)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when shutdown begins: uvicorn then stops listening
    and waits up to the grace period for open requests (streams included) before the
    lifespan's shutdown; the app stops claiming jobs at that moment too, and its running jobs
    get what is left of the same grace period (app.begin_drain)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        begin_drain()
        await super().shutdown(sockets)


def _run_uvicorn(
    settings: Settings, app: Starlette | str, *, factory: bool = False, workers: int | None = None
) -> None:
    options = _uvicorn_options(settings)
    if workers is not None and workers > 1:
        # Each process builds its own uvicorn server (which we cannot subclass there): its
        # jobs get their own grace period after its requests' (ecosystem.config.js allows it).
        uvicorn.run(app, factory=factory, workers=workers, **options)
        return
    config = uvicorn.Config(app, factory=factory, **options)
    server = DrainingServer(config)
    server.run()
    if not server.started:
        raise SystemExit(3)


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return dict(
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=HeadLimitProtocol,  # httptools, with the request head capped
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
        access_log=False,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
