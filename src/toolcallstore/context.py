"""What one request learns about itself on its way through: who, what was decided, what it cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Scope

if TYPE_CHECKING:
    from toolcallstore.auth import Principal

SCOPE_KEY = "toolcallstore.context"


@dataclass
class RequestContext:
    request_id: str
    ip: str | None
    principal: Principal | None = None
    decision: str = "allowed"
    reason: str | None = None
    scope_needed: str | None = None
    tool: str | None = None
    cost_micros: int | None = None
    quote_id: str | None = None
    approval_id: str | None = None
    receipt_id: str | None = None

    def deny(self, reason: str) -> None:
        self.decision = "denied"
        self.reason = reason


def context_of(request_or_scope: Request | Scope) -> RequestContext:
    scope = request_or_scope.scope if isinstance(request_or_scope, Request) else request_or_scope
    ctx: RequestContext = scope[SCOPE_KEY]
    return ctx
