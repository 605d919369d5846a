import asyncio

from toolcallstore.db import Database
from toolcallstore.ids import now_us
from toolcallstore.queue.sql import SqlJobStore
from toolcallstore.queue.store import NewJob, Outcome, backoff_us


async def test_claim_takes_due_jobs_in_priority_order_once(db: Database) -> None:
    store = SqlJobStore(db)
    later = await store.enqueue(NewJob("t", {"n": 0}, run_at=now_us() + 60_000_000))
    low = await store.enqueue(NewJob("t", {"n": 1}, priority=5))
    high = await store.enqueue(NewJob("t", {"n": 2}, priority=0))
    claimed = await store.claim("default", "w1", 10, lease_s=30)
    assert [j.id for j in claimed] == [high[0].id, low[0].id]
    assert all(j.state == "running" and j.attempts == 1 and j.locked_by == "w1" for j in claimed)
    assert await store.claim("default", "w2", 10, lease_s=30) == []
    assert (await store.get(later[0].id)).state == "queued"  # type: ignore[union-attr]


async def test_concurrent_claimers_never_share_a_job(db: Database) -> None:
    store = SqlJobStore(db)
    for i in range(200):
        await store.enqueue(NewJob("t", {"i": i}))
    batches = await asyncio.gather(
        *(store.claim("default", f"w{i}", 7, lease_s=30) for i in range(40))
    )
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 200


async def test_unique_key_returns_the_live_job_until_it_finishes(db: Database) -> None:
    store = SqlJobStore(db)
    first, inserted = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    again, inserted_again = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    assert inserted and not inserted_again and again.id == first.id
    (job,) = await store.claim("default", "w", 1, lease_s=30)
    assert await store.finish(job, "w", Outcome(result={"ok": True})) == "succeeded"
    fresh, inserted = await store.enqueue(NewJob("t", {}, unique_key="dns:example.com"))
    assert inserted and fresh.id != first.id


async def test_failures_retry_with_backoff_then_dead_letter(db: Database) -> None:
    store = SqlJobStore(db)
    job, _ = await store.enqueue(NewJob("t", {}, max_attempts=2))
    (run,) = await store.claim("default", "w", 1, lease_s=30)
    retry_at = now_us() + backoff_us(run.attempts)
    assert await store.finish(run, "w", Outcome(error="boom 1", retry_at=retry_at)) == "queued"
    assert await store.claim("default", "w", 1, lease_s=30) == []  # not due yet
    async with db.transaction() as tx:
        await tx.execute("UPDATE jobs SET run_at = 0 WHERE id = :id", {"id": job.id})
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
    db: Database,
) -> None:
    store = SqlJobStore(db)
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


async def test_heartbeat_extends_leases_and_reports_cancellation(db: Database) -> None:
    store = SqlJobStore(db)
    await store.enqueue(NewJob("t", {}))
    await store.enqueue(NewJob("t", {}))
    a, b = await store.claim("default", "w", 2, lease_s=0.05)
    async with db.transaction() as tx:
        await tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = :id", {"id": b.id})
    assert await store.extend_leases("w", [a.id, b.id], lease_s=30) == {b.id}
    assert await store.extend_leases("intruder", [a.id], lease_s=30) == set()
    await asyncio.sleep(0.1)
    assert await store.rescue_expired() == 0
