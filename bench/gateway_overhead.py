"""What ToolCall Store adds to an LLM call: stub direct vs a bare pass-through vs the gateway.

    python bench/gateway_overhead.py [--seconds 8] [--rounds 3] [--warmup 2] [--latency-ms 20]
        [--chunk-gap-ms 0] [--chunks 5] [--idempotency] [--profile SECONDS] [--passthrough-tune-gc]
        [--sql-timing] [--litellm-venv PATH] [--database-url URL | --postgres SERVER_URL]

Issue text: an upstream stub with fixed latency on loopback; in one run measure (a) the stub
direct, (b) a bare Starlette + httpx pass-through (the floor of this stack), (c) ToolCall Store
with every control on (auth, quote, hold, settle, audit), stream and non-stream at 1 and 32
connections; optionally (d) LiteLLM proxy 1.80.0 on the same stub. Targets: added p50 latency
at 1 connection <= 2 ms over direct; throughput at 32 connections >= 0.6x the bare pass-through.
Issue 21's, printed last (run with --chunks 20 --latency-ms 0): req/s at c=32 >= 0.5x the
pass-through plain and 0.8x stream, p50 at c=1 <= 2 ms over the pass-through's.

- (a) bench/gateway_stub.py: raw asyncio + httptools on uvloop, answers after --latency-ms with
  fixed bytes (stream: role chunk, 5 content chunks, finish, usage, [DONE]; or one completion).
- (b) bench/gateway_passthrough.py: Starlette route, one shared httpx.AsyncClient on
  httpx_aiohttp's transport, body forwarded as is, SSE streamed back chunk by chunk.
- (c) `toolcallstore serve` on a fresh database, TOOLCALLSTORE_MODELS_FILE adding a lane `bench`
  whose one openai-protocol target has base_url http://127.0.0.1:<stub>/v1 (loopback: called
  directly even by a test-mode key). An agent key (llm:chat, auto_quote_max_usd 1.00) under a
  tenant spend cap of $1,000,000 (checked on every hold, never reached): every call is
  authenticated, inline-quoted, held, run, settled (receipt, ledger) and audited. Note: a plain
  call on this lane of one target asks its upstream for the whole answer too (issue 21); on a
  lane that could hedge, the gateway would stream and assemble it itself.
- (d) only with --litellm-venv: `litellm --config ... --num_workers 1` from that venv, a model
  `bench` = openai/stub-model at the stub; no database, no master key (LiteLLM's defaults:
  no auth, no spend tracking, no budgets).

Load: wrk (apt-get install wrk) with bench/gateway_overhead.lua POSTing the same body
(`model: bench`, one user message, max_tokens 16, `stream` true, with stream_options
include_usage, or false) for --seconds at 1 connection (-t1) and 32 connections (-t2). One warm-up
run per system and case (not counted), then --rounds rounds; in each round every case (stream
and plain, c=1 and c=32) runs on every system back to back, the system order reversed every
other round. Each figure is the median round; the targets use per-round differences / ratios.
Every 200 body is checked by the Lua script (stream ends in [DONE] and carries the stub's usage;
a completion carries usage and finish_reason "stop"). CPU per request of the system under test
(process and children, from /proc) is reported; so is the stub's CPU, to show it is not the
bottleneck.

Checks afterwards (exit 1 when one fails; missing a target is reported, not an error): no
non-2xx, socket error or bad body on (a)-(c); the gateway's receipts cover what wrk and the
smoke test saw succeed (that count <= receipts <= that count + connections per wrk run: a
request in flight when wrk stops is settled by the server but not counted by wrk; those are the
only failed receipts allowed); the operator reconciliation (`GET /v1/admin/reconciliation`) is
balanced and counts those receipts; no hold left open, nothing held, spent = sum of receipts;
`toolcallstore audit verify` intact.

--passthrough-tune-gc: (b) runs with `toolcallstore serve`'s garbage-collector settings
(server.tune_gc), to show what of the gateway's gain from them a bare app would get too.

--profile SECONDS: after the rounds, one more (uncounted) gateway run per mode at 32 connections
under `py-spy record --nonblocking --threads`, summarised (top self frames, by package, by
thread).

--sql-timing: after the rounds, a second gateway (the same app, bench/uncontrolled_app.py
--sql-timing, its own SQLite file) times each write statement and transaction over one stream
run at 1 and one at 32 connections: the SQL per call, and at 1 connection the two transactions
that lie on a call's path (the hold before the upstream call, the settlement before the last
chunk), set beside the pass-through's own added latency. Not counted in the rounds or checks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import toolcallstore  # noqa: E402
from common import RATE_LIMITS_OFF, BenchServer, start_server  # noqa: E402
from controls_overhead import (  # noqa: E402
    audit_verify,
    database,
    free_port,
    start_bench_server,
    wait_for_audit,
)
from toolcallstore.controls.pricing import REPO_CONFIG  # noqa: E402
from toolcallstore.db import Database  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
LUA = BENCH_DIR / "gateway_overhead.lua"
MODEL = "bench"
BIG_CAP_USD = "1000000.00"
TARGET_ADDED_P50_MS = 2.0
TARGET_RATIO = 0.6
ISSUE_21_RATIO = {"plain": 0.5, "stream": 0.8}  # issue 21: req/s at c=32 over the pass-through
CASES = [("stream", 1), ("plain", 1), ("stream", 32), ("plain", 32)]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _idle_leaf() -> str:
    """aiosqlite's worker blocks in `tx.get()` (SimpleQueue), which py-spy counts as busy."""
    import inspect

    import aiosqlite.core

    lines, first = inspect.getsourcelines(aiosqlite.core._connection_worker_thread)
    line = first + next(i for i, text in enumerate(lines) if "tx.get()" in text)
    return f"_connection_worker_thread (aiosqlite/core.py:{line})"


