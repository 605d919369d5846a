"""The machine-readable public documents: catalog.json, pricing.json, models.json, the MCP
discovery document and security.txt. Our prices only: provider costs never leave the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolcallstore.controls.pricing import Pricing
from toolcallstore.lanes.catalog import Catalog
from toolcallstore.tools import Tool, ToolRegistry


@dataclass(frozen=True)
class SiteConfig:
    """config/site.json: what the public files say about the store itself."""

    name: str
    base_url: str
    security_contact: str
    security_expires: str
    summary: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SiteConfig:
        return cls(
            name=raw["name"],
            base_url=raw["base_url"].rstrip("/"),
            security_contact=raw["security_contact"],
            security_expires=raw["security_expires"],
            summary=raw["summary"],
        )


def tool_annotations(tool: Tool) -> dict[str, Any]:
    """MCP tool annotations: what an agent's client may show or gate on."""
    return {
        "title": tool.name,
        "readOnlyHint": not tool.billable and not tool.irreversible,
        "destructiveHint": tool.irreversible,
        # A retry with the same idempotency key never acts twice; a bare retry would.
        "idempotentHint": False,
        "openWorldHint": tool.name.split(".")[0] != "sandbox",
    }


def tool_entry(tool: Tool, pricing: Pricing) -> dict[str, Any]:
    """A tool as GET /v1/tools and catalog.json show it."""
    price = None
    if tool.billable:
        described = tool.describe_price
        price = described() if described else pricing.for_tool(tool.name).describe()
    return {
        "name": tool.name,
        "object": "tool",
        "description": tool.description,
        "scope": tool.scope,
        "risk": tool.risk,
        "billable": tool.billable,
        "irreversible": tool.irreversible,
        "mode": tool.mode,
        "approval": "always" if tool.risk == "high" else "above_tenant_threshold",
        "price": price,
        "params": tool.params_doc,
    }


def catalog_document(tools: ToolRegistry) -> dict[str, Any]:
    entries = []
    for tool in tools.all():
        entry = tool_entry(tool, tools.pricing)
        entry["params_schema"] = tool.params_schema or {"type": "object"}
        entry["annotations"] = tool_annotations(tool)
        entries.append(entry)
    return {"object": "catalog", "tools": entries,
            "flow": "POST /v1/quotes -> (POST /v1/approvals when requires_approval) ->"
                    " POST /v1/executions -> GET /v1/receipts/{id}"}  # fmt: skip


def pricing_document(tools: ToolRegistry, lanes: Catalog) -> dict[str, Any]:
    """What a customer pays: per tool, and per million tokens per LLM target."""
    tool_prices = {
        tool.name: tool_entry(tool, tools.pricing)["price"] for tool in tools.all() if tool.billable
    }
    return {
        "object": "pricing",
        "currency": "usd",
        "tools": tool_prices,
        "llm": {
            "fee_usd_per_call": str(lanes.fee),
            "targets": {model.id: _target_prices(lanes, model.id) for model in _models(lanes)},
        },
        "notes": "Our prices. Every call is quoted first; a call never costs more than its quote's"
        " max_cost_usd.",
    }


def _models(lanes: Catalog) -> list[Any]:
    return sorted(lanes.models.values(), key=lambda m: m.id)


def _target_prices(lanes: Catalog, model_id: str) -> dict[str, str]:
    model = lanes.models[model_id]
    return {
        "input_usd_per_mtok": lanes.list_price(model.input_per_mtok),
        "output_usd_per_mtok": lanes.list_price(model.output_per_mtok),
    }


def models_document(lanes: Catalog) -> dict[str, Any]:
    return {
        "object": "models",
        "lanes": [
            {"id": lane.id, "description": lane.description, "targets": list(lane.targets),
             "order": lane.order, "hedge_after_ms": lane.hedge_after_ms,
             "max_parallel": lane.max_parallel, "resume_mid_stream": lane.resume_mid_stream}
            for lane in lanes.lanes.values()
        ],
        "aliases": dict(sorted(lanes.aliases.items())),
        "targets": [
            {"id": model.id, "provider": model.target.provider,
             "context_tokens": model.context_tokens,
             "max_output_tokens": model.max_output_tokens,
             "supports_tools": model.supports_tools,
             "pricing": {**_target_prices(lanes, model.id),
                         "fee_usd_per_call": str(lanes.fee)}}
            for model in _models(lanes)
        ],
    }  # fmt: skip


def mcp_document(site: SiteConfig, tools: ToolRegistry) -> dict[str, Any]:
    """/.well-known/mcp.json: where the MCP endpoint is and how to authenticate to it."""
    return {
        "name": site.name,
        "description": site.summary,
        "endpoint": f"{site.base_url}/mcp",
        "transport": "streamable-http",
        "authentication": {
            "type": "bearer",
            "description": "Authorization: Bearer <API key> (tcs_live_... or tcs_test_...); the"
            " key's scopes decide which tools run.",
        },
        "tools": [
            {"name": t.name, "scope": t.scope, "annotations": tool_annotations(t)}
            for t in tools.all()
        ],  # fmt: skip
        "documentation": f"{site.base_url}/docs/mcp.html",
    }


def security_txt(site: SiteConfig) -> str:
    """RFC 9116."""
    return (
        f"Contact: {site.security_contact}\n"
        f"Expires: {site.security_expires}\n"
        "Preferred-Languages: en\n"
        f"Canonical: {site.base_url}/.well-known/security.txt\n"
    )
