"""Providers, priced models, lanes and aliases from config/models.json (DESIGN §7).

`load_catalog` checks what JSON Schema cannot (every lane target and alias resolves, every
model's provider exists) and substitutes `${VAR}` in base URLs from the environment. Provider
keys come from each provider's `api_key_env`; a provider without one can serve test mode only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

from toolcallstore.controls.pricing import Pricing, to_micros_up
from toolcallstore.errors import ConfigError
from toolcallstore.lanes.base import Target
from toolcallstore.lanes.health import DEFAULT_POLICY, BreakerPolicy

Order = Literal["listed", "price", "latency"]
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Model:
    """A target with its prices (USD per million tokens) and limits."""

    target: Target
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    context_tokens: int
    max_output_tokens: int
    supports_tools: bool
    supports_prefill: bool  # continues a partial assistant message (mid-stream resume)
    bills_on_cancel: bool
    only_temperature_1: bool  # refuses any temperature but 1.0: none is sent to it
    breaker: BreakerPolicy  # its circuit breaker's settings (the defaults unless configured)
    api_key: str | None  # None: no key in the environment, live calls cannot use it
    base_url_ready: bool  # False: a ${VAR} in its base URL is unset

    @property
    def id(self) -> str:
        return self.target.id

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """The provider's price of a call, in USD."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / (
            MILLION
        )


@dataclass(frozen=True)
class Lane:
    id: str
    description: str
    targets: tuple[str, ...]
    order: Order
    hedge_after_ms: int
    max_parallel: int
    resume_mid_stream: bool
    first_token_timeout_ms: int
    idle_timeout_ms: int
    loser_costs: Literal["absorb", "pass"]  # who pays for hedges that lost: us, or the caller
    breaker: BreakerPolicy | None = None  # the lane's own breakers' settings, if it has them


@dataclass(frozen=True)
class Catalog:
    models: dict[str, Model]
    lanes: dict[str, Lane]
    aliases: dict[str, str]
    markup: Decimal
    fee: Decimal
    default_lane: Lane

    def price_of(self, cost: Decimal) -> int:
        """The customer's price of a provider cost: marked up, plus the per-call fee."""
        return to_micros_up(cost * (1 + self.markup) + self.fee)

    def list_price(self, provider_price: Decimal) -> str:
        """Our price per million tokens, as customers see it (the provider's stays the
        operator's)."""
        return f"{(provider_price * (1 + self.markup)).normalize():f}"

    def resolve(self, name: str) -> tuple[Lane, list[Model]] | None:
        """The lane policy and targets (in order) a requested `model` names: a lane, an
        alias, or one target (which gets the default lane's policy); None if unknown."""
        name = self.aliases.get(name, name)
        lane = self.lanes.get(name)
        if lane is not None:
            models = [self.models[t] for t in lane.targets]
            if lane.order == "price":
                models.sort(key=lambda m: m.input_per_mtok + m.output_per_mtok)
            return lane, models
        model = self.models.get(name)
        if model is None:
            return None
        return self.default_lane, [model]


DEFAULT_FIRST_TOKEN_TIMEOUT_MS = 30_000
DEFAULT_IDLE_TIMEOUT_MS = 30_000


def load_catalog(pricing: Pricing, environ: Mapping[str, str]) -> Catalog:
    """The LLM part of a validated models file; cross-references checked, keys from `environ`."""
    raw = pricing.raw
    source = pricing.source
    providers: dict[str, Any] = raw.get("providers", {})
    models: dict[str, Model] = {}
    for model_id, entry in raw.get("models", {}).items():
        provider = providers.get(entry["provider"])
        if provider is None:
            raise ConfigError(
                f"{source}: models.{model_id}.provider: no provider '{entry['provider']}'"
            )
        models[model_id] = _model(model_id, entry, provider, environ)
    lanes = {
        lane_id: _lane(lane_id, entry, models, source)
        for lane_id, entry in raw.get("lanes", {}).items()
    }
    aliases: dict[str, str] = dict(raw.get("aliases", {}))
    for alias, goal in aliases.items():
        if goal not in lanes and goal not in models:
            raise ConfigError(f"{source}: aliases.{alias}: '{goal}' is no lane or model")
    default = Lane("default", "one target", (), "listed", 0, 1, False,
                   DEFAULT_FIRST_TOKEN_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS, "absorb")  # fmt: skip
    return Catalog(
        models=models,
        lanes=lanes,
        aliases=aliases,
        markup=pricing.markup,
        fee=Decimal(raw.get("llm_fee_usd", "0")),
        default_lane=default,
    )


def _model(
    model_id: str, entry: dict[str, Any], provider: dict[str, Any], environ: Mapping[str, str]
) -> Model:
    base_url, ready = _substitute(provider["base_url"], environ)
    target = Target(
        id=model_id,
        provider=entry["provider"],
        model=entry["model"],
        protocol=provider["protocol"],
        base_url=base_url.rstrip("/"),
    )
    return Model(
        target=target,
        input_per_mtok=Decimal(entry["input_usd_per_mtok"]),
        output_per_mtok=Decimal(entry["output_usd_per_mtok"]),
        context_tokens=int(entry["context_tokens"]),
        max_output_tokens=int(entry["max_output_tokens"]),
        supports_tools=bool(entry.get("supports_tools", True)),
        supports_prefill=bool(entry.get("supports_prefill", provider["protocol"] == "anthropic")),
        bills_on_cancel=bool(provider.get("bills_on_cancel", True)),
        only_temperature_1=bool(entry.get("only_temperature_1", False)),
        breaker=BreakerPolicy.of(entry.get("breaker")) or DEFAULT_POLICY,
        api_key=environ.get(provider["api_key_env"]) or None,
        base_url_ready=ready,
    )


def _lane(lane_id: str, entry: dict[str, Any], models: dict[str, Model], source: str) -> Lane:
    for i, target in enumerate(entry["targets"]):
        if target not in models:
            raise ConfigError(f"{source}: lanes.{lane_id}.targets.{i}: no model '{target}'")
    return Lane(
        id=lane_id,
        description=entry.get("description", ""),
        targets=tuple(entry["targets"]),
        order=cast(Order, entry.get("order", "listed")),
        hedge_after_ms=int(entry.get("hedge_after_ms", 0)),
        max_parallel=int(entry.get("max_parallel", 1)),
        resume_mid_stream=bool(entry.get("resume_mid_stream", False)),
        first_token_timeout_ms=int(
            entry.get("first_token_timeout_ms", DEFAULT_FIRST_TOKEN_TIMEOUT_MS)
        ),
        idle_timeout_ms=int(entry.get("idle_timeout_ms", DEFAULT_IDLE_TIMEOUT_MS)),
        loser_costs=cast(Literal["absorb", "pass"], entry.get("loser_costs", "absorb")),
        breaker=BreakerPolicy.of(entry.get("breaker")),
    )


def _substitute(url: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = environ.get(match.group(1))
        if not found:
            missing = True
            return match.group(0)
        return found

    return _ENV_VAR.sub(value, url), not missing
