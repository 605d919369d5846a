"""The app on a real socket for every domain test (see helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.domains.helpers import Live, live_domains
from toolcallstore.settings import Settings


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with live_domains(settings) as value:
        yield value
