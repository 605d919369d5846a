"""`ops`: the app in-process with a live admin key of its operator tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.admin.helpers import db_of, new_key, operator_tenant
from tests.conftest import Api


@pytest.fixture
async def ops(api: Api) -> AsyncIterator[tuple[Api, str]]:
    db = db_of(api)
    yield api, await new_key(db, await operator_tenant(db), "live", ("admin",))
