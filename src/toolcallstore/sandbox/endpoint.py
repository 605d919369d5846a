"""The request flow the three LLM fakes share, and the `Dialect` each protocol implements.

Order of checks, as the real providers do it: fault spec, credentials, JSON, fields; then the
fault's error status (counted by `fail_first`), else the reply, streamed or whole.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from toolcallstore.sandbox.faults import ErrorCode, FailFirst, FaultSpecError, parse_faults
from toolcallstore.sandbox.replies import Conversation, Turn, build_reply
from toolcallstore.sandbox.streams import Framing, StreamPlan, play, wait_like_a_stream


@dataclass(frozen=True)
class ErrorText:
    message: str
    code: str | None = None
    param: str | None = None
    type: str | None = None  # the provider's error type when the status alone does not decide it


class BadRequest(Exception):
    """A request body the provider would refuse with 400."""

    def __init__(self, text: ErrorText) -> None:
        super().__init__(text.message)
        self.text = text


def bad_request(message: str, param: str | None = None, code: str | None = None) -> BadRequest:
    return BadRequest(ErrorText(message, code=code, param=param))


class Dialect(Protocol):
    framing: Framing
    unauthenticated: ErrorText
    unauthenticated_status: int  # what the provider answers a request without a key
    bad_json: ErrorText

    def authenticated(self, request: Request) -> bool:
        """Whether the request carries a credential where this provider looks for one."""
        ...

    def error(
        self,
        status: int,
        text: ErrorText | None = None,
        *,
        code: ErrorCode | None = None,
        retry_after: float | None = None,
    ) -> Response:
        """The provider's error response; without `text`, its usual words for status/code."""
        ...

    def conversation(self, body: dict[str, Any], request: Request) -> Conversation:
        """The request reduced to what the reply depends on; raises BadRequest."""
        ...

    def answer(self, turn: Turn) -> Any:
        """The non-stream response body."""
        ...

    def plan(self, turn: Turn) -> StreamPlan:
        """The frames of the streamed response."""
        ...


@dataclass
class SandboxState:
    """What the fakes remember across requests, owned by one app."""

    fail_first: FailFirst = field(default_factory=FailFirst)
    serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


class Endpoint:
    def __init__(self, dialect: Dialect, state: SandboxState) -> None:
        self.dialect = dialect
        self.state = state

    async def handle(self, request: Request) -> Response:
        dialect = self.dialect
        spec = request.path_params.get("spec", "")
        try:
            faults = parse_faults(spec)
        except FaultSpecError as exc:
            return dialect.error(400, ErrorText(str(exc), code="invalid_fault_spec"))
        if not dialect.authenticated(request):
            return dialect.error(dialect.unauthenticated_status, dialect.unauthenticated)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return dialect.error(400, dialect.bad_json)
        try:
            conversation = dialect.conversation(body, request)
        except BadRequest as exc:
            return dialect.error(400, exc.text)

        faults = self.state.fail_first.admit(spec, faults)
        status = faults.error_status
        if status is not None:
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
            return dialect.error(status, code=faults.code, retry_after=faults.retry_after)

        reply = build_reply(conversation, faults.words)
        turn = Turn(conversation, reply, faults, next(self.state.serial), int(time.time()))
        if conversation.mode == "sse":
            frames = play(dialect.plan(turn), dialect.framing, faults)
            headers = {"cache-control": "no-cache"}
            return StreamingResponse(frames, headers=headers, media_type="text/event-stream")
        await wait_like_a_stream(faults, reply.chunk_count)
        return json_response(dialect.answer(turn))
