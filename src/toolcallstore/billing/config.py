"""`config/billing.json` (or TOOLCALLSTORE_BILLING_FILE): the plans Checkout sells (a flat
price and a metered price on the Billing Meter), the meter, and the payment grace period."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from toolcallstore.errors import ConfigError
from toolcallstore.money import usd_to_micros

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config"


@dataclass(frozen=True)
class Plan:
    name: str
    flat_price: str
    metered_price: str
    monthly_cap_micros: int | None


@dataclass(frozen=True)
class BillingConfig:
    meter_id: str
    meter_event_name: str
    payment_grace_days: int
    success_url: str
    cancel_url: str
    plans: dict[str, Plan]

    def plan_of_prices(self, price_ids: set[str]) -> Plan | None:
        """The plan whose flat price a subscription's items include."""
        return next((p for p in self.plans.values() if p.flat_price in price_ids), None)


def _plan(name: str, raw: Any, where: str) -> Plan:
    try:
        cap = raw.get("monthly_cap_usd")
        return Plan(name, str(raw["flat_price"]), str(raw["metered_price"]),
                    None if cap is None else usd_to_micros(cap))  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{where}: plan '{name}' needs flat_price, metered_price and a"
                          f" monthly_cap_usd decimal string or null ({exc})") from None  # fmt: skip


def load_billing_config(path: str = "") -> BillingConfig:
    file = Path(path) if path else REPO_CONFIG / "billing.json"
    try:
        data = orjson.loads(file.read_bytes())
        meter = data["meter"]
        plans = {name: _plan(name, raw, str(file)) for name, raw in data["plans"].items()}
        return BillingConfig(
            meter_id=str(meter["id"]),
            meter_event_name=str(meter["event_name"]),
            payment_grace_days=int(data["payment_grace_days"]),
            success_url=str(data["success_url"]),
            cancel_url=str(data["cancel_url"]),
            plans=plans,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"billing file {file} not found; set TOOLCALLSTORE_BILLING_FILE"
        ) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{file} is not a valid billing file: {exc!r}") from None
