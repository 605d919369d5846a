"""The shared `send` on the app's upstream client (httpx over aiohttp), which labels most
connection errors `ConnectTimeout`: a submit whose connection dropped after it went out must be
`ambiguous` (the provider may have accepted it), a refused connection `unavailable`."""

from __future__ import annotations

import httpx
import pytest

from tests.media.conftest import Sandbox, closed_port_url
from toolcallstore.media.base import MediaProviderError
from toolcallstore.media.http import send
from toolcallstore.media.runware import task_uuid

pytestmark = pytest.mark.asyncio(loop_scope="module")


def task(ref: str) -> list[dict[str, object]]:
    return [{"taskType": "imageInference", "taskUUID": task_uuid(ref), "model": "runware:101@1",
             "positivePrompt": "a paper boat", "width": 512, "height": 512,
             "deliveryMethod": "async"}]  # fmt: skip


async def submit(http: httpx.AsyncClient, url: str, ref: str, *, submit: bool = True) -> None:
    await send(http, "POST", url, headers={"authorization": "Bearer k"}, json=task(ref),
               timeout_s=0.3, submit=submit)  # fmt: skip


async def test_a_dropped_or_late_answer_is_ambiguous_for_a_submit_only(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    for spec, ref in (("lose_answer=1", "att_a"), ("latency_ms=1000", "att_b")):
        with pytest.raises(MediaProviderError) as caught:
            await submit(http, f"{sandbox.url}/fault/{spec}/runware/v1", ref)
        assert caught.value.kind == "ambiguous", spec
    with pytest.raises(MediaProviderError) as caught:
        await submit(http, f"{sandbox.url}/fault/lose_answer=1/runware/v1", "att_c", submit=False)
    assert caught.value.kind == "unavailable"
    # The submit whose answer was dropped was accepted: Runware knows its task.
    poll = [{"taskType": "getResponse", "taskUUID": task_uuid("att_a")}]
    found = await send(http, "POST", f"{sandbox.url}/runware/v1", json=poll,
                       headers={"authorization": "Bearer k"}, timeout_s=5)  # fmt: skip
    assert found.status_code == 200 and found.json()["data"][0]["taskUUID"] == task_uuid("att_a")


async def test_a_refused_connection_is_unavailable(http: httpx.AsyncClient) -> None:
    with pytest.raises(MediaProviderError) as caught:
        await submit(http, closed_port_url() + "/runware/v1", "att_d")
    assert caught.value.kind == "unavailable"
