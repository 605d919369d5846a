"""The media adapter: what every image/video provider module implements.

A generation is submitted once, then polled until it ends; its outputs are downloaded into our
storage. Adapters speak the provider's real protocol and map its statuses to ours. Whatever a
job needs to resume after a crash (the provider's request id and its status/result/cancel URLs)
is in `Submitted.handle`, a JSON object the job stores in the same transaction that marks the
attempt submitted, before it waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MediaKind = Literal["image", "video"]
MediaStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# Why a provider call failed, which decides what the job does next:
#   unavailable - nothing was done (refused connection, 5xx/429 before acceptance): fail over
#   ambiguous   - the submit was sent and its answer lost (timeout): look it up before anything
#   refused     - content policy: final, no failover
#   invalid     - the provider rejects the input: final
#   failed      - the accepted job failed at the provider
FailureKind = Literal["unavailable", "ambiguous", "refused", "invalid", "failed"]


class MediaProviderError(Exception):
    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class MediaRequest:
    kind: MediaKind
    model: str  # the provider's model id (the target's upstream model)
    prompt: str
    width: int
    height: int
    n: int = 1
    seconds: float | None = None  # video only
    seed: int | None = None
    negative_prompt: str | None = None
    # Our attempt id. Providers that take a client-chosen id (Runware's taskUUID) are given it,
    # so a submit whose answer was lost can be found again by `lookup`.
    client_ref: str = ""
    webhook_url: str | None = None  # where the provider may POST a hint to poll now


@dataclass(frozen=True)
class Output:
    content_type: str
    url: str | None = None  # downloaded with the shared HTTP client
    data: bytes | None = None  # inline bytes (Stability, Gemini)
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Polled:
    status: MediaStatus
    progress: float | None = None  # 0..1 where the provider reports it
    outputs: tuple[Output, ...] = ()
    error: MediaProviderError | None = None
    # What the provider says it billed for this request, when it says (Runware's cost,
    # Leonardo's apiCreditCost); otherwise the target's configured price is the cost.
    cost_micros: int | None = None
    retry_after: float | None = None  # the provider asked us to wait this long before polling


@dataclass(frozen=True)
class Submitted:
    request_id: str
    handle: dict[str, Any] = field(default_factory=dict)
    # Synchronous providers (Stability, Gemini, Replicate with `Prefer: wait`) may answer at once.
    state: Polled | None = None


class MediaProvider(Protocol):
    name: str
    can_cancel: bool
    can_lookup: bool  # can find a submission whose answer was lost (by client_ref)

    async def submit(self, request: MediaRequest) -> Submitted: ...

    async def poll(self, submitted: Submitted) -> Polled: ...

    async def cancel(self, submitted: Submitted) -> bool: ...

    async def lookup(self, request: MediaRequest) -> Submitted | None: ...

    def download(self, output: Output) -> AsyncIterator[bytes]: ...
