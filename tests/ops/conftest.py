from collections.abc import AsyncIterator

import pytest

from tests.ops.helpers import drop_created


@pytest.fixture(autouse=True)
async def _drop_databases() -> AsyncIterator[None]:
    yield
    await drop_created()
