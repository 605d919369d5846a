"""Media providers, priced targets, lanes, aliases and each kind's default lane, from the
`media_*` sections of config/models.json.

A target's price basis is what its provider bills: per image, per megapixel (of every image),
per second of video, or per diffusion step. The customer price follows the LLM rule: provider
cost x (1 + markup) + the media fee per generation, rounded up to the micro-USD.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, cast

from toolcallstore.controls.pricing import Pricing, to_micros_up
from toolcallstore.errors import ConfigError

Basis = Literal["per_image", "per_megapixel", "per_second", "per_step"]
Order = Literal["listed", "price"]
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
MEGAPIXEL = Decimal(1_000_000)


@dataclass(frozen=True)
class MediaProviderConfig:
    id: str
    protocol: str  # which adapter module speaks to it: fal, replicate, stability, ...
    base_url: str  # may hold "{sandbox}" (test models files)
    sandbox_path: str  # where this server's sandbox fake of it lives, under /sandbox
    api_key_env: str
    description: str

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def url(self, *, livemode: bool, sandbox_url: str) -> str:
        """Where a call goes: test mode always reaches the sandbox (never a real provider)."""
        base = _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), ""), self.base_url)
        if "{sandbox}" in base:
            return base.replace("{sandbox}", sandbox_url.rstrip("/")).rstrip("/")
        if not livemode:
            return sandbox_url.rstrip("/") + self.sandbox_path
        return base.rstrip("/")


@dataclass(frozen=True)
class MediaTarget:
    id: str
    provider: MediaProviderConfig
    model: str  # the provider's model id
    kinds: tuple[str, ...]
    sizes: tuple[str, ...]
    basis: Basis
    unit_cost: Decimal  # provider USD per unit of `basis`
    max_n: int
    max_seconds: float | None
    default_steps: int | None

    def units(self, params: dict[str, Any]) -> Decimal:
        """How many units of its basis this request is billed (n images, each of size)."""
        n = Decimal(int(params.get("n", 1)))
        if self.basis == "per_image":
            return n
        if self.basis == "per_megapixel":
            width, height = parse_size(str(params["size"]))
            return n * Decimal(width * height) / MEGAPIXEL
        if self.basis == "per_second":
            return n * Decimal(str(params.get("seconds") or self.max_seconds or 1))
        return n * Decimal(int(params.get("steps") or self.default_steps or 1))

    def cost(self, params: dict[str, Any]) -> Decimal:
        return self.unit_cost * self.units(params)

    def supports(self, params: dict[str, Any]) -> bool:
        if params["kind"] not in self.kinds or params["size"] not in self.sizes:
            return False
        if int(params.get("n", 1)) > self.max_n:
            return False
        seconds = params.get("seconds")
        return not (seconds is not None and self.max_seconds and seconds > self.max_seconds)


@dataclass(frozen=True)
class MediaLane:
    id: str
    description: str
    kind: str
    targets: tuple[str, ...]
    order: Order


@dataclass(frozen=True)
class MediaCatalog:
    providers: dict[str, MediaProviderConfig]
    targets: dict[str, MediaTarget]
    lanes: dict[str, MediaLane]
    aliases: dict[str, str]
    defaults: dict[str, str]  # kind -> lane id
    markup: Decimal
    fee: Decimal

    def price_of(self, cost: Decimal) -> int:
        """The customer's price of a provider cost: marked up, plus the per-generation fee."""
        return to_micros_up(cost * (1 + self.markup) + self.fee)

    def unit_price(self, target: MediaTarget) -> str:
        """Our price per unit of the target's basis (the fee aside), as customers see it."""
        return f"{(target.unit_cost * (1 + self.markup)).normalize():f}"

    def resolve(self, name: str | None, kind: str) -> tuple[str, list[MediaTarget]] | None:
        """The lane id (or the target id, for one target) and its targets in lane order."""
        if name is None:
            name = self.defaults.get(kind)
            if name is None:
                return None
        name = self.aliases.get(name, name)
        lane = self.lanes.get(name)
        if lane is not None:
            return lane.id, [self.targets[t] for t in lane.targets]
        target = self.targets.get(name)
        if target is not None:
            return target.id, [target]
        return None

    def ordered(
        self, lane_id: str, targets: list[MediaTarget], params: dict[str, Any]
    ) -> list[MediaTarget]:
        lane = self.lanes.get(lane_id)
        if lane is not None and lane.order == "price":
            return sorted(targets, key=lambda t: t.cost(params))
        return targets


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


