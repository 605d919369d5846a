"""How much slower the same work runs right after the process slept, as at 1 connection.

    python bench/cold_wake.py [--sleep-ms 20] [--samples 300]

Why it exists: in bench/gateway_overhead.py at 1 connection the gateway's settle transaction
(which runs right after the stub's 20 ms wait) took ~850 us, against ~100 us per call at 32
connections. This runs one small SQLite write transaction (two inserts, one counter update,
COMMIT; WAL, synchronous=NORMAL, as the server) and one pure-Python task (orjson round trip
and a dict walk), back to back and after sleeping --sleep-ms each time, interleaved in the same
run, and prints the median of each and the ratio. A ratio well above 1 for both says that the
machine (CPU caches and idle states after the sleep), not SQLite, makes the first work after a
wait slow; the direct and pass-through systems of gateway_overhead do little work after their
wait, so the effect lands almost entirely on the gateway's added latency at c=1.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sql = sqlite_work(Path(tmp) / "wake.db")
        for _ in range(2000):  # warm the page cache and the statement cache
            sql()
        print(f"sleep between calls: {args.sleep_ms:g} ms; {args.samples} samples per case")
        print(f"{'work':<26} {'back-to-back us':>16} {'after sleep us':>15} {'ratio':>7}")
        for name, work in (("sqlite write transaction", sql), ("python (orjson + dicts)", py)):
            warm, cold = measure(work, args.sleep_ms / 1000, args.samples)
            print(f"{name:<26} {warm:>16.1f} {cold:>15.1f} {cold / warm:>7.1f}")


def measure(work: Callable[[], None], sleep_s: float, samples: int) -> tuple[float, float]:
    """Median us of `work` right after a sleep, and of its third call in a row (warm)."""
    warm, cold = [], []
    for _ in range(samples):
        time.sleep(sleep_s)
        cold.append(timed(work))
        work()
        warm.append(timed(work))
    return statistics.median(warm), statistics.median(cold)


def timed(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1e6


def sqlite_work(path: Path) -> Callable[[], None]:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, tenant_id TEXT, data TEXT,"
                 " created_at INTEGER)")  # fmt: skip
    conn.execute("CREATE INDEX events_tenant ON events (tenant_id, id)")
    conn.execute("CREATE TABLE counters (owner TEXT PRIMARY KEY, spent INTEGER)")
    conn.execute("INSERT INTO counters VALUES ('ten_1', 0)")
    counter = iter(range(10**9))

    def work() -> None:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(2):
            conn.execute(
                "INSERT INTO events VALUES (?, 'ten_1', ?, 0)",
                (f"ev_{next(counter):012d}", "d" * 200),
            )
        conn.execute("UPDATE counters SET spent = spent + 1 WHERE owner = 'ten_1'")
        conn.execute("COMMIT")

    return work


_DOC = {"id": "chatcmpl-1", "choices": [{"delta": {"content": "word " * 20}}] * 4,
        "usage": {"prompt_tokens": 12, "completion_tokens": 16}}  # fmt: skip


def py() -> None:
    for _ in range(5):
        doc = orjson.loads(orjson.dumps(_DOC))
        sum(len(c["delta"]["content"]) for c in doc["choices"])


if __name__ == "__main__":
    main()