IDLE_LEAF = _idle_leaf()


@dataclass
class System:
    name: str  # direct | passthrough | toolcallstore | litellm
    label: str
    url: str  # the chat completions URL
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    idle_cpu_pct: float = 0.0  # CPU use with no load (timers, background tasks)


@dataclass
class Run:
    system: str
    mode: str
    connections: int
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    bad_bodies: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_ms_per_req: float  # the system under test
    stub_cpu_pct: float
    ended: float  # time.time() when wrk returned

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx - self.bad_bodies


@dataclass
class Bench:
    args: argparse.Namespace
    stub_pid: int
    systems: list[System]
    rounds: list[list[Run]] = field(default_factory=list)
    warmups: list[Run] = field(default_factory=list)
    extra: list[Run] = field(default_factory=list)  # profiled runs

    def gateway_runs(self) -> list[Run]:
        every = self.warmups + self.extra + [r for rnd in self.rounds for r in rnd]
        return [r for r in every if r.system == "toolcallstore"]


def main() -> None:
    args = parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    failures: list[str] = []
    with database(args) as db_url:
        gateway: BenchServer | None = None
        try:
            stub_port = free_port()
            stub = spawn(workdir, "stub", [sys.executable, str(BENCH_DIR / "gateway_stub.py"),
                         "--port", str(stub_port), "--latency-ms", str(args.latency_ms),
                         "--chunk-gap-ms", str(args.chunk_gap_ms),
                         "--chunks", str(args.chunks)])  # fmt: skip
            processes.append(stub)
            stub_base = f"http://127.0.0.1:{stub_port}/v1"
            wait_port(stub_port, stub, workdir / "stub.log")
            systems = [System("direct", "(a) stub direct", f"{stub_base}/chat/completions",
                              stub.pid)]  # fmt: skip
            bare_port = free_port()
            bare = spawn(workdir, "passthrough", [sys.executable,
                         str(BENCH_DIR / "gateway_passthrough.py"), "--port", str(bare_port),
                         "--upstream", stub_base,
                         *(["--tune-gc"] if args.passthrough_tune_gc else [])])  # fmt: skip
            processes.append(bare)
            wait_port(bare_port, bare, workdir / "passthrough.log")
            systems.append(
                System(
                    "passthrough",
                    "(b) bare pass-through",
                    f"http://127.0.0.1:{bare_port}/v1/chat/completions",
                    bare.pid,
                )
            )
            models = write_models_file(workdir, stub_base)
            gateway = start_server(free_port(), db_url, TOOLCALLSTORE_MODELS_FILE=str(models))
            agent_key = make_agent_key(gateway)
            systems.append(System("toolcallstore", "(c) ToolCall Store",
                                  f"{gateway.base_url}/v1/chat/completions", gateway.process.pid,
                                  {"Authorization": f"Bearer {agent_key}"}))  # fmt: skip
            litellm = start_litellm(args, workdir, stub_base)
            if litellm is not None:
                processes.append(litellm[0])
                systems.append(System("litellm", "(d) LiteLLM proxy", litellm[1],
                                      litellm[0].pid))  # fmt: skip
            for system in systems:
                smoke_test(system)
            measure_idle(systems)
            bench = Bench(args, stub.pid, systems)
            run_all(bench, gateway)
            if args.profile:
                profile(bench, gateway, workdir)
            if args.sql_timing:
                timings = sql_timing(bench, models)
            wait_for_audit(gateway)
            time.sleep(1)  # calls cut off by wrk's last stop settle within milliseconds
            reconciliation = reconcile(gateway)
        finally:
            if gateway is not None:
                gateway.stop()
            for process in reversed(processes):
                stop(process)
        report(bench)
        if args.sql_timing:
            report_sql(bench, timings)
        failures += verify(bench, gateway, reconciliation)
    print(f"logs and models file: {workdir}; server log: {gateway.workdir / 'server.log'}")
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)
    print("checks: all passed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="seconds per system and case")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the stub's latency")
    parser.add_argument("--chunk-gap-ms", type=float, default=0.0, help="between stream chunks")
    parser.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    parser.add_argument("--idempotency", action="store_true",
                        help="a fresh Idempotency-Key on every request")  # fmt: skip
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="SECONDS",
        help="py-spy the gateway for this long per mode at c=32 afterwards",
    )
    parser.add_argument(
        "--passthrough-tune-gc", action="store_true", help="(b) with `serve`'s GC settings"
    )
    parser.add_argument("--sql-timing", action="store_true",
                        help="then time the writes of a second gateway (SQLite)")  # fmt: skip
    parser.add_argument("--litellm-venv", type=Path, help="a venv with litellm[proxy]==1.80.0")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="use this (empty) database; default fresh SQLite")
    where.add_argument(
        "--postgres", metavar="SERVER_URL", help="run on a fresh database made on this server"
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the --postgres db")
    return parser.parse_args()


# --- processes --------------------------------------------------------------------------------


def spawn(workdir: Path, name: str, cmd: list[str], **env: str) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    full_env.update(RATE_LIMITS_OFF)
    full_env.update(env)
    return subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=(workdir / f"{name}.log").open(
        "wb"), stderr=subprocess.STDOUT)  # fmt: skip


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{process.args} did not start; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def write_models_file(workdir: Path, stub_base: str) -> Path:
    """config/models.json plus a provider at the stub, its one model and the lane `bench`."""
    data = orjson.loads((REPO_CONFIG / "models.json").read_bytes())
    data["providers"]["benchstub"] = {
        "protocol": "openai",
        "base_url": stub_base,
        "api_key_env": "TOOLCALLSTORE_TEST_UNUSED_KEY",
        "bills_on_cancel": False,
        "description": "bench/gateway_stub.py on loopback",
    }
    data["models"]["benchstub/stub-model"] = {
        "provider": "benchstub",
        "model": "stub-model",
        "input_usd_per_mtok": "1.00",
        "output_usd_per_mtok": "2.00",
        "context_tokens": 100_000,
        "max_output_tokens": 1000,
        "supports_tools": True,
    }
    data["lanes"][MODEL] = {
        "description": "one target: the bench stub",
        "targets": ["benchstub/stub-model"],
        "order": "listed",
        "hedge_after_ms": 1000,
        "max_parallel": 1,
        "resume_mid_stream": False,
    }
    path = workdir / "models.json"
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return path


