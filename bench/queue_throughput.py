"""Job queue throughput and pickup latency: ours on SQLite and Postgres, with huey (SQLite) and
pgqueuer (Postgres) as the reference, all in one process and one run.

    python bench/queue_throughput.py [--jobs 5000] [--samples 200] [--concurrency 8]
        [--poll-s 1.0] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

Throughput: N no-op jobs are enqueued in bulk (ours: enqueue_many in chunks of 1000; pgqueuer: one
batch call; huey: one by one, it has no bulk call) and timed, then the consumer is
started and timed until the no-op handler has run N times (drain jobs/s). Latency: with the
consumer idle, one job at a time, from just before the enqueue call to the handler's start.

Targets (issue 3), 2-core machine: >= 2,000 jobs/s drained on SQLite, >= 3,000 on Postgres,
ours / huey drain ratio >= 1.0, pickup p50 <= 10 ms when idle. Issue 20 adds ours-Postgres /
pgqueuer drain ratio >= 1.0, in the same run as ours / huey.

Postgres runs in a scratch database (dropped and created through the admin URL, dropped at the
end); SQLite files live in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from toolcallstore.db.database import Database
from toolcallstore.db.migrate import migrate
from toolcallstore.metrics import Metrics
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob
from toolcallstore.queue.worker import JobContext, PoolConfig, Registry, WorkerPool

SCRATCH_DB = "tcs_bench_queue"
TARGET_SQLITE = 2000.0
TARGET_POSTGRES = 3000.0
TARGET_RATIO = 1.0
TARGET_P50_MS = 10.0


@dataclass
class Result:
    system: str
    database: str
    consumer: str
    enqueue_rate: float = 0.0
    drain_rate: float = 0.0
    drained: int = 0
    latencies: list[float] = field(default_factory=list)
    check: str = ""

    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else math.nan

    def p99_ms(self) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[math.ceil(len(ordered) * 0.99) - 1] * 1000


class Probe:
    """Counts handler starts (from the event loop) and signals when `expect`ed ones happened."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.started = 0.0
        self.done = asyncio.Event()

    def expect(self, n: int) -> None:
        self.target = self.count + n
        self.done.clear()

    def hit(self) -> None:
        self.started = time.perf_counter()
        self.count += 1
        if self.count >= self.target:
            self.done.set()


class ThreadProbe:
    """The same for handlers running in worker threads (huey)."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.started = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def expect(self, n: int) -> None:
        with self._lock:
            self.target = self.count + n
            self.done.clear()

    def hit(self) -> None:
        started = time.perf_counter()
        with self._lock:
            self.started = started
            self.count += 1
            if self.count >= self.target:
                self.done.set()


async def drain(probe: Probe, n: int, start: Callable[[], object], timeout: float) -> float:
    """Start the consumer and wait for `n` handler starts; returns jobs/s (partial on timeout)."""
    probe.expect(n)
    first = probe.count
    began = time.perf_counter()
    start()
    try:
        await asyncio.wait_for(probe.done.wait(), timeout)
    except TimeoutError:
        print(f"  !! only {probe.count - first} of {n} jobs ran within {timeout:g} s")
    return (probe.count - first) / (time.perf_counter() - began)


async def pickups(
    probe: Probe, enqueue_one: Callable[[], Awaitable[object]], samples: int, gap_s: float
) -> list[float]:
    """Seconds from just before each enqueue to its handler's start, one job at a time."""
    out = []
    for _ in range(samples):
        await asyncio.sleep(gap_s)
        probe.expect(1)
        began = time.perf_counter()
        await enqueue_one()
        try:
            await asyncio.wait_for(probe.done.wait(), 10)
        except TimeoutError:
            print("  !! a latency probe job did not start within 10 s")
            break
        out.append(probe.started - began)
    return out


