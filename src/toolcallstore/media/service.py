"""What the app holds for media: the catalog, the runner of generations, provider-webhook hints
and the watch that wakes long-polls and event streams of generations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from toolcallstore.db import Row
from toolcallstore.media.catalog import MediaCatalog
from toolcallstore.media.runner import Hints, Runner
from toolcallstore.money import micros_to_usd
from toolcallstore.queue.watch import Watch


@dataclass
class MediaService:
    catalog: MediaCatalog
    runner: Runner
    hints: Hints
    watch: Watch


GENERATION_SELECT = (
    "SELECT g.*, e.receipt_id, e.price_micros, e.state AS execution_state, e.quote_id,"
    " e.approval_id FROM media_generations g JOIN executions e ON e.id = g.execution_id"
)


def view_of(row: Row) -> tuple[Any, ...]:
    """What a waiting agent waits for a change of."""
    return (row["status"], row["progress"], row["receipt_id"], row["deleted_at"])


def terminal(row: Row) -> bool:
    """Finished, and settled (its receipt written): nothing more will change."""
    return row["status"] in ("succeeded", "failed", "cancelled") and row["receipt_id"] is not None


def generation_object(row: Row, assets: list[dict[str, Any]]) -> dict[str, Any]:
    params = orjson.loads(row["params"])
    price = row["price_micros"]
    return {
        "id": row["id"],
        "object": "media.generation",
        "status": row["status"],
        "kind": row["kind"],
        "model": row["model"],
        "prompt": params["prompt"],
        "size": params["size"],
        "n": params.get("n", 1),
        "seconds": params.get("seconds"),
        "progress": row["progress"],
        "assets": assets,
        "error": None if row["error"] is None else orjson.loads(row["error"]),
        "job_id": row["job_id"],
        "execution_id": row["execution_id"],
        "quote_id": row["quote_id"],
        "approval_id": row["approval_id"],
        "receipt_id": row["receipt_id"],
        "amount_usd": None if price is None else micros_to_usd(int(price)),
        "project_id": row["project_id"],
        "livemode": bool(row["livemode"]),
        "deleted": row["deleted_at"] is not None,
        "created": int(row["created_at"]) // 1_000_000,
        "finished": None if row["finished_at"] is None else int(row["finished_at"]) // 1_000_000,
    }
