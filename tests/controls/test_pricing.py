from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from toolcallstore.app import create_app
from toolcallstore.controls.pricing import default_models_file, load_pricing, to_micros_up
from toolcallstore.errors import ConfigError
from toolcallstore.settings import Settings


def test_prices_are_cost_times_markup_plus_fee_rounded_up_to_the_micro() -> None:
    pricing = load_pricing()
    echo = pricing.for_tool("sandbox.echo").quote()
    assert echo.price_micros == 1400 and echo.provider_cost_micros == 1000  # 0.001*1.2+0.0002
    irreversible = pricing.for_tool("sandbox.irreversible").quote(quantity=2)
    assert irreversible.price_micros == 1_300_000  # its own markup, 0.10, overrides 0.20
    assert to_micros_up(Decimal("0.0000001")) == 1  # a fraction of a micro is charged, not lost
    assert to_micros_up(Decimal("1.0000010")) == 1_000_001
    assert to_micros_up(Decimal("0")) == 0


def _write(tmp_path: Path, change: dict) -> Path:
    data = orjson.loads(default_models_file().read_bytes())
    data.update(change)
    path = tmp_path / "models.json"
    path.write_bytes(orjson.dumps(data))
    return path


def test_a_bad_models_file_stops_start_up_naming_the_offending_key(tmp_path: Path) -> None:
    echo = {"provider": "sandbox", "basis": "per_call", "provider_cost_usd": "0.001"}
    bad_fee = {"tools": {"sandbox.echo": {**echo, "fee_usd": "-1"}}}
    with pytest.raises(ConfigError, match=r"tools\.sandbox\.echo\.fee_usd"):
        load_pricing(_write(tmp_path, bad_fee))
    with pytest.raises(ConfigError, match=r"markup"):
        load_pricing(_write(tmp_path, {"markup": 0.2}))  # a float, not a decimal string
    with pytest.raises(ConfigError, match="not found"):
        load_pricing(tmp_path / "missing.json")


def test_a_billable_tool_without_a_price_stops_the_app(tmp_path: Path, settings: Settings) -> None:
    path = _write(tmp_path, {"tools": {}})
    with pytest.raises(ConfigError, match="sandbox.echo has no price"):
        create_app(settings.with_(models_file=str(path)))
