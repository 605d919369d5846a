"""Authenticated, audited endpoint vs /healthz on the same running server, same run.

    python bench/auth_overhead.py [--connections 32] [--seconds 5] [--rounds 3]

Target (issue 2): GET /v1/me (auth + scope + audit row + access log) keeps >= 60% of
/healthz throughput at 32 connections. Rounds alternate the two endpoints so that machine
noise hits both; the median round is reported.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Load, drive, load_generator, start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = dict(kv.split("=", 1) for kv in args.env)
    server = start_server(port, args.database_url, **extra)
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    runs: dict[str, list[Load]] = {"/healthz": [], "/v1/me": []}
    try:
        drive(f"{server.base_url}/v1/me", args.connections, 1, auth)  # warm up
        for _ in range(args.rounds):
            for path in runs:
                load = drive(f"{server.base_url}{path}", args.connections, args.seconds, auth)
                runs[path].append(load)
    finally:
        server.stop()
    # Every /v1/me request must have left an audit row, or the ratio flatters us.
    verify = subprocess.run(
        [sys.executable, "-m", "toolcallstore", "audit", "verify"],
        env={**os.environ, "TOOLCALLSTORE_DATABASE_URL": server.database_url},
        capture_output=True,
        text=True,
    )

    print(
        f"load generator: {load_generator()}; {args.connections} connections, "
        f"{args.rounds} rounds of {args.seconds:g} s each, median round shown"
    )
    print(f"{'endpoint':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    medians = {}
    for path, loads in runs.items():
        rps = statistics.median(x.rps for x in loads)
        p50 = statistics.median(x.p50_ms for x in loads)
        p99 = statistics.median(x.p99_ms for x in loads)
        medians[path] = rps
        print(f"{path:<12} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {sum(x.errors for x in loads):>7}")
    print(f"audit after shutdown: {verify.stdout.strip()}")
    ratio = medians["/v1/me"] / medians["/healthz"]
    verdict = "meets" if ratio >= 0.6 else "MISSES"
    print(f"ratio /v1/me : /healthz = {ratio:.3f} ({verdict} the >= 0.60 target)")


if __name__ == "__main__":
    main()
