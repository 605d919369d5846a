"""A tool job whose lease is lost on its last attempt: the sweep may release its hold as
abandoned, but an effect that happens anyway is still charged, once; and a job's failure keeps
what it cost the provider."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from tests.conftest import Api
from tests.controls.helpers import IRREVERSIBLE_PRICE_MICROS, ledger_agrees
from tests.controls.test_approvals import RISKY, _approved_job, _db
from toolcallstore.controls.executions import interrupt_execution
from toolcallstore.controls.sweeper import run_tool_job, sweep_holds
from toolcallstore.queue.worker import JobContext
from toolcallstore.settings import Settings

SANDBOX_COST_MICROS = 500_000  # models.json: sandbox.irreversible's provider cost


async def _claimed(api: Api, job_id: str, worker: str = "w-first") -> Any:
    store = api.app.state.services.job_store  # type: ignore[attr-defined]
    jobs = await store.claim("tools", worker, 10, 30.0)
    assert [j.id for j in jobs] == [job_id]
    return jobs[0]


async def _lose_lease_on_last_attempt(api: Api, job_id: str) -> None:
    """The worker holding the job stops renewing its lease (a pause, a kill -9 of a process
    that had already acted): the rescuer gives up on it, as its attempts are spent."""
    db = _db(api)
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE jobs SET attempts = max_attempts, lease_until = 1 WHERE id = :id",
            {"id": job_id},
        )
    store = api.app.state.services.job_store  # type: ignore[attr-defined]
    assert await store.rescue_expired() == 1
    state = await db.fetch_val("SELECT state FROM jobs WHERE id = :id", {"id": job_id})
    assert state == "failed"


class Gated:
    """The app's tools, with each tool's run held at its start until `go` is set."""

    def __init__(self, tools: Any) -> None:
        self._tools = tools
        self.entered, self.go = asyncio.Event(), asyncio.Event()

    def get(self, name: str) -> Any:
        tool = self._tools.get(name)

        async def execute(call: Any) -> Any:
            self.entered.set()
            await self.go.wait()
            return await tool.execute(call)

        return dataclasses.replace(tool, execute=execute)


def _store(api: Api) -> Any:
    return api.app.state.services.job_store  # type: ignore[attr-defined]


def _no_workers(settings: Settings) -> Settings:
    return settings.with_(workers=0)  # the test plays the worker itself


async def test_an_effect_after_the_sweep_released_its_hold_is_still_charged_once(
    settings: Settings,
) -> None:
    from tests.conftest import running_api

    async with running_api(_no_workers(settings)) as api:
        agent, started = await _approved_job(api, RISKY)
        job = await _claimed(api, started["job_id"])
        gated = Gated(api.app.state.services.tools)  # type: ignore[attr-defined]
        first = asyncio.create_task(
            run_tool_job(_db(api), gated, JobContext(job, "w-first", _store(api)))  # type: ignore[arg-type]
        )
        await gated.entered.wait()  # the first worker runs the tool, slowly ...
        await _lose_lease_on_last_attempt(api, job.id)
        swept = await sweep_holds(_db(api), job_hold_seconds=60)
        assert swept["holds_released"] == 1  # its job is over: the hold is let go
        gated.go.set()  # ... and acts after all, and reports back
        done = await first
        assert done["status"] == "succeeded"
        tools = api.app.state.services.tools  # type: ignore[attr-defined]
        execution = (
            await api.client.get(f"/v1/executions/{started['id']}", headers=api.auth(agent))
        ).json()
        assert execution["status"] == "succeeded"
        assert execution["amount_usd"] == "0.650000"
        receipt = (
            await api.client.get(f"/v1/receipts/{execution['receipt_id']}", headers=api.auth())
        ).json()
        assert receipt["status"] == "succeeded" and receipt["settled_late"] is True
        assert receipt["amount_usd"] == "0.650000"
        caps = (await api.client.get("/v1/spend_caps", headers=api.auth(agent))).json()
        assert (
            caps["data"][0]["spent_usd"] == "0.650000" and caps["data"][0]["held_usd"] == "0.000000"
        )
        # A third run (a retry by hand) finds it settled and charges nothing more.
        again = await run_tool_job(_db(api), tools, JobContext(job, "w-first", _store(api)))
        assert again == {"execution_id": started["id"], "skipped": "already closed"}
        report = await ledger_agrees(api)
        assert report["total"]["customer_price_usd"] == "0.650000"
        charges = await _db(api).fetch_val(
            "SELECT SUM(amount_micros) FROM ledger_entries WHERE kind = 'charge'"
        )
        assert charges == IRREVERSIBLE_PRICE_MICROS


async def test_the_sweep_leaves_a_hold_whose_job_is_live_again(settings: Settings) -> None:
    # The sweep read the job as finished, then it was queued again (an operator's retry)
    # before the sweep's own transaction: looked at again there, the hold stays.
    from tests.conftest import running_api

    async with running_api(_no_workers(settings)) as api:
        agent, started = await _approved_job(api, RISKY)
        db = _db(api)
        stale = await db.fetch_one("SELECT * FROM executions WHERE id = :id", {"id": started["id"]})
        assert stale is not None
        async with db.transaction() as tx:  # the sweep's earlier read saw it finished
            await tx.execute("UPDATE holds SET expires_at = 1 WHERE id = :h",
                             {"h": stale["hold_id"]})  # fmt: skip
        assert await interrupt_execution(db, stale) is False
        hold = await db.fetch_val("SELECT state FROM holds WHERE id = :h", {"h": stale["hold_id"]})
        assert hold == "open"


async def test_a_job_tools_billed_failure_keeps_its_provider_cost(settings: Settings) -> None:
    from tests.conftest import running_api

    async with running_api(_no_workers(settings)) as api:
        params = RISKY | {"fail_times": 3, "failures_billed": True}
        agent, started = await _approved_job(api, params)
        job = await _claimed(api, started["job_id"])
        db = _db(api)
        async with db.transaction() as tx:  # this run is its last attempt
            await tx.execute("UPDATE jobs SET max_attempts = attempts WHERE id = :id",
                             {"id": job.id})  # fmt: skip
        job = await api.app.state.services.job_store.get(job.id)  # type: ignore[attr-defined]
        tools = api.app.state.services.tools  # type: ignore[attr-defined]
        try:
            await run_tool_job(db, tools, JobContext(job, "w-first", _store(api)))
        except RuntimeError as failed:
            assert "last attempt" in str(failed)
        else:
            raise AssertionError("the job should fail")
        receipt = await db.fetch_one(
            "SELECT status, price_micros, provider_cost_micros FROM receipts"
            " WHERE execution_id = :id",
            {"id": started["id"]},
        )
        assert receipt == {"status": "failed", "price_micros": 0,
                           "provider_cost_micros": SANDBOX_COST_MICROS}  # fmt: skip
        report = await ledger_agrees(api)
        assert report["total"]["provider_cost_usd"] == "0.500000"
