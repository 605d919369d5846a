"""Four `toolcallstore serve` processes on one Postgres database enforce one tenant's monthly cap
together: 400 concurrent calls split between them, against room for 37, succeed exactly 37
times. The counter row is checked and raised in the statement sent with each COMMIT, under its
row lock in the database, not in any process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import Api, Server, requires_postgres, start_server, stop_server
from tests.controls.helpers import ECHO_PRICE_MICROS, execute, ledger_agrees, make_key, set_cap
from toolcallstore.db import Database

ECHO = {"tool": "sandbox.echo", "params": {"message": "m"}}
PROCESSES = 4
CALLS = 400
FITS = 37
REFUSAL_FIELDS = {"limit_source", "cap_usd", "spent_usd", "held_usd", "requested_usd",
                  "remedy_hint"}  # fmt: skip
QUIET = {"TOOLCALLSTORE_ACCESS_LOG": "false"}  # 400 access lines could fill the stdout pipe


async def _start(database_url: str, workdir: Path) -> Server:
    workdir.mkdir()
    return await asyncio.to_thread(start_server, database_url, workdir, **QUIET)


def _api(server: Server, admin_key: str, limits: httpx.Limits) -> Api:
    client = httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits)
    return Api(client, admin_key, app=None)


async def _count(db: Database, table: str) -> int:
    return int(await db.fetch_val(f"SELECT count(*) FROM {table}"))


@requires_postgres
async def test_four_processes_never_overshoot_one_cap(database_url: str, tmp_path: Path) -> None:
    servers: list[Server] = []
    apis: list[Api] = []
    db = Database(database_url)
    try:
        # One after the other: the first migrates and bootstraps; its admin key serves both.
        for name in "abcd"[:PROCESSES]:
            servers.append(await _start(database_url, tmp_path / name))
        limits = httpx.Limits(max_connections=CALLS)
        apis = [_api(s, servers[0].admin_key, limits) for s in servers]
        await db.connect()
        cap = FITS * ECHO_PRICE_MICROS
        assert f"0.{cap:06d}" == "0.051800"
        assert (await set_cap(apis[0], monthly_cap_usd=f"0.{cap:06d}")).status_code == 200
        agent = await make_key(apis[0], ["llm:chat"], auto_quote_max_usd="1.00")
        results = await asyncio.gather(
            *(execute(apis[i % PROCESSES], agent, ECHO) for i in range(CALLS))
        )
        statuses = [r.status_code for r in results]
        assert (statuses.count(200), statuses.count(402)) == (FITS, CALLS - FITS), statuses
        for r in results:
            if r.status_code == 402:
                error = r.json()["error"]
                assert error["code"] == "spend_cap_exceeded"
                assert REFUSAL_FIELDS <= error.keys(), error
        served = [statuses[i::PROCESSES].count(200) for i in range(PROCESSES)]
        assert sum(1 for n in served if n) >= 2, served  # several processes settled calls
        caps = (await apis[1].client.get("/v1/spend_caps", headers=apis[1].auth())).json()
        tenant = caps["data"][0]
        assert (tenant["spent_usd"], tenant["held_usd"]) == ("0.051800", "0.000000")
        assert await _count(db, "receipts") == FITS
        assert await _count(db, "holds") == FITS  # refusals took no hold
        await ledger_agrees(apis[1])
    finally:
        await db.disconnect()
        for api in apis:
            await api.client.aclose()
        outs = [await asyncio.to_thread(stop_server, s) for s in servers]
    for out in outs:
        assert "Traceback" not in out, out
