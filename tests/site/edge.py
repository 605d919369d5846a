"""Real Caddy (config/Caddyfile, unchanged) in front of a real `toolcallstore serve`, on
loopback over plain HTTP: the site address, API port and public dir come from the
environment variables the Caddyfile reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CADDYFILE = REPO / "config" / "Caddyfile"
PUBLIC = REPO / "public"


def require_binary(name: str) -> str:
    """The binary's path; CI (which installs it) fails without it, a developer skips."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: .ci/run installs it")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def caddy_env(home: Path, **values: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLCALLSTORE_")}
    return {**env, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"), **values}  # fmt: skip


@contextlib.contextmanager
def running_caddy(api_port: int, home: Path) -> Iterator[str]:
    """`caddy run` with config/Caddyfile; yields its base URL once it answers."""
    caddy = require_binary("caddy")
    port = free_port()
    env = caddy_env(
        home,
        TOOLCALLSTORE_SITE=f"http://127.0.0.1:{port}",
        TOOLCALLSTORE_API=f"127.0.0.1:{api_port}",
        TOOLCALLSTORE_PUBLIC_DIR=str(PUBLIC),
        TOOLCALLSTORE_CADDY_ADMIN="off",
    )
    log = (home / "caddy.log").open("w")
    process = subprocess.Popen(
        [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError((home / "caddy.log").read_text())
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError as exc:
                if time.monotonic() > deadline:
                    log_text = (home / "caddy.log").read_text()
                    raise RuntimeError("caddy did not start: " + log_text) from exc
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