async def run_ours(url: str, label: str, args: argparse.Namespace) -> Result:
    result = Result(
        "toolcallstore",
        label,
        f"WorkerPool concurrency={args.concurrency} poll_s={args.poll_s:g}",
    )
    db = Database(url)
    await db.connect()
    try:
        await migrate(db)
        store = SqlJobStore(db)
        probe = Probe()

        async def noop(ctx: JobContext) -> None:
            probe.hit()

        registry = Registry()
        registry.register("bench.noop", noop)
        began = time.perf_counter()
        for start in range(0, args.jobs, 1000):  # bulk, like pgqueuer's batch enqueue
            count = min(1000, args.jobs - start)
            await store.enqueue_many([NewJob("bench.noop", {}) for _ in range(count)])
        result.enqueue_rate = args.jobs / (time.perf_counter() - began)

        config = PoolConfig(concurrency=args.concurrency, poll_s=args.poll_s)
        pool = WorkerPool(store, registry, config, Metrics())
        try:
            result.drain_rate = await drain(probe, args.jobs, pool.start, args.timeout_s)
            result.drained = probe.count
            await asyncio.sleep(0.5)  # let the last finishes commit: the pool is idle
            result.latencies = await pickups(
                probe,
                lambda: pool.enqueue(NewJob("bench.noop", {})),
                args.samples,
                args.gap_ms / 1000,
            )
        finally:
            await pool.stop()
        rows = await db.fetch_all("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        states = ", ".join(f"{r['state']}={r['n']}" for r in sorted(rows, key=lambda r: r["state"]))
        result.check = f"handler ran {probe.count}x; jobs table after stop: {states}"
    finally:
        await db.disconnect()
    return result


def run_huey(path: Path, args: argparse.Namespace) -> Result:
    from huey import SqliteHuey

    result = Result(
        "huey 3.5.4",
        "SQLite",
        f"Consumer(workers={args.concurrency}, worker_type='thread'), default polling",
    )
    huey = SqliteHuey("bench", filename=str(path))
    probe = ThreadProbe()

    @huey.task()
    def noop() -> None:
        probe.hit()

    began = time.perf_counter()
    for _ in range(args.jobs):
        noop()
    result.enqueue_rate = args.jobs / (time.perf_counter() - began)

    # What `huey_consumer app.huey -w 8 -k thread` runs, in this process: the consumer's
    # defaults (initial_delay 0.1 s, backoff 1.15, max_delay 10 s), no periodic tasks.
    consumer = huey.create_consumer(workers=args.concurrency, worker_type="thread", periodic=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    probe.expect(args.jobs)
    began = time.perf_counter()
    consumer.start()
    try:
        if not probe.done.wait(args.timeout_s):
            print(f"  !! huey ran only {probe.count} of {args.jobs} jobs in {args.timeout_s:g} s")
        result.drain_rate = probe.count / (time.perf_counter() - began)
        result.drained = probe.count
        time.sleep(0.5)
        result.latencies = _huey_pickups(probe, noop, args)
    finally:
        consumer.stop(graceful=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    result.check = f"handler ran {probe.count}x; tasks left in queue: {huey.pending_count()}"
    huey.storage.close()
    return result


def _huey_pickups(probe: ThreadProbe, task: Callable[[], Any], args: argparse.Namespace) -> list:
    out = []
    for _ in range(args.samples):
        time.sleep(args.gap_ms / 1000)
        probe.expect(1)
        began = time.perf_counter()
        task()
        if not probe.done.wait(10):
            print("  !! a huey latency probe did not start within 10 s")
            break
        out.append(probe.started - began)
    return out


async def run_pgqueuer(url: str, args: argparse.Namespace) -> Result:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    result = Result(
        "pgqueuer 1.6.0",
        "Postgres",
        "QueueManager.run() defaults (batch_size=10), one asyncpg connection",
    )
    consumer_conn = await asyncpg.connect(url)
    producer_conn = await asyncpg.connect(url)
    try:
        producer = Queries(AsyncpgDriver(producer_conn))
        if await producer.schema_is_installed():
            await producer.uninstall()
        await producer.install()
        probe = Probe()
        qm = QueueManager(Queries(AsyncpgDriver(consumer_conn)))

        @qm.entrypoint("bench_noop", accepts_context=False)
        async def noop(job: object) -> None:
            probe.hit()

        n = args.jobs
        began = time.perf_counter()
        await producer.enqueue(["bench_noop"] * n, [None] * n, [0] * n)
        result.enqueue_rate = n / (time.perf_counter() - began)

        tasks: list[asyncio.Task[None]] = []
        try:
            result.drain_rate = await drain(
                probe, n, lambda: tasks.append(asyncio.create_task(qm.run())), args.timeout_s
            )
            result.drained = probe.count
            await asyncio.sleep(0.5)
            result.latencies = await pickups(
                probe,
                lambda: producer.enqueue("bench_noop", None),
                args.samples,
                args.gap_ms / 1000,
            )
        finally:
            qm.shutdown.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        left = await producer_conn.fetchval("SELECT count(*) FROM pgqueuer")
        result.check = f"handler ran {probe.count}x; rows left in pgqueuer table: {left}"
    finally:
        await producer_conn.close()
        await consumer_conn.close()
    return result


async def postgres_part(args: argparse.Namespace) -> list[Result]:
    admin = await asyncpg.connect(args.postgres_url)
    scratch = urlsplit(args.postgres_url)._replace(path=f"/{SCRATCH_DB}").geturl()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {SCRATCH_DB}")
        print("ours on Postgres ...", flush=True)
        ours = await run_ours(scratch, "Postgres", args)
        print("pgqueuer on Postgres ...", flush=True)
        theirs = await run_pgqueuer(scratch, args)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        await admin.close()
    return [ours, theirs]


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def report(results: list[Result], args: argparse.Namespace) -> None:
    ours_sqlite, huey, ours_pg, pgq = results
    print(
        f"\n{args.jobs} no-op jobs enqueued in bulk (huey: one by one), then drained;"
        f" pickup latency over {args.samples} idle samples, {args.gap_ms:g} ms apart"
    )
    for r in results:
        print(f"  {r.system} / {r.database}: {r.consumer}")
    header = f"{'system':<15} {'database':<9} {'enqueue/s':>10} {'drain/s':>9}"
    print(f"{header} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r.system:<15} {r.database:<9} {r.enqueue_rate:>10.0f} {r.drain_rate:>9.0f}"
            f" {r.p50_ms():>8.2f} {r.p99_ms():>8.2f}"
        )
    print("checks:")
    for r in results:
        print(f"  {r.system} / {r.database}: {r.check}")

    vs_huey = ours_sqlite.drain_rate / huey.drain_rate if huey.drain_rate else math.inf
    vs_pgq = ours_pg.drain_rate / pgq.drain_rate if pgq.drain_rate else math.inf
    print(f"ratio ours-SQLite drain / huey drain     = {vs_huey:.2f}")
    print(f"ratio ours-Postgres drain / pgqueuer drain = {vs_pgq:.2f}")
    complete = all(r.drained >= args.jobs for r in (ours_sqlite, ours_pg))
    checks = [
        (ours_sqlite.drain_rate >= TARGET_SQLITE and complete, "SQLite drain >= 2,000 jobs/s",
         f"{ours_sqlite.drain_rate:.0f}"),
        (ours_pg.drain_rate >= TARGET_POSTGRES and complete, "Postgres drain >= 3,000 jobs/s",
         f"{ours_pg.drain_rate:.0f}"),
        (vs_huey >= TARGET_RATIO, "ours-SQLite / huey >= 1.0", f"{vs_huey:.2f}"),
        (vs_pgq >= TARGET_RATIO, "ours-Postgres / pgqueuer >= 1.0", f"{vs_pgq:.2f}"),
        (ours_sqlite.p50_ms() <= TARGET_P50_MS, "pickup p50 <= 10 ms (SQLite)",
         f"{ours_sqlite.p50_ms():.2f} ms"),
        (ours_pg.p50_ms() <= TARGET_P50_MS, "pickup p50 <= 10 ms (Postgres)",
         f"{ours_pg.p50_ms():.2f} ms"),
    ]  # fmt: skip
    for ok, target, measured in checks:
        print(f"{verdict(ok):<6} {target}: {measured}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20, help="idle time before each probe")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--timeout-s", type=float, default=60, help="cap on each drain")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tcs-bench-queue-") as tmp:
        print("ours on SQLite ...", flush=True)
        url = f"sqlite:///{Path(tmp) / 'ours.db'}"
        ours_sqlite = asyncio.run(run_ours(url, "SQLite", args))
        print("huey on SQLite ...", flush=True)
        huey = run_huey(Path(tmp) / "huey.db", args)
    ours_pg, pgq = asyncio.run(postgres_part(args))
    report([ours_sqlite, huey, ours_pg, pgq], args)


if __name__ == "__main__":
    main()
