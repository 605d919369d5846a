"""LISTEN for enqueues from every process on the same Postgres, and keep listening.

A NOTIFY sent while the listening connection is down is lost for good, so after every
(re)connection the pool is woken once: its claim is the poll that picks up whatever was enqueued
meanwhile. A lost connection is noticed by asyncpg's termination callback (the server closed
it: restart, `pg_terminate_backend`, a proxy's idle timeout) or by a periodic liveness check (a
silent network), and reopened with a capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger("toolcallstore.jobs")

APPLICATION_NAME = "toolcallstore-listen"
CHECK_S = 5.0  # a liveness query this often, for losses no callback reports
FIRST_RETRY_S = 0.1
MAX_RETRY_S = 5.0


class Listener:
    def __init__(self, url: str, channel: str, wake: Callable[[], None]) -> None:
        self._url = url
        self._channel = channel
        self._wake = wake
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.connects = 0  # how many times the LISTEN was (re)established

    async def start(self) -> None:
        """Connect once (a failure here stops start-up), then keep the LISTEN alive."""
        await self._connect()
        self._task = asyncio.create_task(self._keep_alive(), name="jobs-listener")

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self._disconnect()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._url, server_settings={"application_name": APPLICATION_NAME}
        )
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(self._channel, lambda *_: self._wake())
        self._conn = conn
        self.connects += 1
        self._wake()  # NOTIFYs sent while nobody listened are gone: poll once now

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _keep_alive(self) -> None:
        while not self._stopping.is_set():
            await self._wait_for_loss()
            if self._stopping.is_set():
                return
            log.warning("the LISTEN connection was lost; reconnecting")
            await self._disconnect()
            await self._reconnect()

    async def _wait_for_loss(self) -> None:
        while not (self._stopping.is_set() or self._lost.is_set()):
            stop_or_loss = [asyncio.ensure_future(e.wait()) for e in (self._stopping, self._lost)]
            await asyncio.wait(stop_or_loss, timeout=CHECK_S, return_when="FIRST_COMPLETED")
            for waiter in stop_or_loss:
                waiter.cancel()
            if self._stopping.is_set() or self._lost.is_set():
                return
            try:
                assert self._conn is not None
                await self._conn.fetchval("SELECT 1", timeout=CHECK_S)
            except Exception:
                self._lost.set()

    async def _reconnect(self) -> None:
        delay = FIRST_RETRY_S
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            try:
                await self._connect()
                log.info("LISTEN re-established", extra={"fields": {"connects": self.connects}})
                return
            except Exception as exc:
                log.warning(
                    "reconnecting the LISTEN connection failed; will retry",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}", "in_s": delay}},
                )
                delay = min(MAX_RETRY_S, delay * 2)