def make_agent_key(server: BenchServer) -> str:
    """A tenant cap that every hold checks, and an agent key that may quote inline up to $1."""
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.Client(base_url=server.base_url, timeout=10, headers=admin) as client:

        def post(path: str, body: dict[str, object]) -> dict[str, Any]:
            resp = client.post(path, json=body, headers={"Idempotency-Key": secrets.token_hex(16)})
            resp.raise_for_status()
            result: dict[str, Any] = resp.json()
            return result

        post("/v1/spend_caps", {"monthly_cap_usd": BIG_CAP_USD})
        key = post("/v1/keys", {"name": "bench gateway", "scopes": ["llm:chat"],
                                "auto_quote_max_usd": "1.00"})  # fmt: skip
    return str(key["secret"])


def start_litellm(
    args: argparse.Namespace, workdir: Path, stub_base: str
) -> tuple[subprocess.Popen[bytes], str] | None:
    """The LiteLLM proxy and its chat completions URL, if --litellm-venv has one."""
    if args.litellm_venv is None:
        return None
    binary = args.litellm_venv / "bin" / "litellm"
    if not binary.exists():
        print(f"(d) skipped: {binary} does not exist")
        return None
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/stub-model\n"
        f"      api_base: {stub_base}\n"
        "      api_key: sk-bench\n"
    )
    port = free_port()
    # No network here: use the bundled model cost map, send no telemetry.
    process = spawn(workdir, "litellm", [str(binary), "--config", str(config), "--host",
                    "127.0.0.1", "--port", str(port), "--num_workers", "1", "--telemetry",
                    "False"], LITELLM_LOCAL_MODEL_COST_MAP="True",
                    LITELLM_LOG="ERROR")  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).is_success:
                return process, f"http://127.0.0.1:{port}/v1/chat/completions"
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(process)
    print(f"(d) skipped: LiteLLM did not start; see {workdir / 'litellm.log'}")
    return None


