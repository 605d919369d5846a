"""The JobStore contract, run against the SQL store (SQLite or Postgres) and the memory store."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.queue.memory import MemoryJobStore
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob, Outcome, QueueStore, backoff_us


@pytest.fixture(params=["sql", "memory"])
async def store(request: pytest.FixtureRequest, db: Database) -> AsyncIterator[QueueStore]:
    store: QueueStore = MemoryJobStore() if request.param == "memory" else SqlJobStore(db)
    yield store
    await store.close()


async def make_due(store: QueueStore, job_id: str) -> None:
    """Test-only time travel: the job's retry time has come."""
    if isinstance(store, MemoryJobStore):
        store._jobs[job_id] = dataclasses.replace(store._jobs[job_id], run_at=0)
        return
    assert isinstance(store, SqlJobStore)
    async with store._db.transaction() as tx:
        await tx.execute("UPDATE jobs SET run_at = 0 WHERE id = :id", {"id": job_id})


async def test_claim_takes_due_jobs_in_priority_order_once(store: QueueStore) -> None:
    later = await store.enqueue(NewJob("t", {"n": 0}, run_at=now_us() + 60_000_000))
    low = await store.enqueue(NewJob("t", {"n": 1}, priority=5))
    high = await store.enqueue(NewJob("t", {"n": 2}, priority=0))
    claimed = await store.claim("default", "w1", 10, lease_s=30)
    assert [j.id for j in claimed] == [high[0].id, low[0].id]
    assert all(j.state == "running" and j.attempts == 1 and j.locked_by == "w1" for j in claimed)
    assert await store.claim("default", "w2", 10, lease_s=30) == []
    assert (await store.get(later[0].id)).state == "queued"  # type: ignore[union-attr]


async def test_concurrent_claimers_never_share_a_job(store: QueueStore) -> None:
    for i in range(200):
        await store.enqueue(NewJob("t", {"i": i}))
    batches = await asyncio.gather(
        *(store.claim("default", f"w{i}", 7, lease_s=30) for i in range(40))
    )
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 200


async def test_unique_key_returns_the_live_job_until_it_finishes(store: QueueStore) -> None:
    first, inserted = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    again, inserted_again = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    assert inserted and not inserted_again and again.id == first.id
    (job,) = await store.claim("default", "w", 1, lease_s=30)
    assert await store.finish(job, "w", Outcome(result={"ok": True})) == "succeeded"
    fresh, inserted = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    assert inserted and fresh.id != first.id


