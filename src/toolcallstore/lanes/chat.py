"""A chat call after its hold is taken: run the lane, stream or assemble the answer, settle.

`ChatCall` is the ASGI response of `POST /v1/chat/completions`. It sends nothing until the lane
has a first token, so a call that fails on every target is still a plain HTTP error (502
`all_providers_failed`, its hold released). Once streaming, it settles before the last chunk,
which carries the usage and the `toolcall` object (receipt, cost, target, attempts); a failure
after the first token ends the stream with an in-band error chunk and settles what was
delivered. A client that disconnects cancels the work: the upstream is closed at once and what
was produced is settled all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from toolcallstore.context import RequestContext
from toolcallstore.controls.executions import Origin, close_execution
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.errors import APIError, InternalError, InvalidRequest, ProviderError
from toolcallstore.idempotency import KeyClaim, store_response
from toolcallstore.lanes.attempt import Attempt
from toolcallstore.lanes.base import StreamError
from toolcallstore.lanes.openai_out import DONE, Assembly
from toolcallstore.lanes.plan import CallPlan
from toolcallstore.lanes.router import AllProvidersFailed, LaneCall, Refused
from toolcallstore.lanes.settlement import attempt_record, settlement_of
from toolcallstore.services import Services
from toolcallstore.tools import Outcome

log = logging.getLogger("toolcallstore.lanes.chat")

# A streaming call records what it has delivered at its first token and then at most this
# often (one small UPDATE, off the stream's path): if the process dies mid-stream, the sweep
# charges that checkpoint under the receipt id the stream announced (controls/executions.py).
CHECKPOINT_SECONDS = 5.0

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # no proxy buffering (Caddy flushes SSE anyway)
]


@dataclass
class Settlement:
    outcome: Outcome
    error: APIError | None
    usage: dict[str, Any]
    toolcall: dict[str, Any]


@dataclass(eq=False)
class ChatCall(Response):
    svc: Services
    execution: Row
    plan: CallPlan
    params: dict[str, Any]
    stream: bool
    origin: Origin
    claim: KeyClaim | None
    receipt_id: str
    ctx: RequestContext
    operator: bool
    headers_out: dict[str, str] = field(default_factory=dict)
    # provider -> the tenant's own key; repr=False keeps it out of any log line or traceback
    byok: dict[str, str] = field(default_factory=dict, repr=False)
    # The call ends by then, however slowly its client reads: its hold expires a grace period
    # later, and the sweep would release it unpaid.
    max_seconds: float = 600.0
    settled: Settlement | None = None
    _call: LaneCall | None = None
    _assembly: Assembly | None = None
    _error: StreamError | None = None
    _closing: asyncio.Future[Settlement] | None = None
    _started: bool = False  # the response's start went out
    _out: list[bytes] = field(default_factory=list)
    _checkpoint_at: float = 0.0
    _checkpointing: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.svc.sender is not None
        self._call = LaneCall(self.svc.sender, self.plan, self.params,
                              bool(self.execution["livemode"]),
                              self.svc.settings.sandbox_base(), self.svc.health,
                              self.byok, self.max_seconds, plain=not self.stream)  # fmt: skip
        self._assembly = Assembly(f"chatcmpl-{self.execution['id']}", int(time.time()))
        work = asyncio.create_task(self._run(send))
        watcher = asyncio.create_task(_watch_disconnect(receive, work))
        failed = timed_out = False
        try:
            done, _ = await asyncio.wait({work}, timeout=self.max_seconds)
            if not done:  # the upstream is bounded by then: a client reading too slowly
                timed_out = True
                work.cancel()
                await asyncio.wait({work})
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watcher.cancel()
            failed = work.done() and not work.cancelled() and work.exception() is not None
            if failed:
                log.error("chat call failed", exc_info=work.exception())
            if self.settled is None:  # disconnected, cancelled, timed out or failed mid-way
                if failed:
                    await asyncio.shield(self._fail(send))
                elif timed_out:
                    await asyncio.shield(self._time_out(send))
                else:
                    await asyncio.shield(self._settle_quietly())

    async def _run(self, send: Send) -> None:
        assert self._call is not None and self._assembly is not None
        events = self._call.events()
        async with contextlib.aclosing(events):
            try:
                first = await anext(events)
            except AllProvidersFailed as failed:
                await self._refuse(send, _all_failed(failed.attempts, self.operator))
                return
            except Refused as refused:
                await self._refuse(send, _refusal(refused))
                return
            winner = self._call.winner
            assert winner is not None
            self._assembly.model = winner.target
            if self.stream:
                self._started = True
                await send({"type": "http.response.start", "status": 200,
                            "headers": [*SSE_HEADERS, *self._extra_headers()]})  # fmt: skip
            await self._emit(first, send)
            async for event in events:
                await self._emit(event, send)
        await self._flush(send)
        await self._finish(send)

    async def _emit(self, event: Any, send: Send) -> None:
        assert self._assembly is not None
        if isinstance(event, StreamError):
            self._error = event
            return
        producer = self._call.producer if self._call is not None else None
        if producer is not None and producer.target != self._assembly.model:
            self._assembly.model = producer.target  # a resumed stream: its new target
        choice = self._assembly.add(event)
        if choice is not None and self.stream:
            self._out.append(self._assembly.chunk(choice))
            self._maybe_checkpoint()
        # The events of one upstream read go out in one write.
        if self._out and not (self._call is not None and self._call.more_ready()):
            await self._flush(send)

    def _maybe_checkpoint(self) -> None:
        if self._closing is not None or (
            self._checkpointing is not None and not self._checkpointing.done()
        ):
            return
        now = time.monotonic()
        if self._checkpoint_at and now - self._checkpoint_at < CHECKPOINT_SECONDS:
            return
        self._checkpoint_at = now
        self._checkpointing = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Store the settlement as if the call ended now (estimated, incomplete)."""
        assert self._call is not None
        try:
            outcome, _, _ = settlement_of(
                self._call.as_if_ended_now(), self.plan, self.receipt_id, self.operator,
                charge=True, incomplete=True, quote_id=self.execution["quote_id"],
            )  # fmt: skip
            await self.svc.db.run_sync(_store_checkpoint, self.execution["id"], outcome)
        except Exception:
            log.exception("could not checkpoint a streaming call; the next one will try again")

    async def _flush(self, send: Send) -> None:
        if self._out:
            body = b"".join(self._out)
            self._out.clear()
            await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _finish(self, send: Send) -> None:
        assert self._assembly is not None
        error = None
        if self._error is not None:
            error = ProviderError(
                f"The provider's stream failed after the first token ({self._error.code}):"
                f" {self._error.message}",
                code="stream_interrupted",
            )
        settled = await self._settle(error, charge_delivered=self.stream)
        assembly = self._assembly
        if not self.stream:
            if settled.error is not None:
                await self._send_json(
                    send, settled.error.status, self._envelope(settled), settled.error
                )
            else:
                body = assembly.completion(settled.usage, settled.toolcall)
                await self._send_json(send, 200, body)
            return
        if error is not None:
            tail = assembly.error_chunk(in_band(error), settled.usage, settled.toolcall)
        else:
            tail = assembly.final_chunk(settled.usage, settled.toolcall) + DONE
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _refuse(self, send: Send, error: APIError) -> None:
        settled = await self._settle(error, charge_delivered=False)
        await self._send_json(send, error.status, self._envelope(settled), error)

    def _envelope(self, settled: Settlement) -> dict[str, Any]:
        assert settled.error is not None
        envelope = settled.error.envelope(self.ctx.request_id)
        envelope["error"]["toolcall"] = settled.toolcall
        return envelope

    async def _send_json(
        self, send: Send, status: int, content: dict[str, Any], error: APIError | None = None
    ) -> None:
        body = orjson.dumps(content)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self._extra_headers(),
            *_encoded(error.headers if error else {}),
        ]
        self._started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _extra_headers(self) -> list[tuple[bytes, bytes]]:
        return _encoded(self.headers_out)

    async def _fail(self, send: Send) -> None:
        """Our own error mid-call (a bug): before the answer started, nothing is charged and the
        caller gets the 500 envelope; once streaming, it ends like a cut stream, in-band, and
        what was delivered is charged."""
        assert self._assembly is not None
        error = InternalError("Something went wrong on our side; it has been logged.")
        try:
            if not self._started:
                settled = await self._settle(error, charge_delivered=False)
                await self._send_json(send, error.status, self._envelope(settled), error)
                return
            settled = await self._settle(error, charge_delivered=True)
            tail = self._assembly.error_chunk(in_band(error), settled.usage, settled.toolcall)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except Exception:
            log.exception("could not close a failed chat call; the sweep will release it")

    async def _time_out(self, send: Send) -> None:
        """The call outlasted `max_seconds`: what was sent is charged, and the stream ends with
        an in-band error if the client takes it within a second."""
        assert self._assembly is not None
        error = APIError(f"The call ran past its time limit of {self.max_seconds:g} s (the client"
                         " read too slowly); what was delivered is charged.",
                         status=504, code="call_timeout")  # fmt: skip
        try:
            settled = await self._settle(error, charge_delivered=self._started)
        except Exception:
            log.exception("could not close a timed-out chat call; the sweep will release it")
            return
        with contextlib.suppress(Exception):  # best effort: this client may not read at all
            async with asyncio.timeout(1):
                if self._started:
                    tail = self._assembly.error_chunk(in_band(error), settled.usage,
                                                      settled.toolcall)  # fmt: skip
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                else:
                    await self._send_json(send, error.status, self._envelope(settled), error)

    async def _settle_quietly(self) -> None:
        assert self._call is not None
        gone = APIError("The client closed the connection; what was delivered is charged.",
                        status=499, code="client_disconnected")  # fmt: skip
        try:
            await self._settle(gone, charge_delivered=self._call.winner is not None)
        except Exception:
            log.exception("could not settle an interrupted chat call; the sweep will release it")

    async def _settle(self, error: APIError | None, *, charge_delivered: bool) -> Settlement:
        """Close the execution: what reached the client is charged when `charge_delivered`
        (else nothing is), every attempt's provider cost is recorded, and the answer an
        Idempotency-Key replays is stored: the completion, or the error that ended the call."""
        assert self._call is not None and self._assembly is not None
        if self.settled is not None:
            return self.settled
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(error, charge_delivered))
        # Shielded: a client that hangs up now cannot cancel the write that closes the call
        # (a cancelled write would leave its hold open until the sweep).
        settled = await asyncio.shield(self._closing)
        self.settled = settled
        self.ctx.receipt_id = self.receipt_id
        self.ctx.cost_micros = settled.outcome.price_micros
        return settled

    async def _close(self, error: APIError | None, charge_delivered: bool) -> Settlement:
        assert self._call is not None and self._assembly is not None
        outcome, usage, toolcall = settlement_of(
            self._call,
            self.plan,
            self.receipt_id,
            self.operator,
            charge=charge_delivered or error is None,
            incomplete=error is not None and charge_delivered,
            quote_id=self.execution["quote_id"],
        )
        settled = Settlement(outcome, None if charge_delivered else error, usage, toolcall)
        stored: tuple[int, dict[str, Any]] | None = None  # what an Idempotency-Key replays
        if self.claim is not None and error is not None and not charge_delivered:
            stored = error.status, error.envelope(self.ctx.request_id)
            stored[1]["error"]["toolcall"] = settled.toolcall
        elif self.claim is not None:
            # A stream that ended in-band after its first token replays as it went: 200, what
            # was delivered, then the same error chunk.
            stored = 200, self._assembly.completion(settled.usage, settled.toolcall)
            if error is not None:
                stored[1]["error"] = in_band(error)
        done = await self.svc.db.run_sync(_close, self.execution, self.origin, self.claim,
                                          settled, self.receipt_id, stored)  # fmt: skip
        if done is None:
            raise InternalError("The call was interrupted.", code="execution_interrupted")
        return settled


