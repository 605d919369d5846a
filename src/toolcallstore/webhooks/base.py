"""What the delivery job needs of the network: one POST, answered as a `Reply`, never raised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Reply:
    """A receiver's answer, or why there was none (`status` None, `error` set)."""

    status: int | None
    duration_ms: int
    error: str | None = None
    body: str = ""  # the first bytes of the response body, for the attempt log
    retry_after_s: float | None = None
    abort: bool = False  # `webhook-delivery: abort-message`: the receiver wants no retries
    blocked: bool = False  # refused by the SSRF guard before anything was sent

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class WebhookPoster(Protocol):
    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, livemode: bool
    ) -> Reply:
        """POST `body` to `url` under the mode's address policy; transport failures are Replies."""

    async def aclose(self) -> None:
        """Close the connections."""
