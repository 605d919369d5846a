"""Issue 22, defect 6: one key floods while another tenant's key works; the victim's p99 must stay
within 2x of its unloaded value.

One server subprocess (SQLite) with the default limits (key 100/s, burst 200). The victim, a
key of another tenant, runs a steady 20 operations a second, each a quote then its billable
execution (two POSTs, the real work of an agent), plus a read of /v1/me. Phases, side by side:
  1. the victim alone (its unloaded p99);
  2. the victim while the flooder's key hammers GET /v1/receipts with wrk (64 connections,
     closed loop): past its burst the flooder gets 429s;
  3. the same flood against a second server started with the limits off, for contrast.

    flock -x /tmp/bench.lock nice -n 0 python bench/rate_limit.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer, Load, admin_post, drive, load_generator, start_server  # noqa: E402

PORTS = (25221, 25222)
VICTIM_RATE = 20.0  # operations a second
FLOOD_CONNECTIONS = 64
# The server's defaults (settings.py), set explicitly: bench/common.py turns limits off.
DEFAULT_LIMITS = {
    "TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S": "100",
    "TOOLCALLSTORE_RATE_LIMIT_KEY_BURST": "200",
    "TOOLCALLSTORE_RATE_LIMIT_TENANT_PER_S": "1000",
    "TOOLCALLSTORE_RATE_LIMIT_TENANT_BURST": "2000",
}


def make_key(server: BenchServer, name: str, scopes: list[str]) -> str:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        tenant = admin_post(client, server.admin_key, "/v1/tenants", {"name": name})
        key = admin_post(client, server.admin_key, "/v1/keys",
                         {"scopes": scopes, "tenant_id": tenant["id"], "name": name})  # fmt: skip
    return str(key["secret"])


def victim(server: BenchServer, secret: str, seconds: float) -> dict[str, list[float]]:
    """Open loop at VICTIM_RATE: latencies (ms) of the quote+execute pair and of the read."""
    auth = {"Authorization": f"Bearer {secret}"}
    out: dict[str, list[float]] = {"execute": [], "read": [], "errors": []}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n / VICTIM_RATE
            if due > now:
                time.sleep(due - now)
            n += 1
            t0 = time.perf_counter()
            body = {"tool": "sandbox.echo", "params": {"message": "hi"}}
            q = client.post("/v1/quotes", json=body,
                            headers={**auth, "Idempotency-Key": secrets.token_hex(8)})  # fmt: skip
            ok = q.status_code == 200
            if ok:
                headers = {**auth, "Idempotency-Key": secrets.token_hex(8)}
                body = {"quote_id": q.json()["id"]}
                e = client.post("/v1/executions", json=body, headers=headers)
                ok = e.status_code == 200
            t1 = time.perf_counter()
            r = client.get("/v1/me", headers=auth)
            t2 = time.perf_counter()
            out["execute"].append((t1 - t0) * 1000)
            out["read"].append((t2 - t1) * 1000)
            if not ok or r.status_code != 200:
                out["errors"].append(1)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def phase(server: BenchServer, victim_key: str, flood_key: str | None, seconds: float) -> str:
    flood: list[Load] = []
    thread = None
    if flood_key is not None:
        headers = {"Authorization": f"Bearer {flood_key}"}
        url = f"{server.base_url}/v1/receipts"
        thread = threading.Thread(
            target=lambda: flood.append(drive(url, FLOOD_CONNECTIONS, int(seconds) + 2, headers))
        )
        thread.start()
        time.sleep(1.0)  # the flood is running before the victim starts
    got = victim(server, victim_key, seconds)
    if thread is not None:
        thread.join()
    line = (
        f"victim execute p50 {statistics.median(got['execute']):6.1f} ms p99"
        f" {p99(got['execute']):7.1f} ms | read p99 {p99(got['read']):6.1f} ms |"
        f" {len(got['execute'])} ops, {len(got['errors'])} errors"
    )
    if flood:
        f = flood[0]
        line += f" | flood {f.rps:7.0f} req/s, non-2xx {f.errors}, p99 {f.p99_ms:.1f} ms"
    return line + f"\n  EXEC_P99={p99(got['execute']):.2f} READ_P99={p99(got['read']):.2f}"


def processes_check(pg_url: str, seconds: float) -> None:
    """`serve --processes 2` on Postgres, one key of 20/s with a burst of 20: what all clients
    together get admitted, spread over 8 connections, and over a single keep-alive one."""
    import asyncio

    import asyncpg

    name = f"tcs_rl_{secrets.token_hex(4)}"
    base, _, _ = pg_url.rpartition("/")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    server = start_server(PORTS[0], f"{base}/{name}", TOOLCALLSTORE_PROCESSES="2",
                          **DEFAULT_LIMITS)  # fmt: skip
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            key = admin_post(client, server.admin_key, "/v1/keys",
                             {"scopes": ["jobs:read"], "rate_limit_per_s": 20,
                              "rate_limit_burst": 20})["secret"]  # fmt: skip
        auth = {"Authorization": f"Bearer {key}"}
        for connections in (8, 1):
            time.sleep(2)  # buckets full again
            counts = {"ok": 0, "limited": 0}
            lock = threading.Lock()
            end = time.monotonic() + seconds

            def client_loop(
                end: float = end, lock: threading.Lock = lock, counts: dict[str, int] = counts
            ) -> None:
                with httpx.Client(base_url=server.base_url, timeout=30) as c:
                    while time.monotonic() < end:
                        status = c.get("/v1/me", headers=auth).status_code
                        with lock:
                            counts["ok" if status == 200 else "limited"] += 1

            threads = [threading.Thread(target=client_loop) for _ in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"--processes 2, key 20/s burst 20, {connections} connection(s), {seconds:g} s:"
                  f" {counts['ok']} admitted ({counts['ok'] / seconds:.1f}/s; configured total"
                  f" {20 + 20 * seconds:.0f}), {counts['limited']} answered 429")  # fmt: skip
    finally:
        server.stop()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--processes-check", metavar="POSTGRES_URL",
                        help="only measure how a key's limit holds across 2 processes")  # fmt: skip
    args = parser.parse_args()
    if args.processes_check:
        processes_check(args.processes_check, args.seconds)
        return
    print(
        f"load generator: {load_generator()}; victim {VICTIM_RATE:g} ops/s, flood"
        f" {FLOOD_CONNECTIONS} connections on GET /v1/receipts, {args.seconds:g} s per phase"
    )
    results: dict[str, str] = {}
    limited = start_server(PORTS[0], **DEFAULT_LIMITS)
    try:
        victim_key = make_key(limited, "victim", ["llm:chat", "quotes:create", "receipts:read"])
        flood_key = make_key(limited, "flooder", ["receipts:read"])
        results["1 unloaded (limits on)"] = phase(limited, victim_key, None, args.seconds)
        results["2 flood, limits on"] = phase(limited, victim_key, flood_key, args.seconds)
    finally:
        limited.stop()
    off = {"TOOLCALLSTORE_RATE_LIMIT_KEY_PER_S": "0", "TOOLCALLSTORE_RATE_LIMIT_TENANT_PER_S": "0"}
    unlimited = start_server(PORTS[1], **off)
    try:
        victim_key = make_key(unlimited, "victim", ["llm:chat", "quotes:create", "receipts:read"])
        flood_key = make_key(unlimited, "flooder", ["receipts:read"])
        results["0 unloaded (limits off)"] = phase(unlimited, victim_key, None, args.seconds)
        results["3 flood, limits off"] = phase(unlimited, victim_key, flood_key, args.seconds)
    finally:
        unlimited.stop()
    values = {}
    for name in sorted(results):
        text = results[name]
        print(f"{name:26s} {text.splitlines()[0]}")
        values[name] = float(text.split("EXEC_P99=")[1].split()[0])
    base = values["1 unloaded (limits on)"]
    on = values["2 flood, limits on"] / base
    off_ratio = values["3 flood, limits off"] / values["0 unloaded (limits off)"]
    verdict = "PASS" if on <= 2.0 else "MISSED"
    print(f"victim execute p99 under flood / unloaded: limits on {on:.2f}x ({verdict}, target"
          f" <= 2x), limits off {off_ratio:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