def load_media_catalog(pricing: Pricing) -> MediaCatalog:
    """The media sections of a checked models file; cross-references checked here."""
    raw = pricing.raw
    source = pricing.source
    providers = {
        pid: MediaProviderConfig(
            pid, p["protocol"], p["base_url"], p["sandbox_path"], p["api_key_env"], p["description"]
        )  # fmt: skip
        for pid, p in raw.get("media_providers", {}).items()
    }
    targets: dict[str, MediaTarget] = {}
    for tid, t in raw.get("media_models", {}).items():
        provider = providers.get(t["provider"])
        if provider is None:
            raise ConfigError(f"{source}: media_models.{tid}.provider: no media provider"
                              f" '{t['provider']}'")  # fmt: skip
        targets[tid] = MediaTarget(
            tid, provider, t["model"], tuple(t["kinds"]), tuple(t["sizes"]),
            cast(Basis, t["basis"]), Decimal(t["provider_cost_usd"]), int(t.get("max_n", 1)),
            t.get("max_seconds"), t.get("default_steps"),
        )  # fmt: skip
    lanes: dict[str, MediaLane] = {}
    for lid, lane in raw.get("media_lanes", {}).items():
        for tid in lane["targets"]:
            if tid not in targets:
                raise ConfigError(f"{source}: media_lanes.{lid}.targets: no media model '{tid}'")
            if lane["kind"] not in targets[tid].kinds:
                raise ConfigError(f"{source}: media_lanes.{lid}: '{tid}' makes no"
                                  f" {lane['kind']}")  # fmt: skip
        lanes[lid] = MediaLane(lid, lane["description"], lane["kind"], tuple(lane["targets"]),
                               cast(Order, lane.get("order", "listed")))  # fmt: skip
    aliases = dict(raw.get("media_aliases", {}))
    for alias, goal in aliases.items():
        if goal not in lanes and goal not in targets:
            raise ConfigError(f"{source}: media_aliases.{alias}: no media lane or model '{goal}'")
    defaults = dict(raw.get("media_defaults", {}))
    for kind, lid in defaults.items():
        if lid not in lanes or lanes[lid].kind != kind:
            raise ConfigError(f"{source}: media_defaults.{kind}: no {kind} lane '{lid}'")
    fee = Decimal(raw.get("media_fee_usd", "0"))
    return MediaCatalog(providers, targets, lanes, aliases, defaults, pricing.markup, fee)


def media_models(catalog: MediaCatalog) -> list[dict[str, Any]]:
    """Media lanes, aliases and targets as GET /v1/models lists them (our prices only)."""
    data: list[dict[str, Any]] = []
    defaults = {lane: kind for kind, lane in catalog.defaults.items()}
    for lane in catalog.lanes.values():
        data.append({"id": lane.id, "object": "model", "created": 0, "owned_by": "toolcallstore",
                     "kind": "media_lane", "media_kind": lane.kind,
                     "default_for": defaults.get(lane.id), "description": lane.description,
                     "targets": list(lane.targets), "policy": {"order": lane.order}})  # fmt: skip
    for alias, goal in catalog.aliases.items():
        data.append({"id": alias, "object": "model", "created": 0, "owned_by": "toolcallstore",
                     "kind": "media_alias", "alias_of": goal})  # fmt: skip
    fee = f"{catalog.fee.normalize():f}"
    for target in catalog.targets.values():
        data.append({"id": target.id, "object": "model", "created": 0,
                     "owned_by": target.provider.id, "kind": "media_target",
                     "media_kinds": list(target.kinds), "sizes": list(target.sizes),
                     "max_n": target.max_n, "max_seconds": target.max_seconds,
                     "pricing": {"basis": target.basis,
                                 "unit_price_usd": catalog.unit_price(target),
                                 "fee_usd_per_generation": fee}})  # fmt: skip
    return data
