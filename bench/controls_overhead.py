"""`sandbox.echo` under every money control vs the same tool with the controls left out.

    python bench/controls_overhead.py [--connections 32] [--seconds 10] [--rounds 3]
        [--warmup 2] [--no-quoted] [--sql-timing] [--database-url URL | --postgres SERVER_URL]

Target (issue text): an inline-quoted `POST /v1/executions` of `sandbox.echo` (auth,
idempotency claim, stored quote, spend-cap hold, tool run, settlement, receipt, ledger, events,
audit) keeps >= 50% of the rate of the same call with the controls disabled, at 32 connections
on SQLite. "Controls disabled" is `POST /bench/echo` of bench/uncontrolled_app.py on the same
server process: same middleware (auth, audit row, access log), same scope and param checks,
same tool runner, nothing stored. Secondary figure: the two-request flow (`POST /v1/quotes`,
then `POST /v1/executions {"quote_id"}`), in executions per second.

Rounds alternate the flows so that machine noise hits all of them; each round's controlled
rate is divided by the uncontrolled rate of the same round, and the median round decides.
Between runs the script waits until the audit writer has caught up, so that one flow's backlog
is not flushed on the next flow's time. Afterwards it stops the server and checks that nothing
was skipped: no non-2xx answer or socket error, one succeeded execution, one receipt, two ledger
entries and one 200 audit row per successful controlled request, no open hold, spend counters
that add up, and an intact audit chain (`toolcallstore audit verify`). It exits 1 when a check
fails; missing the 50% target is reported, not an error.

`--sql-timing` (SQLite) adds one run of each single-request flow after the rounds, with every
statement of the write batches timed by the server (bench/uncontrolled_app.py --sql-timing),
and prints what the controls' statements alone cost per call: the ceiling of the ratio if
everything else they do were free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
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

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolcallstore  # noqa: E402
from common import RATE_LIMITS_OFF, BenchServer, Load, _wrk_ms, admin_post  # noqa: E402
from toolcallstore.db import Database  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = BENCH_DIR / "controls_overhead.lua"
TARGET = 0.50
BIG_CAP_USD = "1000000.00"  # a cap that is checked on every hold but never reached


@dataclass(frozen=True)
class Flow:
    name: str
    path: str
    mode: str  # the lua script's mode: single | quoted
    key: str  # which agent key drives it: inline | quoted


UNCONTROLLED = Flow("uncontrolled", "/bench/echo", "single", "inline")
CONTROLLED = Flow("controlled", "/v1/executions", "single", "inline")
QUOTED = Flow("quote+execute", "/v1/quotes", "quoted", "quoted")


@dataclass
class Run:
    load: Load
    requests: int
    seconds: float
    socket_errors: int
    executions_ok: int  # quoted mode only: executions answered 200

    @property
    def ok(self) -> int:
        return self.requests - self.load.errors

    @property
    def executions_per_s(self) -> float:
        return self.executions_ok / self.seconds


@dataclass
class Tally:
    """What wrk saw of one flow over the whole run, warm-up included."""

    runs: int = 0
    ok: int = 0
    executions_ok: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    rounds: list[Run] = field(default_factory=list)


def main() -> None:
    args = parse_args()
    with database(args) as url:
        server = start_bench_server(free_port(), url, sql_timing=args.sql_timing)
        try:
            keys = agent_keys(server)
            tallies = run_rounds(server, keys, args)
            timed = sql_timing_runs(server, keys, tallies, args) if args.sql_timing else None
            server_pid = server.process.pid
        finally:
            server.stop()
        flows = [f for f in (UNCONTROLLED, CONTROLLED, QUOTED) if f.name in tallies]
        report(tallies, flows, args, server_pid)
        if timed is not None:
            report_sql(timed, tallies)
        failures = verify(server, tallies, args.connections)
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    print("checks: all passed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2, help="seconds per flow, not counted")
    parser.add_argument("--no-quoted", action="store_true", help="skip the two-request flow")
    parser.add_argument("--sql-timing", action="store_true",
                        help="then one more run per flow, timing each write statement")  # fmt: skip
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="use this (empty) database; default fresh SQLite")
    where.add_argument(
        "--postgres", metavar="SERVER_URL", help="run on a fresh database made on this server"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the --postgres db")
    return parser.parse_args()


def start_bench_server(
    port: int, database_url: str | None, *, sql_timing: bool = False, **extra_env: str
) -> BenchServer:
    """common.start_server, but serving bench/uncontrolled_app.py (the product plus one route)."""
    workdir = Path(tempfile.mkdtemp(prefix="controls-bench-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    env.update(TOOLCALLSTORE_DATABASE_URL=url, TOOLCALLSTORE_ADMIN_KEY_FILE=str(workdir / "key"))
    env.update(RATE_LIMITS_OFF)
    env.update(extra_env)
    process = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "uncontrolled_app.py"),
            "--port",
            str(port),
            *(["--sql-timing"] if sql_timing else []),
        ],
        cwd=workdir,
        env=env,
        stdout=(workdir / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).is_success:
                key = (workdir / "key").read_text().strip()
                return BenchServer(process, base, key, workdir, url)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"server did not start; see {workdir / 'server.log'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def database(args: argparse.Namespace) -> Iterator[str | None]:
    """The database URL to serve from (None: a fresh SQLite file in the server's workdir)."""
    if not args.postgres:
        yield args.database_url
        return
    name = f"tcs_bench_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(args.postgres, f'CREATE DATABASE "{name}"'))
    try:
        yield urlsplit(args.postgres)._replace(path=f"/{name}").geturl()
    finally:
        if not args.keep_db:
            asyncio.run(_pg_admin(args.postgres, f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _pg_admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def agent_keys(server: BenchServer) -> dict[str, str]:
    """Two agent keys, as an agent would hold them: inline quoting up to $1, or quotes only."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:

        def post(path: str, body: dict[str, object]) -> dict[str, Any]:
            result: dict[str, Any] = admin_post(client, server.admin_key, path, body)
            return result

        # With a cap set, every hold really compares spent + held + amount against it.
        post("/v1/spend_caps", {"monthly_cap_usd": BIG_CAP_USD})
        inline = post("/v1/keys", {"name": "bench inline", "scopes": ["llm:chat"],
                                   "auto_quote_max_usd": "1.00"})  # fmt: skip
        quoted = post("/v1/keys", {"name": "bench quoted", "scopes": ["llm:chat", "quotes:create"]})
    return {"inline": str(inline["secret"]), "quoted": str(quoted["secret"])}


def run_rounds(
    server: BenchServer, keys: dict[str, str], args: argparse.Namespace
) -> dict[str, Tally]:
    flows = [UNCONTROLLED, CONTROLLED] + ([] if args.no_quoted else [QUOTED])
    tallies = {flow.name: Tally() for flow in flows}
    for flow in flows:
        wait_for_audit(server)
        tallies[flow.name].runs += 1
        _count(tallies[flow.name], drive(server, keys, flow, args.connections, args.warmup))
    for _ in range(args.rounds):
        for flow in flows:
            wait_for_audit(server)
            run = drive(server, keys, flow, args.connections, args.seconds)
            tally = tallies[flow.name]
            tally.runs += 1
            tally.rounds.append(run)
            _count(tally, run)
    return tallies


def _count(tally: Tally, run: Run) -> None:
    tally.ok += run.ok
    tally.executions_ok += run.executions_ok
    tally.non_2xx += run.load.errors
    tally.socket_errors += run.socket_errors


@dataclass
class Timed:
    run: Run
    statements: dict[str, dict[str, float]]  # SQL text -> {"count", "seconds"}

    def us_per_request(self, sql: str) -> float:
        return 1e6 * self.statements[sql]["seconds"] / self.run.requests

    @property
    def sql(self) -> list[str]:
        """The statements (not the batches' own totals, "[batch of ...]")."""
        return [sql for sql in self.statements if not sql.startswith("[")]

    @property
    def total_us(self) -> float:
        return sum(self.us_per_request(sql) for sql in self.sql)


def sql_timing_runs(
    server: BenchServer, keys: dict[str, str], tallies: dict[str, Tally], args: argparse.Namespace
) -> dict[str, Timed]:
    """One more run of each single-request flow with every write statement timed."""
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    timed = {}
    for flow in (UNCONTROLLED, CONTROLLED):
        wait_for_audit(server)
        httpx.post(f"{server.base_url}/bench/sql", headers=admin, timeout=10).raise_for_status()
        run = drive(server, keys, flow, args.connections, args.seconds)
        wait_for_audit(server)  # the flow's own request audit rows, timed with it
        resp = httpx.get(f"{server.base_url}/bench/sql", headers=admin, timeout=10)
        resp.raise_for_status()
        timed[flow.name] = Timed(run, resp.json())
        tallies[flow.name].runs += 1
        _count(tallies[flow.name], run)
    return timed


def report_sql(timed: dict[str, Timed], tallies: dict[str, Tally]) -> None:
    controlled, uncontrolled = timed[CONTROLLED.name], timed[UNCONTROLLED.name]
    print(f"\nSQL timing run ({controlled.run.requests} controlled, {uncontrolled.run.requests}"
          " uncontrolled requests): us per request in each write statement, as called from"
          " Python")  # fmt: skip
    print(f"{'controlled':>10} {'uncontr.':>9} {'calls/req':>9}  statement")
    for sql in sorted(controlled.sql, key=controlled.us_per_request, reverse=True):
        calls = controlled.statements[sql]["count"] / controlled.run.requests
        mine = uncontrolled.us_per_request(sql) if sql in uncontrolled.sql else 0.0
        print(f"{controlled.us_per_request(sql):>10.1f} {mine:>9.1f} {calls:>9.2f}  {sql[:90]}")
    extra = controlled.total_us - uncontrolled.total_us
    # At 32 connections both flows keep the event loop's one thread busy: a request costs the
    # loop 1/rate seconds. Median rates of the measured rounds.
    base_us = 1e6 / statistics.median(r.load.rps for r in tallies[UNCONTROLLED.name].rounds)
    ctrl_us = 1e6 / statistics.median(r.load.rps for r in tallies[CONTROLLED.name].rounds)
    print(
        f"SQL per request: controlled {controlled.total_us:.0f} us, uncontrolled"
        f" {uncontrolled.total_us:.0f} us; the controls' own statements: {extra:.0f} us"
    )
    print(
        f"loop time per request (1 / median rate): uncontrolled {base_us:.0f} us, controlled"
        f" {ctrl_us:.0f} us (the controls add {ctrl_us - base_us:.0f} us, {extra:.0f} of it SQL)"
    )
    print(
        f"ceiling if the controls cost only their SQL: {base_us / (base_us + extra):.3f}"
        f" x uncontrolled (target {TARGET:.2f})"
    )


def wait_for_audit(server: BenchServer, timeout: float = 60) -> None:
    """Wait until the audit writer has committed what the last run left buffered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        backlog = re.search(r"^toolcallstore_audit_backlog_rows ([\d.e+]+)$", text, re.M)
        # The previous scrape's own row may still be buffered: a handful is "caught up".
        if backlog is not None and float(backlog[1]) <= 5:
            return
        time.sleep(0.2)
    raise SystemExit("the audit writer did not catch up within a minute")


def drive(
    server: BenchServer, keys: dict[str, str], flow: Flow, connections: int, seconds: float
) -> Run:
    prefix = f"{flow.name}-{secrets.token_hex(6)}"  # keys never repeat across runs
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
        "-H", f"Authorization: Bearer {keys[flow.key]}",
        "-s", str(SCRIPT), f"{server.base_url}{flow.path}", "--", prefix, flow.mode,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> Run:
    rps = float(_field(out, r"Requests/sec:\s+([\d.]+)"))
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    assert total is not None, out
    seconds = float(total[2]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[total[3]]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        out)  # fmt: skip
    executions = re.search(r"executions_ok: (\d+)", out)
    load = Load(rps, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"), int(non_2xx[1]) if non_2xx else 0)
    return Run(
        load=load,
        requests=int(total[1]),
        seconds=seconds,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        executions_ok=int(executions[1]) if executions else 0,
    )


def _field(out: str, pattern: str) -> str:
    found = re.search(pattern, out)
    assert found is not None, out
    return found[1]


def report(
    tallies: dict[str, Tally], flows: list[Flow], args: argparse.Namespace, server_pid: int
) -> None:
    print(
        f"wrk -t1 -c{args.connections}; {args.rounds} rounds of {args.seconds:g} s per flow "
        f"(after {args.warmup:g} s warm-up each); server pid {server_pid}; "
        f"toolcallstore from {Path(toolcallstore.__file__).parent}"
    )
    ratios = print_rounds(tallies, flows, args.rounds)
    for name, values in ratios.items():
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"median ratio {name} : uncontrolled = {statistics.median(values):.3f} ({spread})")
    median = statistics.median(ratios[CONTROLLED.name])
    verdict = "meets" if median >= TARGET else "MISSES"
    print(f"target controlled >= {TARGET:.2f} x uncontrolled: {verdict} ({median:.3f})")


def print_rounds(
    tallies: dict[str, Tally], flows: list[Flow], rounds: int
) -> dict[str, list[float]]:
    """One line per round and flow; returns each controlled flow's ratio per round."""
    print(f"{'round':<6} {'flow':<14} {'req/s':>8} {'exec/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'non-2xx':>8} {'ratio':>7}")  # fmt: skip
    ratios: dict[str, list[float]] = {flow.name: [] for flow in flows if flow is not UNCONTROLLED}
    for i in range(rounds):
        base = tallies[UNCONTROLLED.name].rounds[i].load.rps
        for flow in flows:
            run = tallies[flow.name].rounds[i]
            # The two-request flow is judged by executions, not by its requests.
            rate = run.executions_per_s if flow.mode == "quoted" else run.load.rps
            ratio = ""
            if flow is not UNCONTROLLED:
                ratios[flow.name].append(rate / base)
                ratio = f"{rate / base:.3f}"
            print(f"{i + 1:<6} {flow.name:<14} {run.load.rps:>8.0f} {rate:>8.0f}"
                  f" {run.load.p50_ms:>8.2f} {run.load.p99_ms:>8.2f} {run.load.errors:>8}"
                  f" {ratio:>7}")  # fmt: skip
    return ratios


def verify(server: BenchServer, tallies: dict[str, Tally], connections: int) -> list[str]:
    """Everything the controlled requests must have left behind; the list of what is wrong."""
    failures = []
    for name, tally in tallies.items():
        if tally.non_2xx or tally.socket_errors:
            failures.append(f"{name}: {tally.non_2xx} non-2xx, {tally.socket_errors} socket errors")
    facts = asyncio.run(stored_facts(server.database_url))
    print("stored: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    failures += _stored_failures(facts)
    # wrk cuts each run off with up to `connections` requests in flight: the server finishes
    # them, wrk does not count them. So the server may hold that many more per run.
    empty = Tally()
    for label, tally, seen, stored in (
        ("inline", tallies[CONTROLLED.name], "ok", "receipts inline"),
        ("quoted", tallies.get(QUOTED.name, empty), "executions_ok", "receipts quoted"),
        ("uncontrolled", tallies[UNCONTROLLED.name], "ok", "200 audit rows POST /bench/echo"),
    ):
        n_seen, n_stored = getattr(tally, seen), facts[stored]
        print(f"{label}: wrk saw {n_seen} succeed; the server stored {n_stored} ({stored})")
        if not n_seen <= n_stored <= n_seen + connections * tally.runs:
            failures.append(f"{label}: wrk saw {n_seen} succeed but {stored} = {n_stored}")
    failures += audit_verify(server.database_url)
    return failures


def _stored_failures(facts: dict[str, int]) -> list[str]:
    receipts = facts["receipts"]
    expect = {
        "succeeded executions": receipts,
        "succeeded receipts": receipts,
        "charge entries": receipts,
        "provider_cost entries": receipts,
        "200 audit rows POST /v1/executions": receipts,
        "executions not succeeded": 0,
        "holds not settled": 0,
        "idempotency keys not done": 0,
        "held micros": 0,
        "spent micros": facts["receipt micros"],
    }
    return [f"{k} = {facts[k]}, expected {v}" for k, v in expect.items() if facts[k] != v]


async def stored_facts(url: str) -> dict[str, int]:
    queries = {
        "receipts": "SELECT count(*) FROM receipts",
        "receipts inline": "SELECT count(*) FROM receipts r JOIN executions e"
        " ON e.id = r.execution_id JOIN api_keys k ON k.id = e.api_key_id"
        " WHERE k.name = 'bench inline'",
        "receipts quoted": "SELECT count(*) FROM receipts r JOIN executions e"
        " ON e.id = r.execution_id JOIN api_keys k ON k.id = e.api_key_id"
        " WHERE k.name = 'bench quoted'",
        "succeeded receipts": "SELECT count(*) FROM receipts WHERE status = 'succeeded'",
        "receipt micros": "SELECT coalesce(sum(price_micros), 0) FROM receipts",
        "succeeded executions": "SELECT count(*) FROM executions WHERE state = 'succeeded'",
        "executions not succeeded": "SELECT count(*) FROM executions WHERE state <> 'succeeded'",
        "charge entries": "SELECT count(*) FROM ledger_entries WHERE kind = 'charge'",
        "provider_cost entries": "SELECT count(*) FROM ledger_entries WHERE kind = 'provider_cost'",
        "holds not settled": "SELECT count(*) FROM holds WHERE state <> 'settled'",
        "idempotency keys not done": "SELECT count(*) FROM idempotency_keys WHERE state <> 'done'",
        "spent micros": "SELECT coalesce(sum(spent_micros), 0) FROM spend_counters",
        "held micros": "SELECT coalesce(sum(held_micros), 0) FROM spend_counters",
        "200 audit rows POST /v1/executions": "SELECT count(*) FROM audit_log"
        " WHERE method = 'POST' AND route = '/v1/executions' AND status = 200",
        "200 audit rows POST /bench/echo": "SELECT count(*) FROM audit_log"
        " WHERE method = 'POST' AND route = '/bench/echo' AND status = 200",
        "audit rows": "SELECT count(*) FROM audit_log",
    }
    db = Database(url, readers=1)
    await db.connect()
    try:
        return {name: int(await db.fetch_val(sql)) for name, sql in queries.items()}
    finally:
        await db.disconnect()


def audit_verify(url: str) -> list[str]:
    verify = subprocess.run(
        [sys.executable, "-m", "toolcallstore", "--database-url", url, "audit", "verify"],
        env={k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")},
        capture_output=True,
        text=True,
    )
    print(f"toolcallstore audit verify: {(verify.stdout + verify.stderr).strip()}")
    return [] if verify.returncode == 0 else ["audit verify failed"]


if __name__ == "__main__":
    main()
