"""Long-poll and SSE waiting for changes of rows (jobs, media generations), shared by every
waiting request of a process.

A request waiting for row X to change registers with the row's current `updated_at` and sleeps
on an event. One background poll per table and process (only while someone waits) asks the
database which rows changed since it last looked, with one statement whatever the number of
waiters, and wakes theirs; a change made in this process (`notify`) wakes them at once, and on
Postgres so does a change made in any process (its transaction ends with `notify_sql`; the watch
LISTENs), the poll then running once a second as a safety net. So a thousand agents
long-polling cost a few statements a second, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from toolcallstore.db import Database
from toolcallstore.ids import now_us

log = logging.getLogger("toolcallstore.watch")

OVERLAP_US = 2_000_000  # rows stamped by another process's clock up to this far behind ours
LISTENING_INTERVAL_S = 1.0  # the safety-net poll while a Postgres LISTEN delivers changes
CHANNEL = "toolcallstore_watch"  # NOTIFY payload: "<table>:<row id>"


def notify_sql(table: str) -> str:
    """The statement a Postgres transaction that changes a watched row ends with: delivered to
    every process's watch at COMMIT (and not at all on ROLLBACK)."""
    return f"SELECT pg_notify('{CHANNEL}', '{table}:' || :watched_id)"


@dataclass
class _Waiter:
    seen: int  # the updated_at the waiter already knows
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Watch:
    def __init__(self, db: Database, table: str, interval_s: float = 0.05) -> None:
        if table not in ("jobs", "media_generations"):
            raise ValueError(table)
        self.db = db
        self.table = table
        self.interval_s = interval_s
        self._waiters: dict[str, list[_Waiter]] = defaultdict(list)
        self._task: asyncio.Task[None] | None = None
        self._since = now_us()
        self._conn: asyncpg.Connection | None = None
        self.statements = 0  # how many polls ran

    async def listen(self, url: str) -> None:
        """On Postgres: wake waiters on NOTIFYs from every process; polling then only backs
        them up (once a second). A lost connection falls back to fast polling."""
        conn = await asyncpg.connect(
            url, server_settings={"application_name": "toolcallstore-watch"}
        )
        prefix = self.table + ":"

        def on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
            if payload.startswith(prefix):
                self.notify(payload[len(prefix) :])

        def on_lost(_c: object) -> None:
            self._conn = None

        conn.add_termination_listener(on_lost)
        await conn.add_listener(CHANNEL, on_notify)
        self._conn = conn

    def notify(self, row_id: str) -> None:
        """A change made in this process: its waiters look at once."""
        for waiter in self._waiters.get(row_id, ()):
            waiter.event.set()

    async def wait(self, row_id: str, seen_updated_at: int, timeout: float) -> bool:
        """Until row `row_id` changes after `seen_updated_at`, or `timeout`; True if woken."""
        waiter = _Waiter(seen_updated_at)
        self._waiters[row_id].append(waiter)
        self._ensure_polling()
        try:
            async with asyncio.timeout(timeout):
                await waiter.event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(row_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[row_id]

    def _ensure_polling(self) -> None:
        if self._task is None or self._task.done():
            self._since = now_us() - OVERLAP_US
            self._task = asyncio.create_task(self._poll(), name=f"watch-{self.table}")

    async def _poll(self) -> None:
        while self._waiters:
            listening = self._conn is not None and not self._conn.is_closed()
            await asyncio.sleep(LISTENING_INTERVAL_S if listening else self.interval_s)
            started = now_us()
            try:
                rows = await self.db.fetch_all(
                    f"SELECT id, updated_at FROM {self.table} WHERE updated_at > :since",
                    {"since": self._since},
                )
            except Exception:
                log.exception("watching %s failed; retrying", self.table)
                continue
            self.statements += 1
            self._since = started - OVERLAP_US
            for row in rows:
                for waiter in self._waiters.get(row["id"], ()):
                    if int(row["updated_at"]) > waiter.seen:
                        waiter.event.set()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