def body(stream: bool) -> dict[str, Any]:
    """What the Lua script sends (kept in step with gateway_overhead.lua)."""
    out: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content":
                           "Say hello to the benchmark."}], "max_tokens": 16,
                           "stream": stream}  # fmt: skip
    if stream:
        out["stream_options"] = {"include_usage": True}
    return out


def measure_idle(systems: list[System], seconds: float = 3.0) -> None:
    """What each system burns with no load: part of its CPU per request at 1 connection."""
    time.sleep(1)
    before = {s.name: cpu_seconds(s.pid) for s in systems}
    time.sleep(seconds)
    for system in systems:
        system.idle_cpu_pct = 100 * (cpu_seconds(system.pid) - before[system.name]) / seconds


SMOKE_MODES = (True, False)  # stream, plain


def smoke_test(system: System) -> None:
    """One call per mode before the load, so that a broken system fails loudly and early."""
    for stream in SMOKE_MODES:
        resp = httpx.post(system.url, json=body(stream), headers=system.headers, timeout=30)
        text = resp.text
        good = resp.status_code == 200 and '"completion_tokens":5' in text.replace(" ", "")
        if stream:
            good = good and text.endswith("data: [DONE]\n\n")
        if not good:
            raise SystemExit(f"{system.label} answered {resp.status_code}: {text[:800]}")


# --- load -------------------------------------------------------------------------------------


def run_all(bench: Bench, gateway: BenchServer) -> None:
    args = bench.args
    for mode, connections in CASES:
        for system in bench.systems:
            bench.warmups.append(drive(bench, gateway, system, mode, connections, args.warmup))
    for number in range(args.rounds):
        order = bench.systems if number % 2 == 0 else list(reversed(bench.systems))
        runs = []
        for mode, connections in CASES:
            for system in order:
                run = drive(bench, gateway, system, mode, connections, args.seconds)
                runs.append(run)
                print(f"round {number + 1} {system.name:<13} {mode:<6} c={connections:<2}"
                      f" {run.rps:8.0f} req/s p50 {run.p50_ms:7.2f} ms p99 {run.p99_ms:7.2f} ms"
                      f" cpu {run.cpu_ms_per_req:5.2f} ms/req  stub cpu {run.stub_cpu_pct:3.0f}%"
                      f"{'' if not run.non_2xx else f'  non-2xx {run.non_2xx}'}",
                      flush=True)  # fmt: skip
        bench.rounds.append(runs)


def drive(
    bench: Bench, gateway: BenchServer, system: System, mode: str, connections: int, seconds: int
) -> Run:
    if system.name == "toolcallstore":
        wait_for_audit(gateway)  # no backlog of an earlier run is flushed on this one's time
    threads = 1 if connections == 1 else 2
    prefix = f"{system.name}-{secrets.token_hex(6)}" if bench.args.idempotency else ""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(LUA)]  # fmt: skip
    for name, value in system.headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd += [system.url, "--", "true" if mode == "stream" else "false", MODEL, prefix]
    cpu0, stub0, t0 = cpu_seconds(system.pid), cpu_seconds(bench.stub_pid), time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu1, stub1, t1 = cpu_seconds(system.pid), cpu_seconds(bench.stub_pid), time.monotonic()
    found = re.search(
        r"bench: requests (\d+) duration_us (\d+) non2xx (\d+) socket_errors (\d+)"
        r" bad_bodies (\d+) p50_us (\d+) p90_us (\d+) p99_us (\d+)",
        out,
    )
    assert found is not None, out
    n, us, non2xx, sockets, bad, p50, p90, p99 = (int(x) for x in found.groups())
    return Run(system.name, mode, connections, n, us / 1e6, non2xx, sockets, bad,
               p50 / 1000, p90 / 1000, p99 / 1000, (cpu1 - cpu0) * 1000 / max(n, 1),
               100 * (stub1 - stub0) / (t1 - t0), time.time())  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry.name)] = fields
        children[int(fields[1])].append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += (int(stats[current][11]) + int(stats[current][12])) / CLK_TCK
        todo += children.get(current, [])
    return total


