"""`media.image`, `media.video` and `media.publish`: media generation as tools, so they are
quoted, approved, held, run (as jobs) and settled like any other; `/v1/media/generations` uses
the same params and price.

`media.image` is low risk; `media.video` and `media.publish` are high risk (the blueprint asks
a human approval for video and for a public publish).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from toolcallstore.controls.executions import CLOSE_HOOKS
from toolcallstore.controls.pricing import Estimate
from toolcallstore.db import Database, Row, SyncTransaction
from toolcallstore.errors import (
    NotFound,
    StateConflict,
    Unprocessable,
)
from toolcallstore.ids import new_id, now_us
from toolcallstore.media.catalog import MediaCatalog, load_media_catalog, parse_size
from toolcallstore.media.runner import (
    Hints,
    Runner,
    RunnerConfig,
    candidates,
    worst_price,
)
from toolcallstore.media.service import MediaService
from toolcallstore.money import micros_to_usd, usd_to_micros
from toolcallstore.queue.watch import Watch, notify_sql
from toolcallstore.site.fields import body_schema
from toolcallstore.storage.assets import Assets
from toolcallstore.tools.registry import Outcome, Tool, ToolCall, ToolRegistry
from toolcallstore.validation import Field, invalid, validate

if TYPE_CHECKING:
    from toolcallstore.services import Services

IMAGE_TOOL = "media.image"
VIDEO_TOOL = "media.video"
PUBLISH_TOOL = "media.publish"
TOOL_OF_KIND = {"image": IMAGE_TOOL, "video": VIDEO_TOOL}
MEDIA_TIMEOUT_S = 3600.0
MAX_PROMPT = 4000

PARAMS = {
    "prompt": Field(str, required=True, max_length=MAX_PROMPT),
    "kind": Field(str, choices=frozenset({"image", "video"})),
    "model": Field(str, max_length=200),
    "size": Field(str, max_length=20),
    "n": Field(int),
    "seconds": Field(float),
    "seed": Field(int),
    "negative_prompt": Field(str, max_length=MAX_PROMPT),
    "max_cost_usd": Field(str, max_length=20),
}
PUBLISH_PARAMS = {"generation_id": Field(str, required=True, max_length=64)}


def parse_media_params(catalog: MediaCatalog, raw: dict[str, Any], kind: str) -> dict[str, Any]:
    """Checked, normalised params (defaults filled in, so that a quote pins them)."""
    raw = dict(raw)
    if isinstance(raw.get("max_cost_usd"), int | float) and not isinstance(
        raw["max_cost_usd"], bool
    ):
        raw["max_cost_usd"] = str(raw["max_cost_usd"])
    params = validate(raw, PARAMS)
    if params.setdefault("kind", kind) != kind:
        raise invalid("kind", f"This tool makes {kind}s; 'kind' must be '{kind}'.")
    if not params["prompt"].strip():
        raise invalid("prompt", "'prompt' must not be empty.")
    _check_counts(params, kind)
    _check_budget(params)
    resolved = catalog.resolve(params.get("model"), kind)
    if resolved is None:
        raise NotFound(f"No media lane, alias or model '{str(params.get('model'))[:100]}' for"
                       f" {kind}s; GET /v1/models lists them.", code="model_not_found",
                       param="model")  # fmt: skip
    lane_id, targets = resolved
    params["model"] = params.get("model") or lane_id
    if not any(kind in t.kinds for t in targets):
        raise invalid("model", f"'{params['model']}' makes no {kind}s.")
    if "size" not in params:
        made = [t for t in targets if kind in t.kinds]
        params["size"] = "1024x1024" if "1024x1024" in made[0].sizes else made[0].sizes[0]
    try:
        width, height = parse_size(params["size"])
    except ValueError:
        raise invalid("size", "'size' must be WIDTHxHEIGHT, e.g. '1024x1024'.") from None
    if width < 1 or height < 1:
        raise invalid("size", "'size' must be WIDTHxHEIGHT, e.g. '1024x1024'.")
    if not candidates(catalog, params)[1]:
        sizes = sorted({s for t in targets if kind in t.kinds for s in t.sizes})
        raise invalid("size", f"No target of '{params['model']}' makes {params['n']} {kind}(s) of"
                      f" {params['size']}; sizes: {', '.join(sizes)}.")  # fmt: skip
    return params


def _check_counts(params: dict[str, Any], kind: str) -> None:
    n = params.setdefault("n", 1)
    if not 1 <= n <= 8:
        raise invalid("n", "'n' must be from 1 to 8.")
    if kind == "video":
        seconds = params.setdefault("seconds", 5)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (0 < seconds <= 60)
        ):
            raise invalid("seconds", "'seconds' must be a number of seconds from 0 to 60.")
        params["seconds"] = float(seconds)
        if n != 1:
            raise invalid("n", "A video generation makes one video ('n' must be 1).")
    elif "seconds" in params:
        raise invalid("seconds", "'seconds' is for video only.")
    if "seed" in params and not 0 <= params["seed"] < 2**32:
        raise invalid("seed", "'seed' must be from 0 to 4294967295.")


def _check_budget(params: dict[str, Any]) -> None:
    if "max_cost_usd" in params:
        try:
            micros = usd_to_micros(params["max_cost_usd"])
        except ValueError as exc:
            raise invalid("max_cost_usd", f"'max_cost_usd' {exc}.") from None
        if micros < 1:
            raise invalid("max_cost_usd", "'max_cost_usd' must be at least 0.000001.")
        params["max_cost_usd"] = micros_to_usd(micros)


def media_estimate(catalog: MediaCatalog, params: dict[str, Any]) -> Estimate:
    """Expected: the first target's price; held: the dearest worst case among those that fit
    `max_cost_usd` (any of them may end up making it)."""
    _, able = candidates(catalog, params)
    budget = params.get("max_cost_usd")
    limit = None if budget is None else usd_to_micros(budget)
    fitting = [t for t in able if limit is None or worst_price(catalog, t, params) <= limit]
    if not fitting:
        cheapest = min(worst_price(catalog, t, params) for t in able)
        raise Unprocessable(f"max_cost_usd {budget} is below the cheapest target's price"
                            f" ({micros_to_usd(cheapest)} USD).", code="max_cost_too_low",
                            param="max_cost_usd")  # fmt: skip
    prices = [(t, worst_price(catalog, t, params)) for t in fitting]
    first = prices[0]
    worst = max(price for _, price in prices)
    breakdown = [{"description": f"{t.id} ({t.basis.replace('_', ' ')})",
                  "quantity": str(t.units(params).normalize()),
                  "unit_price_usd": catalog.unit_price(t),
                  "fee_usd": f"{catalog.fee.normalize():f}",
                  "amount_usd": micros_to_usd(price)} for t, price in prices]  # fmt: skip
    cost = int(first[0].cost(params) * Decimal(1_000_000))
    return Estimate(first[1], worst, cost, first[0].provider.id, breakdown)


def generation_opener(kind: str) -> Callable[[SyncTransaction, Row, dict[str, Any]], None]:
    def on_open(tx: SyncTransaction, execution: Row, params: dict[str, Any]) -> None:
        now = now_us()
        tx.execute(
            "INSERT INTO media_generations (id, execution_id, job_id, tenant_id, livemode,"
            " project_id, kind, model, params, status, progress, assets, created_at, updated_at)"
            " VALUES (:id, :e, :j, :t, :l, :p, :k, :m, :params, 'queued', 0, '[]', :now, :now)",
            {"id": new_id("gen"), "e": execution["id"], "j": execution["job_id"],
             "t": execution["tenant_id"], "l": execution["livemode"],
             "p": execution["project_id"], "k": kind, "m": params["model"],
             "params": orjson.dumps(params).decode(), "now": now},
        )  # fmt: skip

    return on_open


def close_generation(tx: SyncTransaction, execution: Row) -> None:
    """The execution closed (settled, failed, or interrupted by the sweep): the generation
    shows it; one the runner did not finish (a crash, the sweep) fails with the execution."""
    error = None
    if execution["state"] != "succeeded" and execution["error"] is not None:
        error = execution["error"]
    tx.execute(
        "UPDATE media_generations SET updated_at = :now, finished_at = COALESCE(finished_at,"
        " :now), status = CASE WHEN status IN ('succeeded', 'failed', 'cancelled') THEN status"
        " WHEN :state = 'succeeded' THEN 'succeeded' WHEN cancel_requested = 1 THEN 'cancelled'"
        " ELSE 'failed' END,"
        " error = COALESCE(error, :error) WHERE execution_id = :e",
        {"now": now_us(), "state": execution["state"], "error": error, "e": execution["id"]},
    )
    if tx.dialect == "postgresql":
        gid = tx.fetch_val("SELECT id FROM media_generations WHERE execution_id = :e",
                           {"e": execution["id"]})  # fmt: skip
        if gid is not None:
            tx.execute(notify_sql("media_generations"), {"watched_id": gid})


def register_media_tools(
    tools: ToolRegistry, catalog: MediaCatalog, runner: Callable[[], Runner], db: Database,
    publish: Callable[[str], Any],
) -> None:  # fmt: skip
    """`publish(asset_id)` gives an asset's permanent public URL (svc.assets.publish)."""

    async def execute(call: ToolCall) -> Outcome:
        return await runner().run(call)

    def describe(kind: str) -> Callable[[], dict[str, Any]]:
        def price() -> dict[str, Any]:
            return {"basis": "per_target", "description": f"the {kind} target's own price"
                    " basis (per image, per megapixel, per second of video or per step; our"
                    f" unit prices in GET /v1/models) + a {catalog.fee} USD fee per generation;"
                    " at most max_cost_usd"}  # fmt: skip

        return price

    for kind, risk in (("image", "low"), ("video", "high")):
        CLOSE_HOOKS[TOOL_OF_KIND[kind]] = close_generation
        tools.register(
            Tool(
                name=TOOL_OF_KIND[kind],
                description=f"Generate {kind}s on a media lane, alias or target; runs as a job,"
                " its outputs stored as assets behind signed URLs."
                + (" High risk: needs a human approval." if risk == "high" else ""),
                scope="media:generate",
                risk="high" if risk == "high" else "low",
                billable=True,
                irreversible=False,
                mode="job",
                parse_params=lambda p, k=kind: parse_media_params(catalog, p, k),  # type: ignore[misc]
                price=lambda p, _pricing: media_estimate(catalog, p),
                execute=execute,
                params_doc={
                    "prompt": "string, required",
                    "model": "a media lane, alias or target (default: the kind's default lane)",
                    "size": "WIDTHxHEIGHT",
                    "n": "1-8 (images)",
                    "seconds": "video length",
                    "max_cost_usd": "optional cap on the price",
                },  # fmt: skip
                params_schema=body_schema(PARAMS),
                timeout_s=MEDIA_TIMEOUT_S,
                describe_price=describe(kind),
                on_open=generation_opener(kind),
            )
        )

    async def run_publish(call: ToolCall) -> Outcome:
        gen = await db.fetch_one(
            "SELECT * FROM media_generations WHERE id = :id AND tenant_id = :t AND livemode = :l"
            " AND deleted_at IS NULL",
            {"id": call.params["generation_id"], "t": call.tenant_id, "l": int(call.livemode)},
        )
        if gen is None or (call.project_id is not None and gen["project_id"] != call.project_id):
            raise NotFound("No such generation.", param="generation_id")
        if gen["status"] != "succeeded":
            raise StateConflict("Only a succeeded generation can be published.",
                                code="generation_not_succeeded")  # fmt: skip
        urls = []
        for asset_id in orjson.loads(gen["assets"]):
            urls.append(await publish(asset_id))
        estimate = call.estimate
        return Outcome({"generation_id": gen["id"], "urls": urls}, estimate.price_micros,
                       estimate.provider_cost_micros, estimate.provider, {"assets": len(urls)},
                       [{"provider": estimate.provider, "outcome": "succeeded"}])  # fmt: skip

    def parse_publish(raw: dict[str, Any]) -> dict[str, Any]:
        params = validate(raw, PUBLISH_PARAMS)
        if not params["generation_id"].startswith("gen_"):
            raise invalid("generation_id", "'generation_id' must be a generation's id (gen_...).")
        return params

    tools.register(
        Tool(
            name=PUBLISH_TOOL,
            description="Publish a generation's assets at permanent public URLs. High risk:"
            " needs a human approval.",
            scope="media:generate",
            risk="high",
            billable=True,
            irreversible=True,
            mode="sync",
            parse_params=parse_publish,
            price=lambda p, pricing: pricing.for_tool(PUBLISH_TOOL).quote(),
            execute=run_publish,
            params_doc={"generation_id": "a succeeded generation's id"},
            params_schema=body_schema(PUBLISH_PARAMS),
            timeout_s=60.0,
        )
    )


def build_media(svc: Services, *, registry_tools: ToolRegistry) -> MediaService:
    """The media catalog, runner and tools of an app; `svc.assets` (storage) and `svc.http`
    are reached when a generation runs (the lifespan opens them)."""
    settings = svc.settings
    catalog = load_media_catalog(registry_tools.pricing)
    hints = Hints()
    watch = Watch(svc.db, "media_generations")
    config = RunnerConfig(
        sandbox_url=settings.sandbox_base(),
        submit_timeout_s=settings.media_submit_timeout_seconds,
        poll_max_s=settings.media_poll_max_seconds,
        poll_timeout_s=settings.media_poll_timeout_seconds,
        webhook_base=settings.media_webhook_base_url,
    )

    def http() -> httpx.AsyncClient:
        assert svc.http is not None, "the lifespan opens the HTTP client"
        return svc.http

    def assets() -> Assets:
        return svc.assets

    async def publish(asset_id: str) -> str:
        url: str = await svc.assets.publish(asset_id)
        return url

    runner = Runner(svc.db, catalog, http, assets, config, hints, watch.notify)
    register_media_tools(registry_tools, catalog, lambda: runner, svc.db, publish)
    return MediaService(catalog, runner, hints, watch)
