"""Prices from config/models.json: customer price = provider cost x (1 + markup) + fee,
computed with Decimal and rounded up to the micro-USD (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from toolcallstore.errors import ConfigError
from toolcallstore.money import MICROS_PER_USD, micros_to_usd

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config"


def to_micros_up(usd: Decimal) -> int:
    """USD -> micro-USD, rounding any fraction of a micro up (the customer never gets less)."""
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class Estimate:
    """What a quote promises: the expected price, the worst case held, and the provider's cost
    (operators only)."""

    price_micros: int
    max_cost_micros: int
    provider_cost_micros: int
    provider: str
    breakdown: list[dict[str, Any]]


@dataclass(frozen=True)
class ToolPrice:
    tool: str
    provider: str
    basis: str
    provider_cost: Decimal
    fee: Decimal
    markup: Decimal

    def quote(self, quantity: int = 1) -> Estimate:
        """A fixed price: the worst case is the price."""
        cost = self.provider_cost * quantity
        price = to_micros_up(cost * (1 + self.markup) + self.fee * quantity)
        unit = to_micros_up(self.provider_cost * (1 + self.markup) + self.fee)
        line = {
            "description": f"{self.tool} ({self.basis.replace('_', ' ')})",
            "quantity": quantity,
            "unit_price_usd": micros_to_usd(unit),
            "amount_usd": micros_to_usd(price),
        }
        return Estimate(price, price, to_micros_up(cost), self.provider, [line])

    def describe(self) -> dict[str, Any]:
        """The price basis as the catalog shows it (no provider cost: that is the operator's)."""
        unit = to_micros_up(self.provider_cost * (1 + self.markup) + self.fee)
        return {"basis": self.basis, "unit_price_usd": micros_to_usd(unit)}


@dataclass(frozen=True)
class Pricing:
    source: str
    markup: Decimal
    tools: dict[str, ToolPrice]
    raw: dict[str, Any]

    def for_tool(self, name: str) -> ToolPrice:
        try:
            return self.tools[name]
        except KeyError:
            raise ConfigError(f"{self.source}: tools.{name} has no price entry") from None


def default_models_file() -> Path:
    return REPO_CONFIG / "models.json"


def load_pricing(path: str | Path | None = None) -> Pricing:
    """Read and validate a models file; a bad file names the offending key and stops start-up."""
    file = Path(path) if path else default_models_file()
    try:
        data = orjson.loads(file.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"models file {file} not found; set TOOLCALLSTORE_MODELS_FILE to your models.json"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{file} is not valid JSON: {exc}") from None
    schema_file = file.with_name("models.schema.json")
    if not schema_file.exists():
        schema_file = REPO_CONFIG / "models.schema.json"
    check_against_schema(data, orjson.loads(schema_file.read_bytes()), str(file))
    markup = Decimal(data["markup"])
    tools = {
        name: ToolPrice(
            tool=name,
            provider=entry["provider"],
            basis=entry["basis"],
            provider_cost=Decimal(entry["provider_cost_usd"]),
            fee=Decimal(entry["fee_usd"]),
            markup=Decimal(entry.get("markup", data["markup"])),
        )
        for name, entry in data["tools"].items()
    }
    return Pricing(str(file), markup, tools, data)


def check_against_schema(data: Any, schema: dict[str, Any], source: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"{source}: {where}: {error.message}")
