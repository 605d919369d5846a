"""HTTP resources, one module each; `routes()` gathers them for the app."""

from starlette.routing import BaseRoute

from toolcallstore.api import (
    admin_page,
    approvals,
    assets,
    billing,
    byok,
    chat,
    domains,
    email,
    events,
    executions,
    health,
    jobs,
    keys,
    mcp,
    media,
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
        *assets.routes,
        *health.routes,
        *approvals.routes,
        *receipts.routes,
        *spend_caps.routes,
        *keys.routes,
        *tenants.routes,
        *byok.routes,
        *webhook_endpoints.routes,
        *domains.routes,
        *events.routes,
        *billing.routes,
        *email.routes,
        *mcp.routes,
        *media.routes,
        *admin_page.routes,
    ]
