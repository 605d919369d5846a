"""Headless Chromium driven over the DevTools protocol: open a page, collect console errors,
uncaught exceptions and failed loads, the page's links, and a screenshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.site.edge import require_binary


@dataclass
class PageReport:
    url: str
    title: str = ""
    errors: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    missing_anchors: list[str] = field(default_factory=list)


class Tab:
    """One DevTools target: send commands, gather the events that matter."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.loaded = asyncio.Event()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.observe(message)

    def observe(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(f"console.{params['type']}: {params['args']}")
        elif method == "Runtime.exceptionThrown":
            self.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            self.errors.append(f"{params['response']['status']}: {params['response']['url']}")
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def pump_until_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.loaded.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the page did not finish loading")
            self.observe(json.loads(await asyncio.wait_for(self.ws.recv(), left)))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[int]:
    """A headless Chromium; yields its DevTools port."""
    binary = require_binary("chromium")
    profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        active = profile / "DevToolsActivePort"
        for _ in range(300):
            if active.exists() and active.read_text().strip():
                break
            await asyncio.sleep(0.1)
        yield int(active.read_text().split()[0])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def open_page(port: int, url: str, screenshot: Path) -> PageReport:
    async with httpx.AsyncClient() as http:
        target = (await http.put(f"http://127.0.0.1:{port}/json/new?about:blank")).json()
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=2**26) as ws:
        tab = Tab(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await tab.send(f"{domain}.enable")
        await tab.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                       deviceScaleFactor=1, mobile=False)  # fmt: skip
        await tab.send("Page.navigate", url=url)
        await tab.pump_until_loaded(30)
        report = PageReport(url, title=await tab.evaluate("document.title"))
        report.links = await tab.evaluate(
            "Array.from(document.querySelectorAll('a[href]'), a => a.href)"
        )
        report.missing_anchors = await tab.evaluate(
            "Array.from(document.querySelectorAll('a[href^=\"#\"]'), a => a.hash.slice(1))"
            ".filter(id => !document.getElementById(id))"
        )
        shot = await tab.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        report.errors = tab.errors
        return report