async def test_failures_retry_with_backoff_then_dead_letter(store: QueueStore) -> None:
    job, _ = await store.enqueue(NewJob("t", {}, max_attempts=2))
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    retry_at = now_us() + backoff_us(run.attempts)
    assert await store.finish(run, "w", Outcome(error="boom 1", retry_at=retry_at)) == "queued"
    assert await store.claim("default", "w", 1, lease_s=30) == []  # not due yet
    await make_due(store, job.id)
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    assert run.attempts == 2
    assert await store.finish(run, "w", Outcome(error="boom 2", retry_at=now_us())) == "failed"
    final = await store.get(job.id)
    assert final is not None and final.state == "failed" and final.finished_at is not None
    assert [e["error"] for e in final.errors] == ["boom 1", "boom 2"]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        ceiling = min(3600, 2 ** (attempt - 1)) * 1_000_000
        samples = {backoff_us(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= s <= ceiling for s in samples) and len(samples) > 1
    assert backoff_us(40) <= 3600 * 1_000_000


async def test_rescue_requeues_expired_leases_and_stale_workers_cannot_finish(
    store: QueueStore,
) -> None:
    await store.enqueue(NewJob("t", {}, max_attempts=3))
    await store.enqueue(NewJob("t", {}, max_attempts=1))
    runs = await store.claim("default", "dead-worker", 2, lease_s=0.01)
    await asyncio.sleep(0.05)
    assert await store.rescue_expired() == 2
    states = {j.max_attempts: (await store.get(j.id)).state for j in runs}  # type: ignore[union-attr]
    assert states == {3: "queued", 1: "failed"}
    (again,) = await store.claim("default", "live-worker", 5, lease_s=30)
    # The dead worker wakes up and reports: its lease is gone, so nothing changes.
    stale = next(j for j in runs if j.id == again.id)
    assert await store.finish(stale, "dead-worker", Outcome(result="late")) is None
    assert await store.finish(again, "live-worker", Outcome(result="ok")) == "succeeded"
    assert await store.rescue_expired() == 0


async def test_heartbeat_extends_leases_and_reports_cancellation(store: QueueStore) -> None:
    await store.enqueue(NewJob("t", {}))
    await store.enqueue(NewJob("t", {}))
    a, b = await store.claim("default", "w", 2, lease_s=0.05)
    assert (await store.cancel(b.id)).cancel_requested  # type: ignore[union-attr]
    assert await store.extend_leases("w", [a.id, b.id], lease_s=30) == {b.id}
    assert await store.extend_leases("intruder", [a.id], lease_s=30) == set()
    await asyncio.sleep(0.1)
    assert await store.rescue_expired() == 0


async def test_release_returns_jobs_without_spending_an_attempt(store: QueueStore) -> None:
    job, _ = await store.enqueue(NewJob("t", {}))
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    assert await store.release("someone-else", [run.id]) == 0
    assert await store.release("w", [run.id]) == 1
    back = await store.get(job.id)
    assert back is not None and back.state == "queued" and back.attempts == 0


async def test_cancel_retry_prune_and_depth(store: QueueStore) -> None:
    queued, _ = await store.enqueue(NewJob("t", {}, queue="q1"))
    await store.enqueue(NewJob("t", {}, queue="q2"))
    assert await store.depth() == [("q1", "queued", 1), ("q2", "queued", 1)]
    cancelled = await store.cancel(queued.id)
    assert cancelled is not None and cancelled.state == "cancelled"
    assert (await store.cancel(queued.id)).state == "cancelled"  # type: ignore[union-attr]
    retried = await store.retry(queued.id)
    assert retried is not None and retried.state == "queued" and retried.attempts == 0
    await store.cancel(queued.id)
    assert await store.prune_finished(now_us() - 60_000_000) == 0  # too recent
    assert await store.prune_finished(now_us() + 1) == 1
    assert await store.get(queued.id) is None
    assert [j.queue for j in await store.recent(None, 10)] == ["q2"]


async def test_progress_is_recorded_only_for_the_lease_holder(store: QueueStore) -> None:
    job, _ = await store.enqueue(NewJob("t", {}))
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    await store.set_progress(run, "w", 140, "almost")
    await store.set_progress(run, "intruder", 5, "no")
    current = await store.get(job.id)
    assert current is not None and (current.progress, current.progress_message) == (100, "almost")


async def test_successes_ride_on_the_next_claim_only_where_the_lease_is_held(
    store: QueueStore,
) -> None:
    first, _ = await store.enqueue(NewJob("t", {"n": 1}))
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    second, _ = await store.enqueue(NewJob("t", {"n": 2}))
    # Another worker reports the first job done: it holds no lease on it, so nothing is
    # recorded (left for finish_many, which says the lease is lost), but its claim happens.
    stale = [(run, Outcome(result="stale"))]
    states, claimed = await store.finish_and_claim("w2", stale, "default", 5, lease_s=30)
    assert states == {} and [j.id for j in claimed] == [second.id]
    assert await store.finish_many("w2", stale) == {run.id: None}
    ok = [(run, Outcome(result={"ok": 1}))]
    states, claimed = await store.finish_and_claim("w", ok, "default", 5, lease_s=30)
    assert states == {run.id: "succeeded"} and claimed == []
    done = await store.get(first.id)
    assert done is not None and done.state == "succeeded" and done.result == {"ok": 1}
    assert done.locked_by is None and done.progress == 100 and done.finished_at is not None
    assert (await store.get(second.id)).locked_by == "w2"  # type: ignore[union-attr]
