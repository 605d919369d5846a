"""Running one media generation: attempts over the lane's targets, each submitted once, polled
to its end, its outputs stored as assets; failover within what the call holds.

Crash safety (issue 14 item 4). An attempt row is committed as `submitting` before its submit
is sent, and becomes `submitted` with the provider's request id and handle in the transaction
that records the acceptance, before anything waits. A run that finds:
- a `submitted` attempt resumes polling that request (never submits again);
- a `submitting` attempt (the process died while the submit was in flight, or its answer was
  lost) asks the provider (`lookup`, by our attempt id) before anything else. Where the provider
  cannot look a submission up (fal), the attempt is marked `lost`: it may have been accepted and
  billed, so its worst-case provider cost is recorded (our loss, never the tenant's) and the
  same provider is not asked again for this generation; the next target may run.

Failover: on `unavailable` (refused connection, 5xx/429 before acceptance), an `ambiguous`
submit that lookup shows was never accepted, or an accepted job that failed at the provider,
the next target whose worst-case price fits what the call holds runs. A content-policy refusal
and an input the provider rejects are final. An accepted job that is given up (the generation is
cancelled, or it outlives `TOOLCALLSTORE_MEDIA_POLL_TIMEOUT_SECONDS`) is cancelled at the
provider and its cost recorded. The tenant pays the winner's price (from what its provider
billed, capped at the hold); the losers' costs are on the receipt as ours.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson

from toolcallstore.controls.pricing import to_micros_up
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import ProviderError
from toolcallstore.ids import new_id, now_us
from toolcallstore.media.adapters import ADAPTERS, SANDBOX_KEY
from toolcallstore.media.base import (
    MediaProvider,
    MediaProviderError,
    MediaRequest,
    Output,
    Polled,
    Submitted,
)
from toolcallstore.media.catalog import MediaCatalog, MediaTarget, parse_size
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.watch import notify_sql
from toolcallstore.storage.assets import Assets
from toolcallstore.tools.registry import CostlyFailure, Outcome, ToolCall

log = logging.getLogger("toolcallstore.media")

FIRST_POLL_S = 0.2
MAX_DOWNLOAD_TRIES = 3


class FinalFailure(CostlyFailure):
    """A generation that failed for good: its job is not retried (see controls/sweeper.py)."""

    final = True


@dataclass
class Hints:
    """Provider webhooks, in this process: a hint that a request's state changed (poll now)."""

    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, provider: str, request_id: str) -> asyncio.Event:
        return self.events.setdefault(f"{provider}:{request_id}", asyncio.Event())

    def poke(self, provider: str, request_id: str) -> bool:
        found = self.events.get(f"{provider}:{request_id}")
        if found is not None:
            found.set()
        return found is not None

    def forget(self, provider: str, request_id: str) -> None:
        self.events.pop(f"{provider}:{request_id}", None)


@dataclass(frozen=True)
class RunnerConfig:
    sandbox_url: str
    submit_timeout_s: float
    poll_max_s: float
    poll_timeout_s: float
    webhook_base: str  # our public URL for provider webhooks; "" for none


def worst_price(catalog: MediaCatalog, target: MediaTarget, params: dict[str, Any]) -> int:
    return catalog.price_of(target.cost(params))


def candidates(catalog: MediaCatalog, params: dict[str, Any]) -> tuple[str, list[MediaTarget]]:
    """The lane (or target) and the targets able to make this request, in try order; those
    whose worst case is above `max_cost_usd` are left out."""
    resolved = catalog.resolve(params.get("model"), params["kind"])
    if resolved is None:
        raise LookupError(params.get("model"))
    lane_id, targets = resolved
    able = [t for t in catalog.ordered(lane_id, targets, params) if t.supports(params)]
    return lane_id, able


