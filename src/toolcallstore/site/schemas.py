"""JSON Schemas of the objects the API answers with (OpenAPI components).

They name what every answer of the kind carries; objects may grow fields, so extra
properties are allowed. The error envelope is exact: it is the contract agents branch on.
"""

from __future__ import annotations

from typing import Any

STR: dict[str, Any] = {"type": "string"}
NULL_STR: dict[str, Any] = {"type": ["string", "null"]}
USD: dict[str, Any] = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}
NULL_USD: dict[str, Any] = {"anyOf": [USD, {"type": "null"}]}
INT: dict[str, Any] = {"type": "integer"}
NULL_INT: dict[str, Any] = {"type": ["integer", "null"]}
BOOL: dict[str, Any] = {"type": "boolean"}


def obj(kind: str | None, required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    properties = dict(required)
    properties.update(optional)
    if kind is not None:
        properties["object"] = {"const": kind}
    names = sorted(required) + (["object"] if kind is not None else [])
    return {"type": "object", "required": names, "properties": properties}


def list_of(item: str) -> dict[str, Any]:
    return obj(
        "list",
        {
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "has_more": BOOL,
        },  # fmt: skip
        url=STR,
    )


ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "code", "message", "request_id"],
            "properties": {
                "type": {
                    "enum": [
                        "invalid_request_error",
                        "authentication_error",
                        "permission_error",
                        "idempotency_error",
                        "billing_error",
                        "rate_limit_error",
                        "api_error",
                    ]
                },
                "code": STR,
                "message": STR,
                "request_id": STR,
                "param": STR,
                "required_scope": STR,
            },
        }
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR,
    "Object": {"type": "object"},
    "ApiKey": obj(
        "api_key",
        {
            "id": STR,
            "mode": {"enum": ["live", "test"]},
            "scopes": {"type": "array", "items": STR},
            "secret": NULL_STR,
            "auto_quote_max_usd": NULL_USD,
        },
        rate_limit_per_s={"type": ["number", "null"]},
        rate_limit_burst=NULL_INT,
    ),  # fmt: skip
    "Tenant": obj("tenant", {"id": STR, "name": STR, "created": INT}),
    "Project": obj("project", {"id": STR, "tenant_id": STR, "name": STR, "created": INT}),
    "Tool": obj(
        "tool",
        {
            "name": STR,
            "scope": STR,
            "risk": {"enum": ["low", "high"]},
            "billable": BOOL,
            "irreversible": BOOL,
            "mode": {"enum": ["sync", "job"]},
            "params": {"type": "object"},
        },
    ),
    "Quote": obj(
        "quote",
        {
            "id": STR,
            "tool": STR,
            "status": STR,
            "price_usd": USD,
            "max_cost_usd": USD,
            "requires_approval": BOOL,
            "approval_reasons": {"type": "array", "items": STR},
            "expires_at": INT,
        },
    ),  # fmt: skip
    "Execution": obj(
        "execution",
        {"id": STR, "status": STR, "quote_id": STR},
        receipt_id=NULL_STR,
        job_id=NULL_STR,
    ),  # fmt: skip
    "Approval": obj("approval", {"id": STR, "quote_id": STR, "status": STR}),
    "Receipt": obj("receipt", {"id": STR, "amount_usd": USD, "status": STR}),
    "Job": obj("job", {"id": STR, "type": STR, "state": STR, "attempts": INT}),
    "Usage": obj("usage", {"period": STR}),
    "Reconciliation": obj("reconciliation", {"period": STR}),
    "SpendCap": obj(
        "spend_cap",
        {"owner": {"enum": ["tenant", "project"]}, "period": STR, "monthly_cap_usd": NULL_USD},
    ),
    "Deleted": obj(None, {"id": STR, "object": STR, "deleted": {"const": True}}),
    "ByokKey": obj("byok_key", {"id": STR, "provider": STR, "last4": STR}),
    "Me": obj("api_key", {"id": STR, "tenant_id": STR}),
    "ChatCompletion": obj(
        "chat.completion", {"id": STR, "model": STR, "choices": {"type": "array"}}
    ),  # fmt: skip
    "Models": obj("list", {"data": {"type": "array", "items": obj("model", {"id": STR})}}),
    "Health": obj(None, {"status": STR}),
    "ProviderHealth": obj("provider_health", {"targets": {}, "lanes": {"type": "object"}}),
    "Metrics": STR,
    # A stored asset's bytes (image/png, video/mp4, ...), and an answer with headers only.
    "Binary": {"type": "string", "format": "binary"},
    "Empty": {"type": "string", "maxLength": 0},
    "WebhookEndpoint": obj(
        "webhook_endpoint",
        {
            "id": STR,
            "url": STR,
            "events": {"type": "array", "items": STR},
            "livemode": BOOL,
            "status": {"enum": ["enabled", "disabled"]},
            "secret": NULL_STR,
        },
    ),  # fmt: skip
    "WebhookTest": obj("webhook_test", {"event_id": STR, "delivery_id": STR, "endpoint_id": STR}),
    "Event": obj(
        "event",
        {
            "id": STR,
            "type": STR,
            "created": INT,
            "livemode": {"type": ["boolean", "null"]},
            "data": {"type": "object"},
        },
        deliveries={
            "type": "array",
            "items": obj(
                "webhook_delivery",
                {
                    "id": STR,
                    "endpoint_id": STR,
                    "state": STR,
                    "attempt_count": INT,
                    "attempts": {"type": "array"},
                },
            ),
        },
    ),  # fmt: skip
    "Redelivery": obj(
        "redelivery", {"event_id": STR, "delivery_ids": {"type": "array", "items": STR}}
    ),  # fmt: skip
    "CheckoutSession": obj(
        "checkout_session", {"id": STR, "url": STR, "plan": STR, "customer": STR}
    ),  # fmt: skip
    "BillingAccount": obj(
        "billing_account",
        {
            "tenant_id": STR,
            "customer": NULL_STR,
            "plan": NULL_STR,
            "subscription_status": NULL_STR,
            "live_keys_suspended": BOOL,
        },
    ),  # fmt: skip
    "MailDomain": obj("mail_domain", {"id": STR, "domain": STR, "status": STR}),
    "Mailbox": obj("mailbox", {"id": STR, "address": STR, "status": STR}),
}
for _item in ("ApiKey", "Tenant", "Project", "Approval", "Receipt", "ByokKey", "Tool", "SpendCap",
              "WebhookEndpoint", "Event", "MailDomain", "Mailbox"):  # fmt: skip
    SCHEMAS[f"{_item}List"] = list_of(_item)
