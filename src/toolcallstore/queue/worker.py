"""The worker pool: claims due jobs, runs their handlers, heartbeats leases, rescues the leases
of dead workers, and on shutdown hands unfinished jobs back instead of abandoning them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from toolcallstore.ids import now_us, random_base62
from toolcallstore.metrics import Metrics
from toolcallstore.queue.listener import Listener
from toolcallstore.queue.sql import NOTIFY_CHANNEL
from toolcallstore.queue.store import Job, NewJob, Outcome, QueueStore, backoff_us

log = logging.getLogger("toolcallstore.jobs")


class JobCancelled(Exception):
    """Raised by `JobContext.check_cancelled` when the job's cancellation was requested."""


class RetryAt(Exception):
    """Raised by a handler whose attempt failed and that chooses when the next one runs
    (epoch microseconds; None: no further attempt). Webhook deliveries keep their schedule."""

    def __init__(self, message: str, retry_at: int | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


@dataclass
class JobContext:
    job: Job
    worker: str
    store: QueueStore
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def progress(self, percent: int, message: str | None = None) -> None:
        await self.store.set_progress(self.job, self.worker, percent, message)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled(self.job.id)


Handler = Callable[[JobContext], Awaitable[Any]]
StateMap = dict[str, str | None]


@dataclass(frozen=True)
class HandlerSpec:
    handler: Handler
    queue: str
    max_attempts: int


class Registry:
    """Job types and their handlers; capabilities register theirs when the app is built."""

    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(
        self, job_type: str, handler: Handler, *, queue: str = "default", max_attempts: int = 5
    ) -> None:
        if job_type in self._specs:
            raise ValueError(f"a handler for {job_type!r} is already registered")
        self._specs[job_type] = HandlerSpec(handler, queue, max_attempts)

    def get(self, job_type: str) -> HandlerSpec | None:
        return self._specs.get(job_type)

    def queues(self) -> set[str]:
        return {spec.queue for spec in self._specs.values()} or {"default"}


@dataclass(frozen=True)
class PoolConfig:
    concurrency: int = 4
    queue_limits: dict[str, int] = field(default_factory=dict)
    lease_s: float = 30.0
    poll_s: float = 1.0
    rescue_s: float = 5.0
    grace_s: float = 10.0
    batch: int = 32


class WorkerPool:
    def __init__(
        self, store: QueueStore, registry: Registry, config: PoolConfig, metrics: Metrics
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{random_base62(6)}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._draining = asyncio.Event()  # claim nothing more; running jobs carry on
        self._running: dict[str, tuple[asyncio.Task[None], JobContext]] = {}
        # Outcomes waiting to be recorded: one statement records a whole batch of them. Their
        # jobs free their slots at once but stay leased (and heartbeated) until recorded; a
        # crash before that means the job runs again after its lease, never that it is lost.
        self._done: list[tuple[Job, Outcome, float]] = []
        self._finishing: dict[str, Job] = {}
        self._done_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def enqueue_many(self, jobs: list[NewJob]) -> list[str]:
        """Enqueue unkeyed jobs in one transaction and wake idle workers."""
        ids = await self.store.enqueue_many(jobs)
        self._wake.set()
        return ids

    async def enqueue(self, job: NewJob) -> tuple[Job, bool]:
        """Enqueue and wake this process's idle workers at once."""
        spec = self.registry.get(job.type)
        if spec is not None and job.queue == "default" and spec.queue != "default":
            job = dataclasses.replace(job, queue=spec.queue)
        created = await self.store.enqueue(job)
        self._wake.set()
        return created

    def wake(self) -> None:
        self._wake.set()

    async def listen(self, postgres_url: str) -> Callable[[], Awaitable[None]]:
        """Wake on NOTIFY from any process enqueueing on this Postgres, reconnecting whenever
        the connection is lost (listener.py); returns the closer."""
        listener = Listener(postgres_url, NOTIFY_CHANNEL, self._wake.set)
        await listener.start()
        return listener.close

    def start(self) -> dict[str, asyncio.Task[None]]:
        loops = {
            "workers": self._claim_loop(),
            "heartbeat": self._heartbeat_loop(),
            "rescuer": self._rescue_loop(),
            "completer": self._complete_loop(),
        }
        named = {
            name: asyncio.create_task(coro, name=f"jobs-{name}") for name, coro in loops.items()
        }
        self._tasks = list(named.values())
        return named

    def drain(self) -> None:
        """Claim no more jobs (the server is shutting down); running ones carry on, their
        leases still extended, until `stop`."""
        self._draining.set()
        self._wake.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming; let running jobs finish within the grace period (`grace_s`, else
        the pool's), then hand back the leases of the rest so another worker takes them at
        once."""
        self._draining.set()
        self._stopping.set()
        self._wake.set()
        running = [task for task, _ in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=self.config.grace_s if grace_s is None else grace_s)
        leftover = [job_id for job_id, (task, _) in self._running.items() if not task.done()]
        for job_id in leftover:
            self._running[job_id][0].cancel()
        if leftover:
            await asyncio.wait([self._running[j][0] for j in leftover], timeout=5)
        await self._record_done()
        leftover = [job_id for job_id in leftover if job_id in self._running]
        if leftover:
            released = await self.store.release(self.worker_id, leftover)
            log.info("released unfinished jobs", extra={"fields": {"count": released}})
            for job_id in leftover:
                self._running.pop(job_id, None)
        self._done_event.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.grace_s)
        await self.store.close()

    def _free_slots(self, queue: str) -> int:
        # Outcomes not yet recorded hold no slot, up to a backlog of one batch: beyond it, a
        # slow database slows claiming instead of piling up unrecorded work.
        backlog = max(0, len(self._finishing) - max(self.config.batch, self.config.concurrency))
        total = self.config.concurrency - len(self._running) - backlog
        limit = self.config.queue_limits.get(queue)
        if limit is not None:
            busy = sum(1 for _, ctx in self._running.values() if ctx.job.queue == queue)
            total = min(total, limit - busy)
        return max(0, min(total, self.config.batch))

    async def _claim_loop(self) -> None:
        while not self._draining.is_set():
            self._wake.clear()
            claimed = 0
            for queue in sorted(self.registry.queues()):
                slots = self._free_slots(queue)
                if slots == 0:
                    continue
                jobs = await self._claim(queue, slots)
                claimed += len(jobs)
                for job in jobs:
                    self._start(job)
            if claimed and any(self._free_slots(q) for q in self.registry.queues()):
                continue  # more may be due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_s)

    async def _claim(self, queue: str, slots: int) -> list[Job]:
        """Claim, recording the successes waiting to be recorded in the same round trip."""
        batch: list[tuple[Job, Outcome, float]] = []
        others: list[tuple[Job, Outcome, float]] = []
        for done in self._done:
            (batch if done[1].error is None and not done[1].cancelled else others).append(done)
        self._done = others
        try:
            states, jobs = await self.store.finish_and_claim(
                self.worker_id, [(job, out) for job, out, _ in batch], queue, slots,
                self.config.lease_s,
            )  # fmt: skip
        except BaseException as exc:
            self._done[:0] = batch  # kept for the completer: an outcome is never dropped
            if not isinstance(exc, Exception):
                raise
            log.exception("claiming jobs failed; retrying")
            return []
        left = [done for done in batch if done[0].id not in states]
        if left:  # the completer records them, waiting for their rows if it must
            self._done[:0] = left
            self._done_event.set()
        self._recorded([done for done in batch if done[0].id in states], dict(states))
        return jobs

    def _start(self, job: Job) -> None:
        ctx = JobContext(job, self.worker_id, self.store)
        task = asyncio.create_task(self._run(ctx), name=f"job-{job.id}")
        self._running[job.id] = (task, ctx)
        self.metrics.job_claim_latency.labels(job.queue).observe(
            max(0.0, (now_us() - job.run_at) / 1_000_000)
        )

    async def _run(self, ctx: JobContext) -> None:
        job = ctx.job
        started = time.perf_counter()
        spec = self.registry.get(job.type)
        if spec is None:
            outcome = Outcome(error=f"no handler is registered for job type {job.type!r}")
        else:
            outcome = await self._call(spec, ctx)
        # The slot is free now; the lease and its heartbeat last until the outcome is recorded
        # (by the next claim, or by the completer).
        self._running.pop(job.id, None)
        self._finishing[job.id] = job
        self._done.append((job, outcome, started))
        self._done_event.set()
        self._wake.set()

    async def _complete_loop(self) -> None:
        while not (self._stopping.is_set() and not self._running and not self._done):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done_event.wait(), 0.5)
            self._done_event.clear()
            await asyncio.sleep(0.001)  # let jobs finishing together share the transaction
            try:
                await self._record_done()
            except Exception:
                log.exception("recording job outcomes failed; will retry")
                await asyncio.sleep(1.0)

    async def _record_done(self) -> None:
        while self._done:
            batch, self._done = self._done, []
            try:
                states = await self.store.finish_many(
                    self.worker_id, [(job, outcome) for job, outcome, _ in batch]
                )
            except BaseException:
                self._done[:0] = batch  # keep them: an outcome is never dropped
                raise
            self._recorded(batch, states)
            self._wake.set()

    def _recorded(self, batch: list[tuple[Job, Outcome, float]], states: StateMap) -> None:
        finished = time.perf_counter()
        for job, _, started in batch:
            state = states.get(job.id) or "lease_lost"
            self.metrics.job_runs.labels(job.type, state).observe(finished - started)
            self._finishing.pop(job.id, None)

    async def _call(self, spec: HandlerSpec, ctx: JobContext) -> Outcome:
        try:
            return Outcome(result=await spec.handler(ctx))
        except JobCancelled:
            return Outcome(cancelled=True)
        except RetryAt as exc:
            return Outcome(error=str(exc)[:1000], retry_at=exc.retry_at)
        except Exception as exc:
            log.warning("job failed", exc_info=True, extra={"fields": {"job": ctx.job.id}})
            retry_at = now_us() + backoff_us(ctx.job.attempts)
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:1000], retry_at=retry_at)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.lease_s / 3)
            ids = [*self._running, *self._finishing]
            try:
                cancel = await self.store.extend_leases(self.worker_id, ids, self.config.lease_s)
            except Exception:
                log.exception("heartbeat failed")
                continue
            for job_id in cancel:
                entry = self._running.get(job_id)
                if entry is not None:
                    entry[1].cancelled.set()

    async def _rescue_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await self.store.rescue_expired():
                    self._wake.set()
            except Exception:
                log.exception("rescuing expired leases failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.rescue_s)
