"""HTTP resources, one module each; `routes()` gathers them for the app."""

from starlette.routing import BaseRoute

from toolcallstore.api import (
    admin_page,
    approvals,
    billing,
    byok,
    chat,
    events,
    executions,
    health,
    jobs,
    keys,
    mcp,
    quotes,
    receipts,
    spend_caps,
    tenants,
    webhook_endpoints,
)


def routes() -> list[BaseRoute]:
    # Starlette tries routes in order, one regex each: the calls agents make all day first.
    return [
        *chat.routes,
        *executions.routes,
        *quotes.routes,
        *jobs.routes,
        *health.routes,
        *approvals.routes,
        *receipts.routes,
        *spend_caps.routes,
        *keys.routes,
        *tenants.routes,
        *byok.routes,
        *webhook_endpoints.routes,
        *events.routes,
        *billing.routes,
        *mcp.routes,
        *admin_page.routes,
    ]