def _close(
    tx: SyncTransaction, execution: Row, origin: Origin, claim: KeyClaim | None,
    settled: Settlement, receipt_id: str, stored: tuple[int, dict[str, Any]] | None,
) -> Row | None:  # fmt: skip
    done = close_execution(tx, execution, origin, outcome=settled.outcome, error=settled.error,
                           receipt_id=receipt_id)  # fmt: skip
    if done is not None and claim is not None and stored is not None:
        store_response(tx, claim.api_key_id, claim.key, *stored)
    return done


def _store_checkpoint(tx: SyncTransaction, execution_id: str, outcome: Outcome) -> None:
    tx.execute(
        "UPDATE executions SET delivered = :delivered WHERE id = :id AND state = 'running'",
        {"delivered": orjson.dumps(dataclasses.asdict(outcome)).decode(), "id": execution_id},
    )


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def in_band(error: APIError) -> dict[str, str]:
    """The `error` of a stream's in-band end."""
    return {"code": error.code, "message": error.message, "type": error.type}


def _all_failed(attempts: list[Attempt], operator: bool) -> APIError:
    if not attempts:
        return ProviderError(
            "No target of this lane may be called now: each asked us to wait (Retry-After)."
            " Nothing was charged.",
            code="all_providers_failed",
            attempts=[],
            headers={"Retry-After": "1"},
        )
    tried = ", ".join(f"{a.target} ({a.error.code if a.error else a.outcome})" for a in attempts)
    if attempts and all(a.error and a.error.code == "context_length_exceeded" for a in attempts):
        return InvalidRequest(f"The prompt is too long for every target tried: {tried}.",
                              code="context_length_exceeded", param="messages")  # fmt: skip
    return ProviderError(
        f"Every target failed before its first token: {tried}. The hold was released.",
        code="all_providers_failed",
        attempts=[attempt_record(a, operator) for a in attempts],
    )


def _refusal(refused: Refused) -> APIError:
    return InvalidRequest(
        f"{refused.attempts[-1].target} refused the request: {refused.error.message}"[:500],
        code="content_policy_violation",
    )


async def _watch_disconnect(receive: Receive, work: asyncio.Task[None]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            work.cancel()
            return
