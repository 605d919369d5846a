"""Does Postgres with several processes outrun one SQLite process? Controlled executions/s.

    python bench/scale_out.py --postgres postgresql://postgres@127.0.0.1:5432/test
        [--tenants 50] [--processes 2,4] [--connections 32] [--seconds 10] [--rounds 3]

Target (issue 20): executions/s of the store on Postgres with 2 `serve` processes >= 1.0x the
store on SQLite with its one process, measured in the same run, with the load spread over 50
tenants; also 4 processes, and 2 processes with one tenant alone (every call on one counter).

Each store is a fresh database served by `toolcallstore serve` (`--processes N` on Postgres).
Every request is an inline-quoted `POST /v1/executions` of `sandbox.echo` (auth, idempotency
claim, stored quote, spend-cap hold against a cap, tool run, settlement, receipt, ledger,
events, audit), the flow bench/controls_overhead.py calls "controlled"; each tenant has a
monthly cap and a key, and the keys take turns (bench/scale_out.lua). Rounds alternate the
stores so that machine noise hits all of them (each store is started for its run, warmed up,
measured and stopped); each round's rate is divided by the SQLite store's of the same round,
and the median round decides.

Afterwards each server is stopped and checked as controls_overhead.py checks its own: no non-2xx
answer or socket error; one succeeded execution, one receipt, a charge and a provider_cost entry
and one 200 audit row per execution; no open hold; spent = receipts; the audit chain verifies,
with nothing left unsealed. It also prints how long rows waited to be sealed (Postgres). It
exits 1 when a check fails; missing the target is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RATE_LIMITS_OFF, BenchServer, admin_post  # noqa: E402
from controls_overhead import (  # noqa: E402
    Run,
    _pg_admin,
    _stored_failures,
    audit_verify,
    free_port,
    parse_wrk,
    stored_facts,
)
from toolcallstore.db import Database  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "scale_out.lua"
TARGET = 1.0
TENANT_CAP_USD = "100000.00"  # checked on every hold, never reached


@dataclass
class Store:
    name: str
    processes: int
    tenants: int
    postgres: bool
    workdir: Path = Path()
    database_url: str = ""
    keys: list[str] = field(default_factory=list)
    rounds: list[Run] = field(default_factory=list)
    seen_ok: int = 0  # over every run, warm-up included
    runs: int = 0
    bad: int = 0  # non-2xx answers and socket errors


def main() -> None:
    args = parse_args()
    stores = [Store("sqlite x1", 1, args.tenants, postgres=False)]
    for n in args.processes:
        stores.append(Store(f"postgres x{n}", n, args.tenants, postgres=True))
    stores.append(Store(f"postgres x{args.processes[0]}, 1 tenant", args.processes[0], 1, True))
    try:
        for store in stores:
            store.workdir = Path(tempfile.mkdtemp(prefix="tcs-scale-"))
            store.database_url = (
                new_pg_database(args.postgres)
                if store.postgres
                else f"sqlite:///{store.workdir / 'store.db'}"
            )
            with serving(store) as server:
                store.keys = tenant_keys(server, store.tenants)
        run_rounds(stores, args)
        report(stores, args)
        failures = []
        for store in stores:
            failures += [f"{store.name}: {f}" for f in verify(store, args.connections)]
    finally:
        for store in stores:
            if store.postgres and store.database_url:
                name = urlsplit(store.database_url).path[1:]
                asyncio.run(_pg_admin(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    print("checks: all passed")


@contextmanager
def serving(store: Store) -> Iterator[BenchServer]:
    """`toolcallstore serve` on the store's database for one run; only one store is up at a
    time (four processes' pools alone take half of Postgres's default 100 connections)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    env.update(TOOLCALLSTORE_DATABASE_URL=store.database_url,
               TOOLCALLSTORE_ADMIN_KEY_FILE=str(store.workdir / "admin-key"),
               TOOLCALLSTORE_PROCESSES=str(store.processes), **RATE_LIMITS_OFF)  # fmt: skip
    port = free_port()
    log = (store.workdir / "server.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "toolcallstore", "serve", "--port",
                                str(port)], cwd=store.workdir, env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    server = BenchServer(process, f"http://127.0.0.1:{port}", "", store.workdir,
                         store.database_url)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _ready(server.base_url):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"server did not start; see {store.workdir / 'server.log'}")
            time.sleep(0.1)
        server.admin_key = (store.workdir / "admin-key").read_text().strip()
        yield server
    finally:
        server.stop()
        log.close()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=1).is_success
    except httpx.TransportError:
        return False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", required=True, metavar="SERVER_URL",
                        help="Postgres server; each store gets a fresh database on it")  # fmt: skip
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--processes", default="2,4",
                        type=lambda s: [int(n) for n in s.split(",")])  # fmt: skip
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3, help="seconds per store, not counted")
    return parser.parse_args()


def new_pg_database(server_url: str) -> str:
    name = f"tcs_bench_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(server_url, f'CREATE DATABASE "{name}"'))
    return urlsplit(server_url)._replace(path=f"/{name}").geturl()


