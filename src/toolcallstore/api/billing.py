"""Billing: `POST /v1/billing/checkout {plan}` (scope `billing:manage`) opens a Stripe Checkout
Session for a plan; `POST /v1/stripe/webhook` (no API key: Stripe's signature instead) applies
Stripe's events to the tenant's plan, spend cap and payment state."""

from __future__ import annotations

from typing import Any

import orjson
import stripe
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.auth import require_scope
from toolcallstore.billing.accounts import apply_stripe_event, ensure_customer
from toolcallstore.billing.base import PaymentsProvider
from toolcallstore.billing.config import BillingConfig
from toolcallstore.errors import InvalidRequest, PermissionDenied, Unavailable
from toolcallstore.idempotency import idempotency_key
from toolcallstore.responses import JSONResponse
from toolcallstore.services import Services, services
from toolcallstore.site.operations import Operation
from toolcallstore.validation import Field, invalid, read_json_object, validate

CHECKOUT_FIELDS = {"plan": Field(str, required=True, max_length=64)}


def _billing(svc: Services) -> tuple[PaymentsProvider, BillingConfig]:
    if svc.payments is None or svc.billing is None:
        raise Unavailable(
            "Billing is not enabled on this server: the operator must set"
            " TOOLCALLSTORE_STRIPE_API_KEY.",
            code="billing_unavailable",
        )
    return svc.payments, svc.billing


async def create_checkout(request: Request) -> Response:
    principal = require_scope(request, "billing:manage")
    if principal.key.project_id is not None:
        raise PermissionDenied("Billing belongs to the tenant; use a tenant-wide key.",
                               code="project_forbidden")  # fmt: skip
    svc = services(request)
    key = idempotency_key(request)
    body = await read_json_object(request)
    plan = validate(body, CHECKOUT_FIELDS)["plan"]
    # After the request is checked: a malformed one is 400 whether or not billing is enabled.
    payments, config = _billing(svc)
    if plan not in config.plans:
        raise invalid("plan", f"Unknown 'plan'; use one of: {', '.join(sorted(config.plans))}.")
    customer = await ensure_customer(svc.db, payments, principal.tenant_id)
    # Stripe replays the same session for the same key, so a retried request (or a replay
    # answered from our store) never opens a second one.
    session_id, url = await payments.create_checkout(
        customer, principal.tenant_id, plan, f"toolcallstore-checkout-{principal.key_id}-{key}"
    )
    answer = {"object": "checkout_session", "id": session_id, "url": url, "plan": plan,
              "customer": customer}  # fmt: skip

    def execute(tx: Any) -> tuple[int, Any]:
        return 200, answer

    return await svc.idempotency.run_sync(request, principal, key, body, execute)


async def billing_account(request: Request) -> Response:
    principal = require_scope(request, "billing:manage")
    svc = services(request)
    row = await svc.db.fetch_one(
        "SELECT * FROM billing_accounts WHERE tenant_id = :t", {"t": principal.tenant_id}
    )
    suspended = svc.suspensions is not None and await svc.suspensions.suspended(principal.tenant_id)
    return JSONResponse({
        "object": "billing_account",
        "tenant_id": principal.tenant_id,
        "customer": None if row is None else row["stripe_customer_id"],
        "plan": None if row is None else row["plan"],
        "subscription": None if row is None else row["subscription_id"],
        "subscription_status": None if row is None else row["subscription_status"],
        "payment_failing_since": None if row is None or row["payment_failed_at"] is None
        else row["payment_failed_at"] // 1_000_000,
        "live_keys_suspended": suspended,
    })  # fmt: skip


async def stripe_webhook(request: Request) -> Response:
    svc = services(request)
    secret = svc.settings.stripe_webhook_secret
    if not secret or svc.billing is None:
        raise Unavailable("Stripe webhooks are not configured on this server.",
                          code="billing_unavailable")  # fmt: skip
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    try:
        stripe.Webhook.construct_event(payload, signature, secret)
    except stripe.SignatureVerificationError:
        raise InvalidRequest("The Stripe-Signature header does not verify.",
                             code="invalid_signature") from None  # fmt: skip
    except ValueError:
        raise InvalidRequest("The body is not a Stripe event.", code="invalid_json") from None
    event = orjson.loads(payload)
    outcome = await svc.db.run_sync(apply_stripe_event, svc.billing, event)
    if svc.suspensions is not None:
        svc.suspensions.forget_all()
    return JSONResponse({"received": True, "id": event["id"], "outcome": outcome})


routes = [
    Route("/v1/billing/checkout", create_checkout, methods=["POST"]),
    Route("/v1/billing/account", billing_account, methods=["GET"]),
    Route("/v1/stripe/webhook", stripe_webhook, methods=["POST"]),
]

_UNAVAILABLE = {503: ("billing_unavailable",)}
operations = [
    Operation("POST", "/v1/billing/checkout", "A Stripe Checkout Session for a plan (its `url`"
              " is where a person pays)", "billing", "billing:manage", body=CHECKOUT_FIELDS,
              idempotency="required", responses={200: "CheckoutSession"},
              errors={403: ("project_forbidden",), 502: ("provider_error",), **_UNAVAILABLE}),
    Operation("GET", "/v1/billing/account", "The tenant's plan, subscription and payment state",
              "billing", "billing:manage", responses={200: "BillingAccount"}),
    # Stripe's protocol, not ours: Stripe signs and posts its event objects here (400
    # invalid_signature, 503 billing_unavailable when no signing secret is set).
    Operation("POST", "/v1/stripe/webhook", "Stripe's signed events", "billing", "public",
              external="https://docs.stripe.com/webhooks"),
]  # fmt: skip
