"""Long-polling (`GET /v1/media/generations/{id}?wait=30`) vs naive polling (the same GET
without `wait`, once a second), in the same run, against one `toolcallstore serve` on Postgres.

Each phase: N generations are seeded (rows as a real POST leaves them: quote, running
execution, queued generation), N concurrent clients each wait for one, and a finisher in this
process marks them succeeded and settled (receipt written) at uniformly random times over
`--seconds`, as the job that runs them would. Per phase:
- server CPU seconds (utime + stime of the server process, /proc) per finished generation;
- database transactions per finished generation (pg_stat_database xact_commit + xact_rollback
  of the bench database: on asyncpg every read outside a transaction is one; the server's
  writes, audit batches, are a transaction each), so "statements" below are transactions;
- notice latency: from the finisher's COMMIT to the client holding the succeeded answer;
  p50 / p99.
Target (issue 14): long-poll <= 1/10 of naive per finished generation; p99 notice <= 100 ms.

    flock -x /tmp/bench.lock python bench/media_polling.py [--jobs 1000 --seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import admin_post, start_server  # noqa: E402

from toolcallstore.queue.watch import CHANNEL  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PORT = 27140


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def xacts(conn: asyncpg.Connection, name: str) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    value = await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", name
    )
    return int(value)


async def seed(conn: asyncpg.Connection, tenant: str, key_id: str, n: int, tag: str) -> list[str]:
    now = int(time.time() * 1_000_000)
    params = orjson.dumps({"prompt": "bench", "kind": "image", "model": "image-fast",
                           "size": "512x512", "n": 1}).decode()  # fmt: skip
    ids = []
    quotes, executions, generations = [], [], []
    for i in range(n):
        q, e, g = f"q_bench{tag}{i:05d}", f"exe_bench{tag}{i:05d}", f"gen_bench{tag}{i:05d}"
        quotes.append((q, tenant, key_id, 0, "media.image", "x", params, 1000, 1000, 800, "[]",
                       0, "[]", 1, "used", now + 10**9, now, now))  # fmt: skip
        executions.append((e, tenant, key_id, q, "media.image", 0, "running", f"hold_{tag}{i}",
                           f"req_{tag}{i}", now))  # fmt: skip
        generations.append((g, e, tenant, 0, "image", "image-fast", params, "queued", 0.0, "[]",
                            now, now))  # fmt: skip
        ids.append(g)
    await conn.copy_records_to_table("quotes", records=quotes, columns=[
        "id", "tenant_id", "api_key_id", "livemode", "tool", "params_hash", "params",
        "price_micros", "max_cost_micros", "provider_cost_micros", "breakdown",
        "requires_approval", "approval_reasons", "inline", "state", "expires_at", "used_at",
        "created_at"])  # fmt: skip
    await conn.copy_records_to_table("executions", records=executions, columns=[
        "id", "tenant_id", "api_key_id", "quote_id", "tool", "livemode", "state", "hold_id",
        "request_id", "created_at"])  # fmt: skip
    await conn.copy_records_to_table("media_generations", records=generations, columns=[
        "id", "execution_id", "tenant_id", "livemode", "kind", "model", "params", "status",
        "progress", "assets", "created_at", "updated_at"])  # fmt: skip
    return ids


async def finisher(pool: asyncpg.Pool, ids: list[str], seconds: float,
                   done_at: dict[str, float]) -> None:  # fmt: skip
    """Finish each generation at a random time: generation succeeded + execution settled, in
    one transaction ending with the NOTIFY, as the job and its close do."""
    start = time.monotonic()
    schedule = sorted((random.uniform(0, seconds), g) for g in ids)

    async def finish(at: float, gid: str) -> None:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        now = int(time.time() * 1_000_000)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE media_generations SET status = 'succeeded', progress = 1,"
                " finished_at = $1, updated_at = $1 WHERE id = $2", now, gid)  # fmt: skip
            await conn.execute(
                "UPDATE executions SET state = 'succeeded', receipt_id = $1, price_micros = 1000,"
                " finished_at = $2 WHERE id = $3", "rcpt_" + gid, now,
                "exe_" + gid.removeprefix("gen_"))  # fmt: skip
            # As the close of a real generation's execution does (tools/media.py).
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"media_generations:{gid}")
        done_at[gid] = time.monotonic()

    await asyncio.gather(*(finish(at, gid) for at, gid in schedule))


async def client(
    session: aiohttp.ClientSession, base: str, gid: str, headers: dict[str, str],
    long_poll: bool, seen_at: dict[str, float], errors: list[str],
) -> None:  # fmt: skip
    url = f"{base}/v1/media/generations/{gid}" + ("?wait=30" if long_poll else "")
    while True:
        try:
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    errors.append(f"{resp.status} {body[:100]!r}")
                    await asyncio.sleep(1)
                    continue
        except aiohttp.ClientError as exc:
            errors.append(type(exc).__name__)
            await asyncio.sleep(1)
            continue
        answer = orjson.loads(body)
        if answer["status"] == "succeeded" and answer["receipt_id"]:
            seen_at[gid] = time.monotonic()
            return
        if not long_poll:
            await asyncio.sleep(1)


async def phase(name: str, long_poll: bool, args: argparse.Namespace, server: Any, db_name: str,
                tenant: str, key_id: str, agent: str) -> dict[str, Any]:  # fmt: skip
    url = server.database_url
    pool = await asyncpg.create_pool(url, min_size=2, max_size=8)
    async with pool.acquire() as conn:
        ids = await seed(conn, tenant, key_id, args.jobs, name[0])
    stats = await asyncpg.connect(PG_ADMIN)
    headers = {"Authorization": f"Bearer {agent}"}
    done_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0, x0 = cpu_seconds(server.process.pid), await xacts(stats, db_name)
        # The finisher's own transactions (one per generation) are subtracted below.
        clients = [asyncio.create_task(client(session, server.base_url, g, headers, long_poll,
                                              seen_at, errors)) for g in ids]  # fmt: skip
        await asyncio.sleep(1)  # every client asking before the first finish
        await finisher(pool, ids, args.seconds, done_at)
        try:
            await asyncio.wait_for(asyncio.gather(*clients), timeout=90)
        except TimeoutError:
            raise SystemExit(f"{name}: clients still waiting; errors: {errors[:5]}") from None
        cpu1, x1 = cpu_seconds(server.process.pid), await xacts(stats, db_name)
    await stats.close()
    await pool.close()
    notice = sorted(1000 * (seen_at[g] - done_at[g]) for g in ids)
    finished = len(ids)
    return {
        "phase": name,
        "finished": finished,
        "cpu_s_per_job": (cpu1 - cpu0) / finished,
        "db_xacts_per_job": (x1 - x0 - finished) / finished,
        "p50_ms": statistics.median(notice),
        "p99_ms": notice[int(0.99 * (len(notice) - 1))],
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    db_name = "bench_media_" + secrets.token_hex(4)
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f"CREATE DATABASE {db_name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{db_name}"
    server = start_server(PORT, url, TOOLCALLSTORE_WORKERS="0", TOOLCALLSTORE_ACCESS_LOG="false",
                          TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0")  # fmt: skip
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            made = admin_post(http, server.admin_key, "/v1/keys",
                              {"scopes": ["media:generate"], "name": "bench agent"})  # fmt: skip
            me = http.get("/v1/me", headers={"Authorization": f"Bearer {made['secret']}"}).json()
        results = []
        for name, long_poll in (("long-poll", True), ("naive", False)):
            results.append(await phase(name, long_poll, args, server, db_name, me["tenant_id"],
                                       me["id"], made["secret"]))  # fmt: skip
            print(results[-1], flush=True)
    finally:
        server.stop()
        await admin.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        await admin.close()
    long, naive = results
    print(f"\n{args.jobs} generations finishing over {args.seconds:g} s, {args.jobs} clients")
    print("| | long-poll ?wait=30 | naive 1/s | long/naive |")
    print("|---|---|---|---|")
    for key, label in (("cpu_s_per_job", "server CPU s per finished job"),
                       ("db_xacts_per_job", "DB transactions per finished job"),
                       ("p50_ms", "p50 notice ms"), ("p99_ms", "p99 notice ms")):  # fmt: skip
        print(f"| {label} | {long[key]:.4f} | {naive[key]:.4f} |"
              f" {long[key] / naive[key] if naive[key] else float('nan'):.3f} |")  # fmt: skip
    print(f"| client errors | {long['errors']} | {naive['errors']} | |")


if __name__ == "__main__":
    asyncio.run(main())
