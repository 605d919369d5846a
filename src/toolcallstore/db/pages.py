"""Cursor pagination shared by every list endpoint: newest first, `starting_after` an id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolcallstore.db.database import Database, Row


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    has_more: bool


async def fetch_page(
    db: Database,
    table: str,
    where: str,
    values: dict[str, Any],
    *,
    limit: int,
    starting_after: str | None,
) -> Page:
    """Rows of `table` matching `where`, ordered by id descending (ids sort by creation time)."""
    clauses = [where]
    params = dict(values, limit=limit + 1)
    if starting_after is not None:
        clauses.append("id < :starting_after")
        params["starting_after"] = starting_after
    rows = await db.fetch_all(
        f"SELECT * FROM {table} WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT :limit",
        params,
    )
    return Page(rows[:limit], len(rows) > limit)