# --- write timing -----------------------------------------------------------------------------

Timings = list[tuple[int, Run, dict[str, dict[str, float]]]]


def sql_timing(bench: Bench, models: Path) -> Timings:
    """A second gateway, the same app with each write statement and transaction timed
    (bench/uncontrolled_app.py --sql-timing, on its own fresh SQLite file), driven with one
    stream run per connection count. Apart from the rounds, since timing costs a little."""
    server = start_bench_server(free_port(), None, sql_timing=True,
                                TOOLCALLSTORE_MODELS_FILE=str(models))  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {make_agent_key(server)}"}
        system = System("toolcallstore", "(c) timed", f"{server.base_url}/v1/chat/completions",
                        server.process.pid, auth)  # fmt: skip
        admin = {"Authorization": f"Bearer {server.admin_key}"}
        drive(bench, server, system, "stream", 32, bench.args.warmup)
        timings = []
        for connections in (1, 32):
            wait_for_audit(server)
            httpx.post(f"{server.base_url}/bench/sql", headers=admin, timeout=10).raise_for_status()
            run = drive(bench, server, system, "stream", connections, bench.args.seconds)
            resp = httpx.get(f"{server.base_url}/bench/sql", headers=admin, timeout=10)
            resp.raise_for_status()
            timings.append((connections, run, resp.json()))
        return timings
    finally:
        server.stop()


def report_sql(bench: Bench, timings: Timings) -> None:
    print("\nwrites timed in a second gateway (stream; ms per batch x batches per call):")
    for connections, run, timed in timings:
        calls = max(run.requests, 1)
        sql_ms = 1e3 * sum(v["seconds"] for k, v in timed.items() if not k.startswith("["))
        batches = ", ".join(
            f"{k.removeprefix('[batch of ').rstrip(']')} {1e3 * v['seconds'] / v['count']:.2f}"
            f" x {v['count'] / calls:.2f}"
            for k, v in sorted(timed.items()) if k.startswith("[")
        )  # fmt: skip
        print(f"  c={connections}: {run.requests} calls, SQL {sql_ms / calls:.2f} ms per call;"
              f" {batches}")  # fmt: skip
        if connections != 1:
            continue
        # At 1 connection every batch is one transaction: the hold before the upstream call and
        # the settlement before the last chunk (it carries the receipt) lie on the call's path.
        path = [timed.get(f"[batch of {body}]") for body in ("open_call", "_close")]
        if None in path:
            continue
        on_path = sum(1e3 * v["seconds"] / v["count"] for v in path if v is not None)
        bare = statistics.median(per_round(bench, "stream", 1, "passthrough", "direct", "p50"))
        print(
            f"  c=1: the two transactions on a call's path take {on_path:.2f} ms; with the"
            f" pass-through's own added p50 ({bare:.2f} ms) that is {bare + on_path:.2f} ms"
            f" before any other work of the gateway (target {TARGET_ADDED_P50_MS:g} ms)"
        )


# --- profile ----------------------------------------------------------------------------------


