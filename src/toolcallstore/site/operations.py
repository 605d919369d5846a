"""What each route declares about itself for the public description (openapi.json, docs).

Every api module lists an `Operation` per route beside its `routes`. The request body and
query are described by the very `Field` mappings `validation.validate` checks requests
against, so the documentation cannot drift from what the server accepts. A route without a
declaration stops `toolcallstore build-public` (and its test) naming the route.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from toolcallstore.validation import Field

Idempotency = Literal["required", "optional"] | None

# `?limit=1..100&starting_after=<id>` of every list (validation.page_params).
PAGE_QUERY: Mapping[str, Field] = {
    "limit": Field(int),
    "starting_after": Field(str, max_length=100),
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    # The scope a key needs (None: any valid key; "public": no key at all).
    scope: str | None = None
    body: Mapping[str, Field] | None = None
    # A JSON Schema for bodies not checked by `validate` (the OpenAI-shaped chat request).
    body_schema: Mapping[str, Any] | None = None
    query: Mapping[str, Field] = field(default_factory=dict)
    idempotency: Idempotency = None
    # The success answers: status -> component schema name (a key of schemas.SCHEMAS).
    responses: Mapping[int, str] = field(default_factory=lambda: {200: "Object"})
    # Error codes this route answers beyond those every route of its kind answers, by status.
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    # Media types of the success answer other than JSON ("text/event-stream" for SSE).
    streams: tuple[str, ...] = ()
    description: str = ""
    # Another protocol's route (MCP): matched like the others, described elsewhere (this URL).
    external: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path
