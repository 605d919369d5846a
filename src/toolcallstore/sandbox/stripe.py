"""A Stripe fake for what billing uses, on Stripe's wire format: form-encoded requests with
bracketed keys, `Authorization: Bearer sk_...`, `Idempotency-Key` replays, objects as Stripe
shapes them and errors as `{"error": {"type", "code", "message", "param"}}`.

    POST /v1/customers                  GET /v1/customers/{id}
    POST /v1/checkout/sessions          GET /v1/checkout/sessions/{id}
    POST /v1/billing/meter_events       (deduplicated by `identifier`, as Stripe does)
    POST /v1/billing/meter_event_adjustments   (type=cancel: the event stops counting)
    GET  /v1/billing/meters/{id}/event_summaries?customer=&start_time=&end_time=

Fake-only, to drive tests and demos: `POST /_emit {type, object, url, secret}` signs an event
with Stripe's scheme and POSTs it to `url`; `POST /_checkout/{id}/complete` completes a
session (a subscription for its prices) and answers the objects the events would carry;
`GET /_meter_events` lists every meter event received.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from toolcallstore.billing.config import load_billing_config
from toolcallstore.ids import new_id

MAX_PAST_S = 35 * 86_400
MAX_FUTURE_S = 300


class StripeError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        body: dict[str, Any] = {"type": "invalid_request_error", "message": message}
        if code is not None:
            body.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code}")
        if param is not None:
            body["param"] = param
        self.body = {"error": body}


def _json(data: Any, status: int = 200) -> Response:
    headers = {"request-id": new_id("req")}
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def decode_form(raw: bytes) -> dict[str, Any]:
    """`a[b][0][c]=v` pairs into nested dicts; all-digit keys become lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    decoded: dict[str, Any] = _listify(root)
    return decoded


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _missing(kind: str, object_id: str, param: str) -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class StripeFake:
    def __init__(self) -> None:
        config = load_billing_config()
        self.meters = {config.meter_id: config.meter_event_name}
        self.prices: dict[str, dict[str, Any]] = {}
        for plan in config.plans.values():
            self.prices[plan.flat_price] = {"id": plan.flat_price, "usage_type": "licensed"}
            self.prices[plan.metered_price] = {"id": plan.metered_price, "usage_type": "metered",
                                               "meter": config.meter_id}  # fmt: skip
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.meter_events: dict[str, dict[str, Any]] = {}  # by identifier
        self.cancelled: set[str] = set()
        self.received = 0  # meter event requests, duplicates included
        self._replays: dict[str, tuple[int, Any]] = {}

    async def dispatch(self, request: Request) -> Response:
        if not request.headers.get("authorization", "").startswith("Bearer sk_"):
            error = StripeError(401, "You did not provide a valid API key. Send it as a Bearer"
                                " token (sk_...).")  # fmt: skip
            return _json(error.body, error.status)
        replay_key = request.headers.get("idempotency-key")
        if request.method == "POST" and replay_key and replay_key in self._replays:
            status, body = self._replays[replay_key]
            response = _json(body, status)
            response.headers["idempotent-replayed"] = "true"
            return response
        form = decode_form(await request.body()) if request.method == "POST" else {}
        handler = getattr(self, request.scope["endpoint_name"])
        try:
            status, body = 200, handler(request, form)
        except StripeError as error:
            status, body = error.status, error.body
        if request.method == "POST" and replay_key and status < 500:
            self._replays[replay_key] = (status, body)
        return _json(body, status)

    def create_customer(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        customer = {"id": new_id("cus"), "object": "customer", "created": int(time.time()),
                    "email": form.get("email"), "name": form.get("name"),
                    "metadata": form.get("metadata", {}), "livemode": False}  # fmt: skip
        self.customers[customer["id"]] = customer
        return customer

    def get_customer(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        found = self.customers.get(request.path_params["id"])
        if found is None:
            raise _missing("customer", request.path_params["id"], "id")
        return found

    def _line_items(self, form: dict[str, Any]) -> list[dict[str, Any]]:
        items = form.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeError(400, "Missing required param: line_items.", code="parameter_missing",
                              param="line_items")  # fmt: skip
        for i, item in enumerate(items):
            price = self.prices.get(item.get("price", ""))
            if price is None:
                raise _missing("price", item.get("price", ""), f"line_items[{i}][price]")
            if price["usage_type"] == "metered" and "quantity" in item:
                raise StripeError(400, "Quantity should not be specified where usage_type is"
                                  f" `metered`. Remove quantity from `line_items[{i}]`.",
                                  param=f"line_items[{i}][quantity]")  # fmt: skip
        return items

    def create_session(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        if form.get("mode") not in ("payment", "setup", "subscription"):
            raise StripeError(400, "Missing required param: mode.", code="parameter_missing",
                              param="mode")  # fmt: skip
        if not form.get("success_url"):
            raise StripeError(400, "Missing required param: success_url.",
                              code="parameter_missing", param="success_url")  # fmt: skip
        customer = form.get("customer")
        if customer is not None and customer not in self.customers:
            raise _missing("customer", customer, "customer")
        session_id = new_id("cs_test")
        base = str(request.url.replace(query="")).removesuffix("/v1/checkout/sessions")
        session = {"id": session_id, "object": "checkout.session", "mode": form["mode"],
                   "customer": customer, "client_reference_id": form.get("client_reference_id"),
                   "metadata": form.get("metadata", {}), "status": "open",
                   "payment_status": "unpaid", "subscription": None,
                   "success_url": form["success_url"], "cancel_url": form.get("cancel_url"),
                   "url": f"{base}/_checkout/{session_id}", "livemode": False,
                   "line_items_prices": [i["price"] for i in self._line_items(form)],
                   "subscription_data": form.get("subscription_data", {}),
                   "created": int(time.time())}  # fmt: skip
        self.sessions[session_id] = session
        return {k: v for k, v in session.items() if k != "line_items_prices"}

    def get_session(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        found = self.sessions.get(request.path_params["id"])
        if found is None:
            raise _missing("checkout.session", request.path_params["id"], "session")
        return {k: v for k, v in found.items() if k != "line_items_prices"}

    def create_meter_event(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        self.received += 1
        name, payload = form.get("event_name"), form.get("payload") or {}
        if name not in self.meters.values():
            raise StripeError(400, f"No active meter was found for event_name '{name}'.",
                              code="resource_missing", param="event_name")  # fmt: skip
        if payload.get("stripe_customer_id") not in self.customers:
            raise _missing("customer", str(payload.get("stripe_customer_id")),
                           "payload[stripe_customer_id]")  # fmt: skip
        try:
            float(payload.get("value", ""))
        except ValueError:
            raise StripeError(400, "Invalid value: must be a number.",
                              param="payload[value]") from None  # fmt: skip
        now = int(time.time())
        timestamp = int(form.get("timestamp") or now)
        if not now - MAX_PAST_S <= timestamp <= now + MAX_FUTURE_S:
            raise StripeError(400, "Timestamp must be within the past 35 calendar days or up to"
                              " 5 minutes in the future.", param="timestamp")  # fmt: skip
        identifier = form.get("identifier") or new_id("mev")
        event = {"object": "billing.meter_event", "created": now, "event_name": name,
                 "identifier": identifier, "livemode": False, "payload": payload,
                 "timestamp": timestamp}  # fmt: skip
        return self.meter_events.setdefault(identifier, event)  # a duplicate counts once

    def adjust_meter_event(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        identifier = (form.get("cancel") or {}).get("identifier", "")
        if form.get("type") != "cancel" or identifier not in self.meter_events:
            raise _missing("meter event", identifier, "cancel[identifier]")
        self.cancelled.add(identifier)
        return {"id": new_id("mtrea"), "object": "billing.meter_event_adjustment",
                "event_name": form.get("event_name"), "status": "pending", "type": "cancel",
                "cancel": {"identifier": identifier}, "livemode": False}  # fmt: skip

    def event_summaries(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        meter_id, query = request.path_params["id"], request.query_params
        if meter_id not in self.meters:
            raise _missing("billing.meter", meter_id, "id")
        for param in ("customer", "start_time", "end_time"):
            if param not in query:
                raise StripeError(400, f"Missing required param: {param}.",
                                  code="parameter_missing", param=param)  # fmt: skip
        start, end = int(query["start_time"]), int(query["end_time"])
        total = sum(float(e["payload"]["value"]) for i, e in self.meter_events.items()
                    if i not in self.cancelled and e["event_name"] == self.meters[meter_id]
                    and e["payload"]["stripe_customer_id"] == query["customer"]
                    and start <= e["timestamp"] < end)  # fmt: skip
        summary = {"id": new_id("mtrusg"), "object": "billing.meter_event_summary",
                   "aggregated_value": total, "start_time": start, "end_time": end,
                   "livemode": False, "meter": meter_id}  # fmt: skip
        return {"object": "list", "data": [summary], "has_more": False,
                "url": f"/v1/billing/meters/{meter_id}/event_summaries"}  # fmt: skip

    def complete_session(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            raise _missing("checkout.session", request.path_params["id"], "session")
        now = int(time.time())
        items = [{"id": new_id("si"), "object": "subscription_item", "price": self.prices[p]}
                 for p in session["line_items_prices"]]  # fmt: skip
        subscription = {"id": new_id("sub"), "object": "subscription", "status": "active",
                        "customer": session["customer"], "created": now,
                        "metadata": session["subscription_data"].get("metadata", {}),
                        "items": {"object": "list", "data": items}}  # fmt: skip
        session.update(status="complete", payment_status="paid", subscription=subscription["id"])
        return {"session": {k: v for k, v in session.items() if k != "line_items_prices"},
                "subscription": subscription}  # fmt: skip

    def list_meter_events(self, request: Request, form: dict[str, Any]) -> dict[str, Any]:
        return {"received": self.received, "cancelled": sorted(self.cancelled),
                "data": list(self.meter_events.values())}  # fmt: skip


async def emit_event(request: Request) -> Response:
    """Sign an event as Stripe does and POST it to `url`; answers the event, its signature
    header and the receiver's status."""
    spec = orjson.loads(await request.body())
    event = {"id": spec.get("id") or new_id("evt"), "object": "event", "type": spec["type"],
             "api_version": "2025-04-30.basil", "created": spec.get("created", int(time.time())),
             "livemode": False, "data": {"object": spec["object"]}}  # fmt: skip
    payload = orjson.dumps(event)
    signature = sign_payload(payload, spec["secret"], int(time.time()))
    headers = {"stripe-signature": signature, "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(spec["url"], content=payload, headers=headers)
    return _json({"event": event, "signature": signature, "status": answer.status_code})


def create_stripe_app() -> Starlette:
    fake = StripeFake()
    table = [
        ("/v1/customers", "POST", "create_customer"),
        ("/v1/customers/{id}", "GET", "get_customer"),
        ("/v1/checkout/sessions", "POST", "create_session"),
        ("/v1/checkout/sessions/{id}", "GET", "get_session"),
        ("/v1/billing/meter_events", "POST", "create_meter_event"),
        ("/v1/billing/meter_event_adjustments", "POST", "adjust_meter_event"),
        ("/v1/billing/meters/{id}/event_summaries", "GET", "event_summaries"),
        ("/_checkout/{id}/complete", "POST", "complete_session"),
        ("/_meter_events", "GET", "list_meter_events"),
    ]
    routes = []
    for path, method, name in table:

        async def endpoint(request: Request, _name: str = name) -> Response:
            request.scope["endpoint_name"] = _name
            return await fake.dispatch(request)

        routes.append(Route(path, endpoint, methods=[method]))
    routes.append(Route("/_emit", emit_event, methods=["POST"]))
    return Starlette(routes=routes)
