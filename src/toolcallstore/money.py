"""Money is integer micro-USD inside, a decimal string ending in `_usd` outside (DESIGN §2)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
MAX_USD = Decimal(1_000_000_000)


def micros_to_usd(micros: int) -> str:
    """1234567 -> "1.234567"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def usd_to_micros(value: object) -> int:
    """Parse a non-negative USD amount given as a string or number with at most 6 decimals.

    Raises ValueError with a message fit for the caller.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('must be a decimal string such as "1.50"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError('must be a decimal string such as "1.50"') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a finite, non-negative amount")
    if amount > MAX_USD:
        raise ValueError(f"must not exceed {MAX_USD} USD")
    micros = amount * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError("must have at most 6 decimal places")
    return int(micros)