def profile(bench: Bench, gateway: BenchServer, workdir: Path) -> None:
    """One more gateway run per mode at c=32 under py-spy (not counted in the rounds)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    system = next(s for s in bench.systems if s.name == "toolcallstore")
    seconds = bench.args.profile
    for mode in ("stream", "plain"):
        out = workdir / f"pyspy-{mode}.txt"
        spy = subprocess.Popen([str(pyspy), "record", "--pid", str(system.pid), "--rate", "200",
                                "--duration", str(seconds), "--format", "raw", "--nonblocking",
                                "--threads", "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(0.5)
        run = drive(bench, gateway, system, mode, 32, seconds + 1)
        bench.extra.append(run)
        spy.wait(timeout=60)
        print(f"\npy-spy, gateway {mode} c=32 ({run.rps:.0f} req/s while sampled;"
              f" raw stacks in {out}):")  # fmt: skip
        summarise_profile(out)


def summarise_profile(path: Path, top: int = 18) -> None:
    if not path.exists():
        print("  (py-spy wrote nothing)")
        return
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        if stack.endswith(IDLE_LEAF):
            idle += int(count)
            continue
        n = int(count)
        frames = stack.split(";")
        thread, frames = (frames[0], frames[1:]) if frames[0].startswith("thread") else ("", frames)
        if not frames:
            continue
        total += n
        by_thread[thread] += n
        leaf = _frame(frames[-1])
        self_time[leaf] += n
        by_package[_package(frames[-1])] += n
        for name in {_frame(f) for f in frames if "toolcallstore" in f}:
            inclusive[name] += n
    if not total:
        print("  (no samples)")
        return

    def show(title: str, counter: Counter[str], k: int) -> None:
        print(f"  {title}:")
        for name, n in counter.most_common(k):
            print(f"    {100 * n / total:5.1f}%  {name}")

    print(f"  {total} samples (threads not idle; {idle} more in aiosqlite's queue wait left out)")
    show("by thread", by_thread, 6)
    show("self time by package", by_package, 12)
    show("self time by function", self_time, top)
    show("inclusive, toolcallstore functions", inclusive, top)


def _frame(frame: str) -> str:
    """`func (path/file.py:12)` -> `func (pkg/file.py)`."""
    found = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not found:
        return frame
    return f"{found[1]} ({_short(found[2])})"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(frame: str) -> str:
    found = re.match(r".* \((.*?)(?::\d+)?\)$", frame)
    if not found:
        return frame
    short = _short(found[1])
    head = short.split("/", 1)[0]
    if head == "toolcallstore":
        return "/".join(short.split("/")[:2])
    return head.removesuffix(".py") if "/" in short else f"stdlib {head}"


# --- report -----------------------------------------------------------------------------------


def median_run(bench: Bench, system: str, mode: str, connections: int) -> dict[str, float]:
    runs = [r for rnd in bench.rounds for r in rnd
            if (r.system, r.mode, r.connections) == (system, mode, connections)]  # fmt: skip
    return {
        "rps": statistics.median(r.rps for r in runs),
        "p50": statistics.median(r.p50_ms for r in runs),
        "p99": statistics.median(r.p99_ms for r in runs),
        "cpu": statistics.median(r.cpu_ms_per_req for r in runs),
        "stub": max(r.stub_cpu_pct for r in runs),
    }


def per_round(bench: Bench, mode: str, connections: int, a: str, b: str, kind: str) -> list[float]:
    """Per round: a's p50 minus b's (kind "p50"), or a's req/s over b's (kind "rps")."""
    out = []
    for rnd in bench.rounds:
        pick = {r.system: r for r in rnd if (r.mode, r.connections) == (mode, connections)}
        if a in pick and b in pick:
            x, y = pick[a], pick[b]
            out.append(x.p50_ms - y.p50_ms if kind == "p50" else x.rps / y.rps)
    return out


def report(bench: Bench) -> None:
    args = bench.args
    print(f"\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; stub latency {args.latency_ms:g} ms"
          f" (chunk gap {args.chunk_gap_ms:g} ms); {args.rounds} rounds of {args.seconds} s per"
          f" system and case; wrk -t1 at c=1, -t2 at c=32; toolcallstore from"
          f" {Path(toolcallstore.__file__).parent}; load average"
          f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print("\nmedian round (server CPU: ms of CPU per request of the system under test)")
    print("| system | mode | conns | req/s | p50 ms | p99 ms | CPU ms/req | stub CPU max |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, connections in CASES:
        for system in bench.systems:
            m = median_run(bench, system.name, mode, connections)
            print(f"| {system.label} | {mode} | {connections} | {m['rps']:.0f} | {m['p50']:.2f}"
                  f" | {m['p99']:.2f} | {m['cpu']:.2f} | {m['stub']:.0f}% |")  # fmt: skip
    print("idle CPU with no load: " + ", ".join(f"{s.label} {s.idle_cpu_pct:.1f}%"
                                              for s in bench.systems))  # fmt: skip
    print()
    names = [s.name for s in bench.systems]
    for gateway in [n for n in ("toolcallstore", "litellm") if n in names]:
        for mode in ("stream", "plain"):
            added = per_round(bench, mode, 1, gateway, "direct", "p50")
            ratio = per_round(bench, mode, 32, gateway, "passthrough", "rps")
            med_added, med_ratio = statistics.median(added), statistics.median(ratio)
            verdict_a = "meets" if med_added <= TARGET_ADDED_P50_MS else "MISSES"
            verdict_r = "meets" if med_ratio >= TARGET_RATIO else "MISSES"
            print(f"{gateway} {mode}: added p50 at c=1 = {med_added:.2f} ms"
                  f" ({_range(added, 'ms')}) -> {verdict_a} <= {TARGET_ADDED_P50_MS:g} ms;"
                  f" req/s at c=32 / pass-through = {med_ratio:.3f} ({_range(ratio, '')})"
                  f" -> {verdict_r} >= {TARGET_RATIO:g}")  # fmt: skip
    bare = [per_round(bench, m, 1, "passthrough", "direct", "p50") for m in ("stream", "plain")]
    print(f"(the pass-through's own added p50 at c=1: stream {statistics.median(bare[0]):.2f} ms,"
          f" plain {statistics.median(bare[1]):.2f} ms)")  # fmt: skip
    if "toolcallstore" in names:
        report_issue_21(bench)


def report_issue_21(bench: Bench) -> None:
    """Issue 21's targets, all against the pass-through: req/s at c=32 >= 0.5x plain and 0.8x
    stream, p50 at c=1 at most 2 ms above it; every round's figure, then the median."""
    print("\nissue 21 (vs the bare pass-through, per round):")
    for mode in ("plain", "stream"):
        ratio = per_round(bench, mode, 32, "toolcallstore", "passthrough", "rps")
        added = per_round(bench, mode, 1, "toolcallstore", "passthrough", "p50")
        med_ratio, med_added = statistics.median(ratio), statistics.median(added)
        target = ISSUE_21_RATIO[mode]
        print(f"  {mode}: req/s c=32 ratio {med_ratio:.3f} ({_range(ratio, '')};"
              f" rounds {', '.join(f'{r:.3f}' for r in ratio)})"
              f" -> {'meets' if med_ratio >= target else 'MISSES'} >= {target:g};"
              f" p50 c=1 over it {med_added:.2f} ms ({_range(added, 'ms')})"
              f" -> {'meets' if med_added <= TARGET_ADDED_P50_MS else 'MISSES'}"
              f" <= {TARGET_ADDED_P50_MS:g} ms")  # fmt: skip


