"""Webhook deliveries per second through the queue vs the same payloads posted directly.

    python bench/webhooks.py [--events 3000] [--rounds 3] [--concurrency 32] [--database-url ...]

Target (issue 17): deliveries/s through the job queue (events fanned out by the dispatcher,
one `webhooks.deliver` job each: load, sign, POST through the SSRF guard, record the attempt,
finish the job) >= 0.5x the rate of posting the same signed bodies straight to the same
loopback receiver with httpx at the same concurrency; nothing lost. The receiver runs in its
own process and counts distinct webhook-ids. Rounds alternate the two ways; medians reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from httpx_aiohttp import AiohttpTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import start_server  # noqa: E402
from toolcallstore.db import Database  # noqa: E402
from toolcallstore.events import record_events  # noqa: E402
from toolcallstore.webhooks.signing import new_secret, signature_headers  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def received(client: httpx.AsyncClient, receiver: str, path: str) -> int:
    stats = (await client.get(f"{receiver}/stats", params={"path": path})).json()
    return int(stats["distinct"])


async def direct_round(
    receiver: str, path: str, events: int, concurrency: int, *, aiohttp_transport: bool
) -> float:
    """Post `events` signed bodies with httpx (its default transport, or httpx-aiohttp's as
    the delivery job uses), `concurrency` at a time; returns deliveries/s."""
    secret = new_secret()
    bodies = [
        (f"evt_direct_{path}_{i}", b'{"id":"evt","type":"quote.created","created":0,"data":{}}')
        for i in range(events)
    ]
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = AiohttpTransport(limits=limits) if aiohttp_transport else None
    async with httpx.AsyncClient(limits=limits, timeout=15, transport=transport) as client:

        async def worker() -> None:
            while not queue.empty():
                message_id, body = queue.get_nowait()
                headers = signature_headers(message_id, body, [secret], int(time.time()))
                response = await client.post(f"{receiver}{path}", content=body, headers=headers)
                assert response.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        assert await received(client, receiver, path) == events, "direct posts were lost"
    return events / elapsed


async def queue_round(db: Database, tenant: str, receiver: str, path: str, events: int) -> float:
    """Record `events` events at once; returns deliveries/s until the receiver has them all."""
    batch = [("quote.created", {"round": path, "n": i}) for i in range(events)]
    async with httpx.AsyncClient(timeout=15) as client:
        started = time.perf_counter()
        await db.run_sync(record_events, tenant, batch, livemode=False)
        while await received(client, receiver, path) < events:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    return events / elapsed


async def run(args: argparse.Namespace, server_url: str, admin_key: str, database_url: str,
              receiver: str) -> dict[str, list[float]]:  # fmt: skip
    auth = {"Authorization": f"Bearer {admin_key}"}
    rates: dict[str, list[float]] = {"queue": [], "direct": [], "direct_aiohttp": []}
    db = Database(database_url)
    await db.connect()
    try:
        async with httpx.AsyncClient(base_url=server_url, timeout=30) as client:
            tenant = (await client.get("/v1/me", headers=auth)).json()["tenant_id"]
            endpoints = []
            for r in range(args.rounds + 1):
                created = await client.post(
                    "/v1/webhook_endpoints",
                    json={"url": f"{receiver}/queue{r}", "events": ["quote.*"]},
                    headers={**auth, "Idempotency-Key": f"bench-{r}"},
                )  # fmt: skip
                assert created.status_code == 200, created.text
                endpoints.append(created.json()["id"])
        for r in range(args.rounds + 1):
            # One endpoint enabled per round, so each round's events go to its own path.
            await set_only_enabled(server_url, auth, endpoints, r)
            queue_rate = await queue_round(db, tenant, receiver, f"/queue{r}", args.events)
            direct_rate = await direct_round(
                receiver, f"/direct{r}", args.events, args.concurrency, aiohttp_transport=False
            )
            aiohttp_rate = await direct_round(
                receiver, f"/aiohttp{r}", args.events, args.concurrency, aiohttp_transport=True
            )
            # fmt: skip
            if r == 0:
                continue  # warm-up
            rates["queue"].append(queue_rate)
            rates["direct"].append(direct_rate)
            rates["direct_aiohttp"].append(aiohttp_rate)
            print(f"round {r}: queue {queue_rate:.0f}/s, direct httpx {direct_rate:.0f}/s,"
                  f" direct httpx+aiohttp {aiohttp_rate:.0f}/s", flush=True)  # fmt: skip
        left = await db.fetch_val(
            "SELECT count(*) FROM webhook_deliveries WHERE state <> 'succeeded'"
        )
        total = await db.fetch_val("SELECT count(*) FROM webhook_deliveries")
        assert int(left) == 0 and int(total) == args.events * (args.rounds + 1), (left, total)
    finally:
        await db.disconnect()
    return rates


async def set_only_enabled(base: str, auth: dict[str, str], endpoints: list[str], r: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i, endpoint in enumerate(endpoints):
            response = await client.patch(f"/v1/webhook_endpoints/{endpoint}",
                                          json={"disabled": i != r}, headers=auth)  # fmt: skip
            assert response.status_code == 200, response.text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    receiver_port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("webhook_receiver.py")), str(receiver_port)]
    )
    server = start_server(
        free_port(),
        args.database_url,
        TOOLCALLSTORE_MASTER_KEY="k1:" + base64.b64encode(os.urandom(32)).decode(),
        TOOLCALLSTORE_WORKERS=str(args.concurrency),
        TOOLCALLSTORE_QUEUE_LIMITS=f"webhooks={args.concurrency}",
        TOOLCALLSTORE_WEBHOOK_DISPATCH_MS="20",
        TOOLCALLSTORE_ACCESS_LOG="false",
    )
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{receiver_url}/stats", params={"path": "/"}, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        rates = asyncio.run(run(args, server.base_url, server.admin_key, server.database_url,
                                receiver_url))  # fmt: skip
    finally:
        server.stop()
        receiver.terminate()
        receiver.wait()
    queue, direct = statistics.median(rates["queue"]), statistics.median(rates["direct"])
    aiohttp = statistics.median(rates["direct_aiohttp"])
    database = "Postgres" if args.database_url else "SQLite"
    print(f"{database}: {args.events} events a round, {args.rounds} rounds, concurrency "
          f"{args.concurrency}; medians: queue {queue:.0f} deliveries/s; direct httpx "
          f"{direct:.0f} posts/s (ratio {queue / direct:.3f}, target >= 0.5); direct httpx on "
          f"the aiohttp transport {aiohttp:.0f} posts/s (ratio {queue / aiohttp:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