def tenant_keys(server: BenchServer, tenants: int) -> list[str]:
    """One agent key per tenant (the bootstrap tenant first), each tenant with a monthly cap."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:

        def post(path: str, body: dict[str, object]) -> dict[str, Any]:
            result: dict[str, Any] = admin_post(client, server.admin_key, path, body)
            return result

        me = client.get("/v1/me", headers={"Authorization": f"Bearer {server.admin_key}"}).json()
        tenant_ids = [me["tenant_id"]]
        tenant_ids += [str(post("/v1/tenants", {"name": f"t{i}"})["id"]) for i in range(1, tenants)]
        keys = []
        for tenant_id in tenant_ids:
            post("/v1/spend_caps", {"monthly_cap_usd": TENANT_CAP_USD, "tenant_id": tenant_id})
            body = {"name": "bench inline", "scopes": ["llm:chat"], "auto_quote_max_usd": "1.00"}
            key = post("/v1/keys", {**body, "tenant_id": tenant_id})
            keys.append(str(key["secret"]))
    return keys


def drive(store: Store, server: BenchServer, connections: int, seconds: float) -> Run:
    prefix = secrets.token_hex(6)  # idempotency keys never repeat across runs
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
           "-s", str(SCRIPT), f"{server.base_url}/v1/executions", "--", prefix,
           *store.keys]  # fmt: skip
    run = parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    store.runs += 1
    store.seen_ok += run.ok
    store.bad += run.load.errors + run.socket_errors
    return run


def run_rounds(stores: list[Store], args: argparse.Namespace) -> None:
    """Each round starts every store in turn, warms it up, measures it and stops it."""
    for _ in range(args.rounds):
        for store in stores:
            with serving(store) as server:
                drive(store, server, args.connections, args.warmup)
                store.rounds.append(drive(store, server, args.connections, args.seconds))


def report(stores: list[Store], args: argparse.Namespace) -> None:
    base = stores[0]
    print(f"wrk -t1 -c{args.connections}; {args.rounds} rounds of {args.seconds:g} s per store"
          f" (after {args.warmup:g} s warm-up each); inline-quoted sandbox.echo"
          " executions")  # fmt: skip
    print(f"{'round':<6} {'store':<26} {'exec/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7}")
    for i in range(args.rounds):
        for store in stores:
            run = store.rounds[i]
            ratio = run.load.rps / base.rounds[i].load.rps
            print(f"{i + 1:<6} {store.name + f' ({store.tenants} tenants)':<26}"
                  f" {run.load.rps:>8.0f} {run.load.p50_ms:>8.2f} {run.load.p99_ms:>8.2f}"
                  f" {ratio:>7.3f}")  # fmt: skip
    for store in stores[1:]:
        ratios = [r.load.rps / b.load.rps for r, b in zip(store.rounds, base.rounds, strict=True)]
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
        print(f"median ratio {store.name} ({store.tenants} tenants) : {base.name} ="
              f" {statistics.median(ratios):.3f} ({spread})")  # fmt: skip
    two = next(s for s in stores if s.postgres and s.tenants > 1)
    median = statistics.median(
        r.load.rps / b.load.rps for r, b in zip(two.rounds, base.rounds, strict=True)
    )
    verdict = "meets" if median >= TARGET else "MISSES"
    print(f"target {two.name} >= {TARGET:.1f} x {base.name}: {verdict} ({median:.3f})")


def verify(store: Store, connections: int) -> list[str]:
    url = store.database_url
    failures = []
    if store.bad:
        failures.append(f"{store.bad} non-2xx answers or socket errors")
    facts = asyncio.run(stored_facts(url))
    print(f"{store.name}: stored " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    failures += _stored_failures(facts)
    # wrk cuts each run off with up to `connections` requests in flight that the server finishes.
    if not store.seen_ok <= facts["receipts"] <= store.seen_ok + connections * store.runs:
        failures.append(f"wrk saw {store.seen_ok} succeed but receipts = {facts['receipts']}")
    if store.postgres:
        print(f"{store.name}: {asyncio.run(seal_lag(url))}")
    failures += audit_verify(url)
    return failures


async def seal_lag(url: str) -> str:
    """How long rows waited between being written and being sealed into the chain."""
    db = Database(url, readers=1)
    await db.connect()
    try:
        row = await db.fetch_one(
            "SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY sealed_at - ts)"
            " AS p50, percentile_cont(0.99) WITHIN GROUP (ORDER BY sealed_at - ts) AS p99,"
            " max(sealed_at - ts) AS worst FROM audit_log WHERE sealed_at IS NOT NULL"
        )
    finally:
        await db.disconnect()
    assert row is not None
    return (f"{row['n']} audit rows sealed; written -> sealed p50 {row['p50'] / 1000:.0f} ms,"
            f" p99 {row['p99'] / 1000:.0f} ms, max {row['worst'] / 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