def _range(values: list[float], unit: str) -> str:
    fmt = "{:.2f}" if unit else "{:.3f}"
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}{(' ' + unit) if unit else ''}"


# --- checks -----------------------------------------------------------------------------------


def reconcile(server: BenchServer) -> dict[str, Any]:
    period = f"{dt.datetime.now(dt.UTC):%Y-%m}"
    resp = httpx.get(
        f"{server.base_url}/v1/admin/reconciliation",
        params={"period": period, "livemode": "false"},
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=60,
    )
    resp.raise_for_status()
    result: dict[str, Any] = resp.json()
    return result


def verify(bench: Bench, server: BenchServer, reconciliation: dict[str, Any]) -> list[str]:
    failures = []
    every = bench.warmups + bench.extra + [r for rnd in bench.rounds for r in rnd]
    for system in bench.systems:
        runs = [r for r in every if r.system == system.name]
        bad = {k: sum(getattr(r, k) for r in runs)
               for k in ("non_2xx", "socket_errors", "bad_bodies")}  # fmt: skip
        print(f"{system.label}: {sum(r.requests for r in runs)} requests in {len(runs)} wrk runs,"
              f" non-2xx {bad['non_2xx']}, socket errors {bad['socket_errors']},"
              f" bad bodies {bad['bad_bodies']}")  # fmt: skip
        if any(bad.values()) and system.name != "litellm":
            failures.append(f"{system.label}: {bad}")
    runs = bench.gateway_runs()
    # The smoke test's calls succeeded too (it exits otherwise), each with its own receipt.
    seen = sum(r.ok for r in runs) + len(SMOKE_MODES)
    slack = sum(r.connections for r in runs)
    facts = asyncio.run(stored_facts(server.database_url))
    print("stored: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    total = reconciliation["total"]
    print(
        f"reconciliation: balanced {reconciliation['balanced']}, receipts {total['receipts']},"
        f" customer price {total['customer_price_usd']} USD, provider cost"
        f" {total['provider_cost_usd']} USD, mismatches {len(reconciliation['mismatches'])}"
    )
    print(f"gateway: wrk and the smoke test saw {seen} succeed; the server stored"
          f" {facts['receipts']} receipts"
          f" ({facts['succeeded receipts']} succeeded); allowed up to {seen + slack}"
          f" (+{slack}: one per connection per wrk run, cut off in flight)")  # fmt: skip
    if not seen <= facts["receipts"] <= seen + slack:
        failures.append(f"receipts {facts['receipts']} outside [{seen}, {seen + slack}]")
    if facts["receipts"] - facts["succeeded receipts"] > slack:
        failures.append(f"{facts['receipts'] - facts['succeeded receipts']} failed receipts")
    if not reconciliation["balanced"]:
        failures.append(f"reconciliation not balanced: {reconciliation['mismatches'][:5]}")
    if total["receipts"] != facts["charged receipts"]:
        failures.append(f"reconciliation counts {total['receipts']} receipts, the ledger"
                        f" {facts['charged receipts']}")  # fmt: skip
    for name, expected in (("holds open", 0), ("held micros", 0), ("executions running", 0),
                           ("spent micros", facts["receipt micros"]),
                           ("receipts", facts["executions"])):  # fmt: skip
        if facts[name] != expected:
            failures.append(f"{name} = {facts[name]}, expected {expected}")
    if facts["executions running"]:
        asyncio.run(explain_running(server.database_url, [r.ended for r in runs]))
    print(f"server log: {count_log(server, 'unhandled error')} 'unhandled error' lines, of which"
          f" {count_log(server, 'ClientDisconnect')} ClientDisconnect (client gone before its"
          " body was read)")  # fmt: skip
    failures += audit_verify(server.database_url)
    return failures


def count_log(server: BenchServer, text: str) -> int:
    with (server.workdir / "server.log").open(errors="replace") as log:
        return sum(text in line for line in log)


async def explain_running(url: str, ends: list[float]) -> None:
    """When the executions left running were opened, relative to the end of a wrk run."""
    db = Database(url, readers=1)
    await db.connect()
    try:
        rows = await db.fetch_all("SELECT created_at FROM executions WHERE state = 'running'")
    finally:
        await db.disconnect()
    gaps = [min(abs(int(r["created_at"]) / 1e6 - end) for end in ends) for r in rows]
    print(f"{len(rows)} executions left running with their holds open, each opened within"
          f" {max(gaps) * 1000:.0f} ms of the end of a wrk run (median"
          f" {statistics.median(gaps) * 1000:.0f} ms): calls cut off by wrk's stop")  # fmt: skip


async def stored_facts(url: str) -> dict[str, int]:
    queries = {
        "receipts": "SELECT count(*) FROM receipts WHERE tool = 'llm.chat'",
        "succeeded receipts": "SELECT count(*) FROM receipts WHERE tool = 'llm.chat'"
        " AND status = 'succeeded'",
        "charged receipts": "SELECT count(DISTINCT receipt_id) FROM ledger_entries"
        " WHERE tool = 'llm.chat'",
        "receipt micros": "SELECT coalesce(sum(price_micros), 0) FROM receipts",
        "executions": "SELECT count(*) FROM executions WHERE tool = 'llm.chat'",
        "executions running": "SELECT count(*) FROM executions WHERE state = 'running'",
        "holds open": "SELECT count(*) FROM holds WHERE state = 'open'",
        "holds released": "SELECT count(*) FROM holds WHERE state = 'released'",
        "spent micros": "SELECT coalesce(sum(spent_micros), 0) FROM spend_counters",
        "held micros": "SELECT coalesce(sum(held_micros), 0) FROM spend_counters",
        "200 audit rows": "SELECT count(*) FROM audit_log WHERE method = 'POST'"
        " AND route = '/v1/chat/completions' AND status = 200",
        "500 audit rows": "SELECT count(*) FROM audit_log WHERE method = 'POST'"
        " AND route = '/v1/chat/completions' AND status = 500",
    }
    db = Database(url, readers=1)
    await db.connect()
    try:
        return {name: int(await db.fetch_val(sql)) for name, sql in queries.items()}
    finally:
        await db.disconnect()


if __name__ == "__main__":
    main()
