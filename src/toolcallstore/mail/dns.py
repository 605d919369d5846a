"""The DNS capability (issue 15's `domains.service`) as mail's `DnsPublisher`."""

from __future__ import annotations

from typing import Any

from toolcallstore.domains import service as domains
from toolcallstore.services import Services


class DomainsDns:
    def __init__(self, svc: Services) -> None:
        self._svc = svc

    async def held(self, *, tenant_id: str, livemode: bool, name: str,
                   project_id: str | None = None) -> bool:  # fmt: skip
        row = await domains.find_held_domain(self._svc, tenant_id=tenant_id, livemode=livemode,
                                             name=name)  # fmt: skip
        return row is not None and project_id in (None, row["project_id"])

    async def publish(
        self, *, tenant_id: str, livemode: bool, project_id: str | None, domain: str,
        records: list[dict[str, Any]], execution_id: str,
    ) -> str:  # fmt: skip
        change_id: str = await domains.apply_records_for(
            self._svc, tenant_id=tenant_id, livemode=livemode, project_id=project_id,
            domain=domain, upsert=records, execution_id=execution_id,
        )  # fmt: skip
        return change_id

    async def status(self, change_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await domains.dns_change_status(self._svc, change_id)
        return found
