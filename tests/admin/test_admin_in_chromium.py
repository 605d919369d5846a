"""The status page in headless Chromium, the whole app on a real socket: an operator signs in,
sees a provider failing (the sandbox answering 500) and a dead job with its error, presses
Retry and the job runs again; the page refreshes itself. Screenshots go to artifacts/."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.admin.helpers import failing_job, new_key, operator_tenant, wait_for_job
from tests.chat.helpers import Live, live_server, models_file, target_id
from tests.site.browser import Tab, chromium
from tests.site.test_pages_in_chromium import ARTIFACTS
from toolcallstore.settings import Settings

SHOTS = ARTIFACTS / "screenshots" / "admin"
PROVIDERS = {"broken": ("openai", "status=500"), "healthy": ("openai", None)}


async def _chat(live: Live, key: str) -> None:
    body = {"model": "ops", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    r = await live.client.post("/v1/chat/completions", json=body, headers=live.auth(key))
    assert r.status_code == 200, r.text  # the healthy target answered
    assert r.json()["toolcall"]["attempts"][-1]["target"] == target_id("healthy")


async def _open_breaker(live: Live) -> None:
    key = await live.agent_key()
    for _ in range(10):
        await _chat(live, key)
        r = await live.client.get("/v1/health/providers", headers=live.auth())
        states = {t["target"]: t["state"] for t in r.json()["targets"]}
        if states[target_id("broken")] == "open":
            return
    raise AssertionError("the broken provider's breaker never opened")


class Browser:
    def __init__(self, tab: Tab) -> None:
        self.tab = tab

    async def navigate(self, action: Any) -> None:
        """Run `action` (a coroutine that makes the page load another document), then wait."""
        self.tab.loaded.clear()
        await action
        await self.tab.pump_until_loaded(30)

    async def text(self, selector: str) -> str:
        value = await self.tab.evaluate(
            f"(document.querySelector({selector!r}) || {{innerText: ''}}).innerText"
        )
        return str(value)

    async def shot(self, name: str) -> Path:
        import base64

        data = await self.tab.send("Page.captureScreenshot", format="png",
                                   captureBeyondViewport=True)  # fmt: skip
        path = SHOTS / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def wait_for_text(self, selector: str, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = await self.text(selector)
            if needle in text:
                return text
            await asyncio.sleep(0.2)
        raise AssertionError(f"{needle!r} never appeared in {selector}: {text!r}")


@pytest.mark.timeout(180)
async def test_operator_sees_a_failing_provider_and_retries_a_dead_job(
    settings: Settings, tmp_path: Path
) -> None:
    file = models_file(tmp_path, PROVIDERS, {"ops": ["broken", "healthy"]}, hedge_after_ms=0)
    async with live_server(settings.with_(models_file=str(file), job_poll_ms=100)) as live:
        svc = live.app.state.services
        await _open_breaker(live)
        tenant = await operator_tenant(svc.db)
        dead, _ = await svc.jobs.enqueue(failing_job(tenant))
        await wait_for_job(svc.db, dead.id, "failed")
        secret = await new_key(svc.db, tenant, "live", ("admin",))
        async with chromium(tmp_path / "profile") as port, httpx.AsyncClient() as http:
            target = (await http.put(f"http://127.0.0.1:{port}/json/new?about:blank")).json()
            async with websockets.connect(target["webSocketDebuggerUrl"], max_size=2**26) as ws:
                tab = Tab(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    await tab.send(f"{domain}.enable")
                await tab.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                               deviceScaleFactor=1, mobile=False)  # fmt: skip
                await _walk_through(Browser(tab), live, secret, dead.id)
                assert tab.errors == [], tab.errors  # no CSP violation, no failed load
        done = await wait_for_job(svc.db, dead.id, "succeeded")
        assert done["attempts"] == 1
        runs = await svc.db.fetch_val(
            "SELECT runs FROM sandbox_effects WHERE job_id = :id", {"id": dead.id}
        )
        assert runs == 2  # failed once, then ran once more after Retry


async def _walk_through(browser: Browser, live: Live, secret: str, job_id: str) -> None:
    tab = browser.tab
    await browser.navigate(tab.send("Page.navigate", url=live.base_url + "/admin"))
    assert await tab.evaluate("location.pathname") == "/admin/login"  # not signed in yet
    await browser.shot("1-sign-in")
    fill = f"document.getElementById('key').value = {secret!r}; document.forms[0].submit()"
    await browser.navigate(tab.evaluate(fill))
    assert await tab.evaluate("location.pathname") == "/admin"
    assert await tab.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
    providers = await browser.text("#providers-table")
    broken_row = next(line for line in providers.splitlines() if "broken" in line)
    assert target_id("broken") in broken_row and "open" in broken_row and "100%" in broken_row
    assert "500 server_error" in broken_row
    failed = await browser.text("#failed-jobs")
    assert job_id in failed and "failing on purpose (run 1)" in failed
    await browser.shot("2-status")
    retry = f"document.querySelector('form[action=\"/admin/jobs/{job_id}/retry\"] button')"
    await browser.navigate(tab.evaluate(f"{retry}.click()"))
    assert await tab.evaluate("location.search") == "?done=retried"
    assert "put back in its queue" in await browser.text("#notice")
    # The page refreshes itself: a job that dies after it loaded shows up without a reload.
    svc = live.app.state.services
    later, _ = await svc.jobs.enqueue(failing_job(await operator_tenant(svc.db)))
    await browser.wait_for_text("#failed-jobs", later.id, timeout=20)
    assert job_id not in await browser.text("#failed-jobs")  # the retried one ran again
    await browser.shot("3-after-retry")
