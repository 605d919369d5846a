"""Asset download throughput: a 1 MB asset through its signed URL vs Starlette's plain
FileResponse of the same file, same run (issue 14; target >= 0.8x).

    python bench/asset_download.py [--connections 16] [--seconds 5] [--rounds 3]

"ours" is `toolcallstore serve` (every middleware: request id, audit row, auth pass-through,
then the signature check, the asset's row and the file). The baseline is a bare Starlette app
with one route answering FileResponse(path) of the very file, under the same uvicorn
settings. Both are driven by wrk in alternating rounds; the median round is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer, Load, drive, load_generator, start_server  # noqa: E402

SIZE = 1_000_000
KEYS = "bench:" + "b" * 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_baseline(port: int, path: str) -> None:
    """The baseline server process: one FileResponse route, uvicorn as `serve` runs it."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Route

    async def file(request: Request) -> Response:
        return FileResponse(path, media_type="image/png")

    app = Starlette(routes=[Route("/file", file)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")  # fmt: skip


def start_baseline(port: int, path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, __file__, "--serve-baseline", str(port), str(path)])
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/file", timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the baseline server did not start")


async def store_asset(server: BenchServer, data: bytes) -> tuple[str, Path]:
    """Store one asset in the running server's database and assets directory; its signed URL
    and file."""
    from toolcallstore.db import Database
    from toolcallstore.settings import Settings
    from toolcallstore.storage.assets import Assets
    from toolcallstore.storage.local import LocalDiskStorage
    from toolcallstore.storage.signing import SigningKeys

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    db = Database(server.database_url, readers=1)
    await db.connect()
    try:
        # Where the server keeps them: its default, beside its SQLite file.
        storage = LocalDiskStorage(Settings(database_url=server.database_url).resolved_assets_dir())
        assets = Assets(db, storage)
        assets.use_keys(SigningKeys.parse(KEYS))
        tenant = await db.fetch_val("SELECT id FROM tenants LIMIT 1")
        asset = await assets.store(tenant_id=tenant, livemode=False, project_id=None,
                                   owner_kind="bench", owner_id="bench", chunks=chunks(),
                                   content_type="image/png")  # fmt: skip
        path = storage.local_path(asset.storage_key)
        assert path is not None
        return assets.signed_url(asset, ttl_s=86_400), path
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), args.serve_baseline[1])
        return
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(SIZE - 8)
    ours = start_server(free_port(), None, TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0",
                        TOOLCALLSTORE_ASSET_SIGNING_KEYS=KEYS,
                        TOOLCALLSTORE_ACCESS_LOG="false")  # fmt: skip
    baseline: subprocess.Popen[bytes] | None = None
    runs: dict[str, list[Load]] = {}
    try:
        signed, path = asyncio.run(store_asset(ours, data))
        baseline_port = free_port()
        baseline = start_baseline(baseline_port, path)
        urls = {"signed URL (toolcallstore serve)": ours.base_url + signed,
                "plain FileResponse": f"http://127.0.0.1:{baseline_port}/file"}  # fmt: skip
        for url in urls.values():
            answer = httpx.get(url, timeout=10)
            assert answer.status_code == 200 and hashlib.sha256(answer.content).digest() == (
                hashlib.sha256(data).digest()
            ), (url, answer.status_code)
            drive(url, args.connections, 1, {})  # warm up
        for round_ in range(args.rounds):
            order = list(urls.items())[:: 1 if round_ % 2 == 0 else -1]  # no side always first
            for name, url in order:
                runs.setdefault(name, []).append(drive(url, args.connections, args.seconds, {}))
    finally:
        ours.stop()
        if baseline is not None:
            baseline.terminate()
            baseline.wait(timeout=15)
    _report(args, runs)


def _report(args: argparse.Namespace, runs: dict[str, list[Load]]) -> None:
    print(f"load generator: {load_generator()}; {args.connections} connections, {args.rounds}"
          f" rounds of {args.seconds:g} s each, median round shown; {SIZE} B file")  # fmt: skip
    print("| server | req/s | MB/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for name, loads in runs.items():
        load = sorted(loads, key=lambda item: item.rps)[len(loads) // 2]
        medians[name] = load.rps
        print(f"| {name} | {load.rps:.0f} | {load.rps * SIZE / 1e6:.0f} | {load.p50_ms:.2f} |"
              f" {load.p99_ms:.2f} | {sum(x.errors for x in loads)} |")  # fmt: skip
    ours, plain = medians.values()
    print(f"signed / plain: {ours / plain:.3f} (target >= 0.8)")
    print("rounds req/s:", {name: [round(x.rps) for x in loads] for name, loads in runs.items()})


if __name__ == "__main__":
    main()
