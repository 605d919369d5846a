"""SQLite write transactions (`Database.run_sync`) run on the event loop's own thread.

Why not on aiosqlite's writer thread, as everything else does: a billable call is two write
transactions of about ten short statements each. Run on a thread, each costs two thread hops
and, worse, a fight for the GIL with the event loop (the writer thread waits up to the switch
interval to get it back after every statement). On the loop thread the same statements cost
only their own time: measured in bench/controls_overhead.py and bench/gateway_overhead.py
(bench/RESULTS.md, 2026-11-26). What keeps the loop from stalling:

- The connection never waits for a lock (`busy_timeout=0`). When another process (the CLI, a
  second server) holds SQLite's write lock, BEGIN IMMEDIATE fails at once and the batch goes to
  aiosqlite's writer thread instead, which waits there (`offload`). So does a batch that finds
  `lock` held by an async `Database.transaction()` on that writer, after waiting for it.
- A batch takes at most MAX_BATCH bodies; the rest go in the next turn of the loop.
- The connection never checkpoints (`wal_autocheckpoint=0`): a background thread copies the WAL
  back into the database every CHECKPOINT_S while writes happen (PASSIVE: it never blocks
  the writer or the readers).

Bodies queued in the same two turns of the loop share one transaction (group commit) through
`sqlite_batch`: one body's error undoes only its own statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from toolcallstore.db.sync import Pending, Work, sqlite_batch

log = logging.getLogger("toolcallstore.db")

T = TypeVar("T")
Outcomes = list[tuple[bool, Any]]

MAX_BATCH = 64
CHECKPOINT_S = 0.25
# Every connection to the file, aiosqlite's included: both writers must keep the same rules.
# temp_store=MEMORY keeps savepoint journals in memory: on disk, a journal over 64 KiB (16
# pages, a batch's worth) is a temporary file opened, written and deleted per transaction.
CONNECTION_PRAGMAS = (
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA temp_store=MEMORY",
)


def connect(path: Path, *, busy_timeout_ms: int, autocheckpoint: bool = True) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode (transactions are explicit), usable from
    any one thread at a time."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    for pragma in (
        f"PRAGMA busy_timeout={busy_timeout_ms}",
        *CONNECTION_PRAGMAS,
        *([] if autocheckpoint else ["PRAGMA wal_autocheckpoint=0"]),
    ):
        conn.execute(pragma)
    return conn


class LoopWriter:
    def __init__(
        self, path: Path, lock: asyncio.Lock, offload: Callable[[Work], Awaitable[Outcomes]]
    ) -> None:
        self._path = path
        self._conn = connect(path, busy_timeout_ms=0, autocheckpoint=False)
        self._lock = lock  # held by `Database.transaction()` on aiosqlite's writer
        self._offload = offload  # runs a batch on that writer's thread, where waiting is fine
        self._queued: list[Pending] = []
        self._turn: asyncio.Handle | None = None
        self._fallback: asyncio.Task[None] | None = None
        self._commits = 0
        self._stopping = asyncio.Event()
        self._checkpointer = asyncio.ensure_future(self._checkpoints())

    async def run(self, body: Callable[..., T], args: tuple[Any, ...]) -> T:
        loop = asyncio.get_running_loop()
        item = Pending(body, args, loop.create_future())
        self._queued.append(item)
        self._schedule(loop)
        try:
            result: T = await item.future
        except asyncio.CancelledError:
            if item in self._queued:  # not started: it never will
                self._queued.remove(item)
            raise
        return result

    async def close(self) -> None:
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        if self._queued:
            self._commit_now()
        if self._fallback is not None:
            await asyncio.wait({self._fallback})
        self._stopping.set()
        await self._checkpointer
        self._conn.close()

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._turn is None:
            self._turn = loop.call_soon(self._next_turn, loop)

    def _next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        # One more turn: the requests made ready in this one queue their bodies too.
        self._turn = loop.call_soon(self._commit_now)

    def _commit_now(self) -> None:
        self._turn = None
        if not self._queued or (self._fallback is not None and not self._fallback.done()):
            return  # the fallback drains the queue
        try:
            begun = not self._lock.locked() and self._begin()
        except sqlite3.Error as exc:
            batch, self._queued = self._queued, []
            _deliver(batch, exc)
            return
        if not begun:
            self._fallback = asyncio.ensure_future(self._commit_elsewhere())
            return
        self._commit_begun()
        if self._queued:
            self._schedule(asyncio.get_running_loop())

    def _begin(self) -> bool:
        """BEGIN IMMEDIATE without waiting; False if another connection holds the lock."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        return True

    def _commit_begun(self) -> None:
        batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
        try:
            outcomes = sqlite_batch(self._conn, [(p.body, p.args) for p in batch], begun=True)
        except Exception as exc:
            _deliver(batch, exc)
        else:
            _deliver(batch, outcomes)
        self._commits += 1

    async def _commit_elsewhere(self) -> None:
        """Wait for `lock`, then commit what is queued: here again if SQLite's lock is free,
        else on aiosqlite's writer thread, which waits for it (busy_timeout)."""
        async with self._lock:
            while self._queued:
                try:
                    begun = self._begin()
                except sqlite3.Error as exc:
                    batch, self._queued = self._queued, []
                    _deliver(batch, exc)
                    return
                if begun:
                    self._commit_begun()
                    continue
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                task = asyncio.ensure_future(self._offload([(p.body, p.args) for p in batch]))
                task.add_done_callback(functools.partial(_deliver_task, batch))
                # Run to its end even if this task is cancelled: the batch's callers wait on it.
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)

    async def _checkpoints(self) -> None:
        conn = connect(self._path, busy_timeout_ms=5000)
        seen = 0
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), CHECKPOINT_S)
                if self._commits == seen:
                    continue
                seen = self._commits
                try:
                    await asyncio.to_thread(_checkpoint, conn)
                except sqlite3.Error:
                    log.exception("WAL checkpoint failed; retrying in %s s", CHECKPOINT_S)
        finally:
            conn.close()


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _deliver(batch: list[Pending], outcomes: Outcomes | BaseException) -> None:
    for i, pending in enumerate(batch):
        if pending.future.done():  # its caller was cancelled meanwhile
            continue
        if isinstance(outcomes, BaseException):
            pending.future.set_exception(outcomes)
            continue
        ok, value = outcomes[i]
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)


def _deliver_task(batch: list[Pending], done: asyncio.Future[Outcomes]) -> None:
    if done.cancelled():
        for pending in batch:
            pending.future.cancel()
        return
    error = done.exception()
    _deliver(batch, error if error is not None else done.result())
