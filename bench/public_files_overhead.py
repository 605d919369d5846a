"""What serving the public files in the app costs every API request: the same app with and
without its PublicFiles middleware, same run.

    python bench/public_files_overhead.py [--connections 32] [--seconds 5] [--rounds 3]

Every request passes PublicFiles, which recognises a public file by name before anything else
(issue 18). Two servers (with, and with the middleware taken out) are driven in alternating
rounds on GET /v1/me (key, audit row) and GET /healthz; the median round is reported and the
ratio without/with should stay ~1.0. GET /llms.txt shows what a public file costs to serve.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer, Load, drive, load_generator, start_server  # noqa: E402


def serve_without_public_files(port: int) -> None:
    """The server process of the baseline: create_app with PublicFiles taken out."""
    from toolcallstore.app import create_app
    from toolcallstore.server import serve
    from toolcallstore.settings import Settings
    from toolcallstore.site.serve import PublicFiles

    settings = Settings.from_env().with_(port=port)
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not PublicFiles]
    serve(settings, app)


def start_baseline(port: int) -> BenchServer:
    workdir = Path(tempfile.mkdtemp(prefix="tcs-bench-"))
    env = {"TOOLCALLSTORE_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}",
           "TOOLCALLSTORE_ADMIN_KEY_FILE": str(workdir / "admin-key"),
           "TOOLCALLSTORE_PRICE_REFRESH_SECONDS": "0"}  # fmt: skip
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, __file__, "--serve-baseline", str(port)],
                               cwd=workdir, env={**_clean_env(), **env}, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).is_success:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    key = (workdir / "admin-key").read_text().strip()
    return BenchServer(process, base, key, workdir, env["TOOLCALLSTORE_DATABASE_URL"])


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-baseline", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_without_public_files(args.serve_baseline)
        return
    servers = {
        "with": start_server(free_port(), None, TOOLCALLSTORE_PRICE_REFRESH_SECONDS="0"),
        "without": start_baseline(free_port()),
    }
    runs: dict[tuple[str, str], list[Load]] = {}
    try:
        for server in servers.values():
            drive(f"{server.base_url}/v1/me", args.connections, 1, _auth(server))  # warm up
        for round_ in range(args.rounds):
            order = list(servers.items())[:: 1 if round_ % 2 == 0 else -1]  # no side always first
            for path in ("/v1/me", "/healthz", "/llms.txt"):
                for name, server in order:
                    if path == "/llms.txt" and name == "without":
                        continue
                    load = drive(f"{server.base_url}{path}", args.connections, args.seconds,
                                 _auth(server))  # fmt: skip
                    runs.setdefault((name, path), []).append(load)
    finally:
        for server in servers.values():
            server.stop()
    _report(args, runs)


def _auth(server: BenchServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


def _report(args: argparse.Namespace, runs: dict[tuple[str, str], list[Load]]) -> None:
    print(f"load generator: {load_generator()}; {args.connections} connections, "
          f"{args.rounds} rounds of {args.seconds:g} s each, median round shown")  # fmt: skip
    median = {key: statistics.median(load.rps for load in loads) for key, loads in runs.items()}
    print("| path | with PublicFiles req/s | without req/s | without/with |")
    print("|---|---|---|---|")
    for path in ("/v1/me", "/healthz"):
        with_, without = median[("with", path)], median[("without", path)]
        print(f"| {path} | {with_:.0f} | {without:.0f} | {without / with_:.3f} |")
    print(f"| /llms.txt (served by PublicFiles) | {median[('with', '/llms.txt')]:.0f} | - | - |")


if __name__ == "__main__":
    main()