class Runner:
    def __init__(
        self,
        db: Database,
        catalog: MediaCatalog,
        http: Callable[[], httpx.AsyncClient],
        assets: Callable[[], Assets],
        config: RunnerConfig,
        hints: Hints,
        changed: Callable[[str], None],
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.http = http
        self.assets = assets
        self.config = config
        self.hints = hints
        self.changed = changed

    def adapter(self, target: MediaTarget, livemode: bool) -> MediaProvider:
        provider = target.provider
        factory = ADAPTERS.get(provider.protocol)
        if factory is None:
            raise ProviderError(f"No adapter for media protocol '{provider.protocol}'.",
                                code="provider_not_configured", status=503)  # fmt: skip
        key = provider.api_key() if livemode else SANDBOX_KEY
        if key is None:
            raise ProviderError(f"Media provider '{provider.id}' has no API key"
                                f" ({provider.api_key_env}).", code="provider_not_configured",
                                status=503)  # fmt: skip
        url = provider.url(livemode=livemode, sandbox_url=self.config.sandbox_url)
        return factory(self.http(), url, key, timeout_s=self.config.submit_timeout_s)

    # -- the run --------------------------------------------------------------------------

    async def run(self, call: ToolCall) -> Outcome:
        gen = await self.db.fetch_one(
            "SELECT * FROM media_generations WHERE execution_id = :e", {"e": call.execution_id}
        )
        if gen is None:
            raise ProviderError("The generation record is missing.")
        params = call.params
        _, targets = candidates(self.catalog, params)
        held = call.estimate.max_cost_micros
        attempts = await self._attempts(gen["id"])
        run = _Run(self, call, gen, params, held, attempts)
        try:
            won = await run.go(targets)
        except _Stop as stop:
            raise await self._failed(gen, stop.error) from None
        rows = await self._attempts(gen["id"])
        result = {"generation_id": gen["id"], "target": won.target.id, "assets": won.asset_ids}
        return Outcome(result, won.price_micros, sum(int(r["cost_micros"]) for r in rows),
                       won.target.provider.id, won.usage, [attempt_record(r) for r in rows],
                       provider_costs=_costs(rows))  # fmt: skip

    async def _failed(self, gen: Row, error: MediaProviderError | None) -> FinalFailure:
        """The generation failed for good: nothing is charged; what attempts cost us is on
        the receipt."""
        rows = await self._attempts(gen["id"])
        cancelled = bool(
            await self.db.fetch_val(
                "SELECT cancel_requested FROM media_generations WHERE id = :id", {"id": gen["id"]}
            )
        )
        if cancelled:
            code, message = "generation_cancelled", "The generation was cancelled."
        elif error is not None and error.kind == "refused":
            code = "content_policy_violation"
            message = f"The provider refused the request (content policy): {error.message}"
        elif error is not None and error.kind == "invalid":
            code, message = "provider_rejected_input", f"The provider rejected it: {error.message}"
        else:
            code = "all_providers_failed"
            tried = "; ".join(f"{r['target']}: {r['state']}" for r in rows) or "none fit"
            message = f"No target of the lane could make it within what was held ({tried})."
        status = "cancelled" if cancelled else "failed"
        await self.set_generation(gen["id"], status=status, finished_at=now_us(),
                                  error=orjson.dumps({"code": code, "message": message[:500]})
                                  .decode())  # fmt: skip
        provider = rows[-1]["provider"] if rows else "media"
        outcome = Outcome(
            {},
            0,
            sum(int(r["cost_micros"]) for r in rows),
            provider,
            {},
            [attempt_record(r) for r in rows],
            provider_costs=_costs(rows),
        )
        return FinalFailure(
            message[:500],
            outcome,
            code=code,
            status=400 if code == "content_policy_violation" else 502,
        )

    async def _attempts(self, generation_id: str) -> list[Row]:
        return await self.db.fetch_all(
            "SELECT * FROM media_attempts WHERE generation_id = :g ORDER BY seq",
            {"g": generation_id},
        )

    async def set_generation(self, generation_id: str, **values: Any) -> None:
        values["updated_at"] = now_us()
        sets = ", ".join(f"{k} = :{k}" for k in values)
        async with self.db.transaction() as tx:
            await tx.execute(f"UPDATE media_generations SET {sets} WHERE id = :id",
                             {**values, "id": generation_id})  # fmt: skip
            if self.db.is_postgres:  # other processes' long-polls wake at COMMIT
                await tx.execute(notify_sql("media_generations"), {"watched_id": generation_id})
        self.changed(generation_id)


@dataclass
class _Run:
    runner: Runner
    call: ToolCall
    gen: Row
    params: dict[str, Any]
    held: int
    attempts: list[Row]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.runner.db

    def request(self, target: MediaTarget, attempt_id: str) -> MediaRequest:
        width, height = parse_size(self.params["size"])
        webhook = None
        if self.runner.config.webhook_base:
            webhook = (f"{self.runner.config.webhook_base.rstrip('/')}/v1/provider-webhooks/"
                       f"{target.provider.id}?attempt={attempt_id}")  # fmt: skip
        return MediaRequest(
            kind=self.params["kind"], model=target.model, prompt=self.params["prompt"],
            width=width, height=height, n=int(self.params.get("n", 1)),
            seconds=self.params.get("seconds"), seed=self.params.get("seed"),
            negative_prompt=self.params.get("negative_prompt"), client_ref=attempt_id,
            webhook_url=webhook,
        )  # fmt: skip

    async def go(self, targets: list[MediaTarget]) -> _Won:
        by_id = {t.id: t for t in self.runner.catalog.targets.values()}
        tried: set[str] = set()
        lost_providers: set[str] = set()
        # Resume what a previous run left: never submit again what may have been accepted.
        for row in self.attempts:
            tried.add(row["target"])
            target = by_id.get(row["target"])
            if target is None:
                continue
            if row["state"] == "submitting":
                row = await self._resolve_in_flight(row, target)
            if row["state"] == "lost":
                lost_providers.add(target.provider.id)
            if row["state"] == "submitted":
                handle = orjson.loads(row["handle"])
                outcome = await self._follow(row, target, Submitted(row["request_id"], handle))
                if outcome is not None:
                    return outcome
        for target in targets:
            if target.id in tried or target.provider.id in lost_providers:
                continue
            if worst_price(self.runner.catalog, target, self.params) > self.held:
                continue  # its worst case does not fit what the call holds
            tried.add(target.id)
            outcome = await self._attempt(target)
            if outcome is not None:
                return outcome
            if await self._cancel_requested():
                break
        raise self._failure()

    async def _cancel_requested(self) -> bool:
        flag = await self.db.fetch_val(
            "SELECT cancel_requested FROM media_generations WHERE id = :id", {"id": self.gen["id"]}
        )
        return bool(flag)

    async def _attempt(self, target: MediaTarget) -> _Won | None:
        """One target: submit once, then follow it; None to fail over."""
        if await self._cancel_requested():
            return None
        seq = await self.db.fetch_val(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM media_attempts WHERE generation_id = :g",
            {"g": self.gen["id"]},
        )
        attempt_id = new_id("matt")
        now = now_us()
        row: Row = {"id": attempt_id, "generation_id": self.gen["id"], "seq": int(seq),
                    "target": target.id, "provider": target.provider.id, "state": "submitting",
                    "request_id": None, "handle": None, "cost_micros": 0, "error": None,
                    "created_at": now, "updated_at": now}  # fmt: skip
        await _write(self.db, 
            f"INSERT INTO media_attempts ({', '.join(row)}) VALUES"
            f" ({', '.join(':' + k for k in row)})", row,
        )  # fmt: skip
        adapter = self.runner.adapter(target, self.call.livemode)
        try:
            submitted = await adapter.submit(self.request(target, attempt_id))
        except MediaProviderError as error:
            if error.kind == "ambiguous":
                row = await self._resolve_in_flight(row, target, adapter)
                if row["state"] != "submitted":
                    return None
                return await self._follow(
                    row, target, Submitted(row["request_id"], orjson.loads(row["handle"]))
                )
            await self._end(row, "refused" if error.kind == "refused" else error.kind, 0, error)
            if error.kind in ("refused", "invalid"):
                raise self._failure(error) from None
            return None
        row = await self._accepted(row, submitted)
        return await self._follow(row, target, submitted)

    async def _accepted(self, row: Row, submitted: Submitted) -> Row:
        """Record the provider's request id and handle with the acceptance, in one transaction,
        before anything waits."""
        handle = orjson.dumps(submitted.handle).decode()

        def record(tx: SyncTransaction) -> None:
            tx.execute(
                "UPDATE media_attempts SET state = 'submitted', request_id = :rid, handle = :h,"
                " updated_at = :now WHERE id = :id",
                {"rid": submitted.request_id, "h": handle, "now": now_us(), "id": row["id"]},
            )
            tx.execute(
                "UPDATE media_generations SET status = 'queued', updated_at = :now WHERE id = :id",
                {"now": now_us(), "id": self.gen["id"]},
            )

        await self.db.run_sync(record)
        self.runner.changed(self.gen["id"])
        return {**row, "state": "submitted", "request_id": submitted.request_id, "handle": handle}

    async def _resolve_in_flight(self, row: Row, target: MediaTarget,
                                 adapter: MediaProvider | None = None) -> Row:  # fmt: skip
        """A submit whose answer never came: ask the provider before anything else."""
        adapter = adapter or self.runner.adapter(target, self.call.livemode)
        if adapter.can_lookup:
            found = await self._lookup(adapter, target, row)
            if found is not None:
                return await self._accepted(row, found)
            # The provider does not know it: it was never accepted, nothing was billed.
            await self._end(row, "unavailable", 0, MediaProviderError(
                "unavailable", f"{target.provider.id}: the submit's answer was lost and the"
                " provider has no such request"))  # fmt: skip
            return {**row, "state": "unavailable"}
        # It may have been accepted and billed, and cannot be found: never ask again, record
        # its worst case as our cost (the tenant pays nothing for it).
        cost = to_micros_up(target.cost(self.params))
        await self._end(row, "lost", cost, MediaProviderError(
            "ambiguous", f"{target.provider.id}: the submit's answer was lost and the provider"
            " cannot look requests up; not submitted again"))  # fmt: skip
        return {**row, "state": "lost", "cost_micros": cost}

    async def _lookup(self, adapter: MediaProvider, target: MediaTarget,
                      row: Row) -> Submitted | None:  # fmt: skip
        delay = FIRST_POLL_S
        for _ in range(5):
            try:
                return await adapter.lookup(self.request(target, row["id"]))
            except MediaProviderError:
                await asyncio.sleep(delay)
                delay *= 2
        raise ProviderError(f"{target.provider.id}: could not look the lost submit up; will"
                            " try again")  # fmt: skip

    async def _follow(self, row: Row, target: MediaTarget, submitted: Submitted) -> _Won | None:
        """Poll an accepted request to its end; the outcome, or None to fail over."""
        adapter = self.runner.adapter(target, self.call.livemode)
        hint = self.runner.hints.event(target.provider.id, submitted.request_id)
        deadline = time.monotonic() + self.runner.config.poll_timeout_s
        interval = FIRST_POLL_S
        state: Polled | None = submitted.state
        seen: tuple[str, float | None] | None = None
        try:
            while True:
                if state is None:
                    try:
                        state = await adapter.poll(submitted)
                    except MediaProviderError as poll_error:
                        if poll_error.kind in ("refused", "invalid", "failed"):
                            state = Polled("failed", error=poll_error)
                        else:  # a transient poll failure: the request is still there
                            wait = max(interval, poll_error.retry_after or 0)
                            await self._sleep(hint, wait)
                            interval = min(self.runner.config.poll_max_s, interval * 2)
                            continue
                if state.status in ("queued", "running") and (state.status, state.progress) != seen:
                    seen = (state.status, state.progress)
                    await self.runner.set_generation(self.gen["id"], status=state.status,
                                                     progress=state.progress)  # fmt: skip
                if state.status == "succeeded":
                    return await self._succeeded(row, target, adapter, state)
                if state.status in ("failed", "cancelled"):
                    error = state.error or MediaProviderError(
                        "failed", f"{target.provider.id}: the request {state.status}"
                    )
                    cost = state.cost_micros or 0
                    if error.kind == "refused":  # the work was done, then withheld: billed
                        cost = state.cost_micros or to_micros_up(target.cost(self.params))
                    await self._end(row, "refused" if error.kind == "refused" else "failed",
                                    cost, error)  # fmt: skip
                    if error.kind in ("refused", "invalid"):
                        raise self._failure(error)
                    return None
                if await self._cancel_requested() or time.monotonic() > deadline:
                    await self._give_up(row, target, adapter, submitted)
                    return None
                await self._sleep(hint, max(interval, state.retry_after or 0))
                interval = min(self.runner.config.poll_max_s, interval * 1.5)
                state = None
        finally:
            self.runner.hints.forget(target.provider.id, submitted.request_id)

    async def _sleep(self, hint: asyncio.Event, seconds: float) -> None:
        """Wait before the next poll, less if a provider webhook hints that it changed."""
        jittered = seconds * random.uniform(0.9, 1.1)
        try:
            await asyncio.wait_for(hint.wait(), jittered)
        except TimeoutError:
            pass
        hint.clear()

    async def _give_up(self, row: Row, target: MediaTarget, adapter: MediaProvider,
                       submitted: Submitted) -> None:  # fmt: skip
        """Stop following an accepted request: cancel it where possible, record its cost."""
        cancelled = False
        if adapter.can_cancel:
            try:
                cancelled = await adapter.cancel(submitted)
            except MediaProviderError:
                cancelled = False
        # A cancelled request may still have run a while; one we could not cancel runs on.
        cost = to_micros_up(target.cost(self.params))
        why = "cancelled at the provider" if cancelled else "could not be cancelled"
        await self._end(
            row,
            "cancelled",
            cost,
            MediaProviderError(
                "failed", f"{target.provider.id}: given up ({why}); its worst case recorded"
            ),
        )

    async def _succeeded(self, row: Row, target: MediaTarget, adapter: MediaProvider,
                         state: Polled) -> _Won:  # fmt: skip
        assets = self.runner.assets()
        # A run that died mid-download left partial assets: they go before the new ones.
        await assets.delete_for_owner("media_generation", self.gen["id"])
        stored = []
        for output in state.outputs:
            stored.append(await self._store(assets, adapter, output))
        cost = state.cost_micros
        billed = Decimal(cost) / 1_000_000 if cost is not None else target.cost(self.params)
        cost_micros = cost if cost is not None else to_micros_up(billed)
        await self._end(row, "succeeded", cost_micros, None)
        price = min(self.runner.catalog.price_of(billed), self.held)
        asset_ids = [a.id for a in stored]
        await self.runner.set_generation(
            self.gen["id"], status="succeeded", progress=1.0,
            assets=orjson.dumps(asset_ids).decode(), finished_at=now_us(),
        )  # fmt: skip
        usage = {"basis": target.basis, "units": str(target.units(self.params)),
                 "outputs": len(stored)}  # fmt: skip
        return _Won(target, price, asset_ids, usage)

    async def _store(self, assets: Assets, adapter: MediaProvider, output: Output) -> Any:
        for attempt in range(1, MAX_DOWNLOAD_TRIES + 1):
            try:
                return await assets.store(
                    tenant_id=self.call.tenant_id, livemode=self.call.livemode,
                    project_id=self.call.project_id, owner_kind="media_generation",
                    owner_id=self.gen["id"], chunks=_chunks(adapter, output),
                    content_type=output.content_type,
                )  # fmt: skip
            except MediaProviderError:
                if attempt == MAX_DOWNLOAD_TRIES:
                    raise ProviderError("Downloading the provider's output kept failing; the"
                                        " job will try again.") from None  # fmt: skip
                await asyncio.sleep(FIRST_POLL_S * attempt)
        raise AssertionError("unreachable")

    async def _end(self, row: Row, state: str, cost: int, error: MediaProviderError | None) -> None:
        message = (
            None
            if error is None
            else orjson.dumps(
                {"kind": error.kind, "message": error.message, "status": error.status}
            ).decode()
        )
        await _write(
            self.db,
            "UPDATE media_attempts SET state = :s, cost_micros = :c, error = :e, updated_at = :now"
            " WHERE id = :id",
            {"s": state, "c": cost, "e": message, "now": now_us(), "id": row["id"]},
        )

    def _failure(self, error: MediaProviderError | None = None) -> _Stop:
        return _Stop(error)


@dataclass(frozen=True)
class _Won:
    target: MediaTarget
    price_micros: int
    asset_ids: list[str]
    usage: dict[str, Any]


class _Stop(Exception):
    """The run ends without a result: a final refusal, or no target left to try."""

    def __init__(self, error: MediaProviderError | None) -> None:
        super().__init__(error.message if error else "no target left")
        self.error = error


async def _chunks_of(adapter: MediaProvider, output: Output) -> AsyncIterator[bytes]:
    if output.data is not None:
        yield output.data
        return
    async for chunk in adapter.download(output):
        yield chunk


def _chunks(adapter: MediaProvider, output: Output) -> AsyncIterator[bytes]:
    return _chunks_of(adapter, output)


def attempt_record(row: Row) -> dict[str, Any]:
    """An attempt as the receipt shows it (what it cost us is the operator's)."""
    error = orjson.loads(row["error"]) if row["error"] else None
    return {"target": row["target"], "provider": row["provider"], "outcome": row["state"],
            "request_id": row["request_id"], "provider_cost_usd": micros_to_usd(
                int(row["cost_micros"])),
            "error": None if error is None else error.get("message")}  # fmt: skip


def _costs(rows: list[Row]) -> dict[str, int]:
    costs: dict[str, int] = {}
    for row in rows:
        if int(row["cost_micros"]):
            costs[row["provider"]] = costs.get(row["provider"], 0) + int(row["cost_micros"])
    return costs


async def _write(db: Database, sql: str, values: dict[str, Any]) -> None:
    async with db.transaction() as tx:
        await tx.execute(sql, values)
