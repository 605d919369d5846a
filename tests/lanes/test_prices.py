"""OpenRouter's price list read from bytes: USD per token becomes USD per million tokens with
no digit lost, unusable entries are skipped and counted, a body that is no list is refused."""

from __future__ import annotations

import logging
import os
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toolcallstore.controls.pricing import load_pricing
from toolcallstore.lanes.catalog import load_catalog
from toolcallstore.lanes.prices import PriceSourceError, parse_openrouter, per_mtok
from toolcallstore.sandbox.openrouter import SNAPSHOT


def price_list(*entries: dict[str, Any]) -> bytes:
    return orjson.dumps({"data": list(entries)})


def entry(model_id: str, prompt: Any, completion: Any, **pricing: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "name": model_id,
        "context_length": 128000,
        "pricing": {"prompt": prompt, "completion": completion, "request": "0", **pricing},
    }


def test_prices_per_token_become_prices_per_million_tokens() -> None:
    body = price_list(
        entry("openai/gpt-4o-mini", "0.00000015", "0.0000006", image="0.000217"),
        entry("openai/gpt-4", "0.00003", "0.00006"),
    )
    assert parse_openrouter(body) == {
        "openai/gpt-4o-mini": (Decimal("0.15"), Decimal("0.6")),
        "openai/gpt-4": (Decimal("30"), Decimal("60")),
    }


@pytest.mark.parametrize(
    ("per_token", "written"),
    [
        ("0.00000015", "0.15"),
        ("0.000002", "2"),
        ("0.00003", "30"),  # not "3E+1": the table and the logs read like config/models.json
        ("0", "0"),
        ("2e-06", "2"),
        ("0.000000123456789012345", "0.123456789012345"),
        ("0.0000001750", "0.1750"),
    ],
)
def test_the_conversion_is_exact_and_reads_plainly(per_token: str, written: str) -> None:
    converted = per_mtok(per_token)
    assert converted is not None
    assert str(converted) == written
    assert converted == Decimal(per_token) * 1_000_000


@given(st.decimals(min_value=0, max_value=1, places=18, allow_nan=False, allow_infinity=False))
def test_no_digit_of_any_price_is_lost(per_token: Decimal) -> None:
    converted = per_mtok(str(per_token))
    assert converted is not None
    assert converted.scaleb(-6) == per_token


def test_entries_without_usable_prices_are_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = price_list(
        entry("good/model", "0.000001", "0.000002"),
        entry("openrouter/auto", "-1", "-1"),
        entry("free/model:free", "0", "0"),
        entry("no/completion", "0.000001", None),
        {"id": "no/pricing", "name": "x"},
        entry("words/model", "cheap", "0.000002"),
        entry("float/model", 0.000001, "0.000002"),  # a float may already have lost digits
        entry("nan/model", "NaN", "0.000002"),
        entry("inf/model", "0.000001", "Infinity"),
        {"name": "no id", "pricing": {"prompt": "0.000001", "completion": "0.000001"}},
        "not an object",
    )
    with caplog.at_level(logging.INFO, logger="toolcallstore.prices"):
        prices = parse_openrouter(body)
    assert prices == {
        "good/model": (Decimal("1"), Decimal("2")),
        "free/model:free": (Decimal("0"), Decimal("0")),
    }
    [record] = [r for r in caplog.records if r.name == "toolcallstore.prices"]
    fields = record.__dict__["fields"]
    assert fields["skipped"] == 9
    assert "openrouter/auto" in fields["ids"] and "float/model" in fields["ids"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"data": [', "not JSON"),
        (b"<html>Bad gateway</html>", "not JSON"),
        (b'[{"id": "a/b"}]', '"data"'),
        (b'{"models": []}', '"data"'),
        (b'{"data": {"id": "a/b"}}', '"data"'),
    ],
)
def test_a_body_that_is_no_price_list_is_refused(body: bytes, says: str) -> None:
    with pytest.raises(PriceSourceError, match=says):
        parse_openrouter(body)


def test_an_empty_list_is_a_list() -> None:
    assert parse_openrouter(b'{"data": []}') == {}


def test_the_sandbox_snapshot_prices_every_openrouter_target() -> None:
    catalog = load_catalog(load_pricing(None), os.environ)
    ours = {m.target.model for m in catalog.models.values() if m.target.provider == "openrouter"}
    listed = parse_openrouter(SNAPSHOT.read_bytes())
    assert ours and ours <= set(listed)
    assert len(listed) > len(ours)
    assert "openrouter/auto" not in listed  # priced "-1": depends on the model it routes to
    assert listed["google/gemini-3.8-flash"] == (Decimal("0.7"), Decimal("3.5"))
