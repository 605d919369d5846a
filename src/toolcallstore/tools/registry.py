"""The tool registry: each tool declares its scope, risk, billing and how it is priced and run.

Capabilities (LLM, media, domains, email) register their tools when the app is built; the
generic flow in `executions.py` quotes, approves, holds, runs and settles any of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from toolcallstore.controls.pricing import Estimate, Pricing
from toolcallstore.db import Row, SyncTransaction
from toolcallstore.errors import APIError, ProviderError

Risk = Literal["low", "high"]
Mode = Literal["sync", "job"]


@dataclass(frozen=True)
class ToolCall:
    execution_id: str
    tenant_id: str
    project_id: str | None
    livemode: bool
    params: dict[str, Any]
    estimate: Estimate


@dataclass(frozen=True)
class Outcome:
    """What a finished call costs: the customer price (never above the quote's worst case) and
    the provider's cost, with the usage and attempts the receipt shows."""

    result: dict[str, Any]
    price_micros: int
    provider_cost_micros: int
    provider: str
    usage: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    estimated: bool = False
    provider_costs: dict[str, int] = field(default_factory=dict)
    # Shown in this call's answer only, never stored with the result nor in the idempotent
    # replay (a new mailbox's password).
    once: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuoteContext:
    """Who a quote is for, for tools whose price depends on the caller's own state (the live
    zone a DNS change is a diff against)."""

    tenant_id: str
    livemode: bool
    # The caller's key's project, for a key bound to one: it sees that project's objects only.
    key_project_id: str | None = None


class FinalFailure(APIError):
    """A job tool's failure that another attempt cannot mend (the registrar said the domain is
    taken): the job ends at once instead of retrying."""


class CostlyFailure(ProviderError):
    """A tool failed after its provider did (and billed) some work: the receipt records it."""

    def __init__(self, message: str, outcome: Outcome, **details: Any) -> None:
        super().__init__(message, **details)
        self.outcome = outcome


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    scope: str
    risk: Risk
    billable: bool
    irreversible: bool
    mode: Mode
    # Checks and normalises params; raises InvalidRequest naming the bad field.
    parse_params: Callable[[dict[str, Any]], dict[str, Any]]
    price: Callable[[dict[str, Any], Pricing], Estimate]
    execute: Callable[[ToolCall], Awaitable[Outcome]]
    params_doc: dict[str, str] = field(default_factory=dict)
    # The params' JSON Schema, for the public catalog and the MCP tool (None: any object).
    params_schema: dict[str, Any] | None = None
    timeout_s: float = 60.0
    # A tool priced by usage (tokens) describes its own price basis; others have a
    # fixed-price entry under `tools` in models.json.
    describe_price: Callable[[], dict[str, Any]] | None = None
    # Called in the transaction that opens an execution (after its row and job are written),
    # for the tool's own record of it (a media generation); a refusal rolls it all back.
    on_open: Callable[[SyncTransaction, Row, dict[str, Any]], None] | None = None
    # A price that needs a provider or the database (a registrar's live price, a zone diff):
    # used for quotes instead of `price`, which then only serves inline quote refusals.
    estimate_live: Callable[[QuoteContext, dict[str, Any], Pricing], Awaitable[Estimate]] | None = (
        None
    )


class ToolRegistry:
    def __init__(self, pricing: Pricing) -> None:
        self.pricing = pricing
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        if tool.billable and tool.describe_price is None:
            self.pricing.for_tool(tool.name)  # a billable tool without a price stops start-up
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def all(self) -> list[Tool]:
        return sorted(self._tools.values(), key=lambda t: t.name)
