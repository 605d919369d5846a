"""The Runware adapter against its fake over real HTTP: a task named after our attempt, async
acknowledgement, cumulative polls deduplicated, the reported cost summed, a lost answer found
again by its taskUUID, errors by kind."""

from __future__ import annotations

import httpx
import pytest

from tests.media.conftest import Sandbox, closed_port_url, decoded, fetch
from toolcallstore.media.base import MediaProviderError, MediaRequest, Polled, Submitted
from toolcallstore.media.runware import RunwareProvider, task_uuid

pytestmark = pytest.mark.asyncio(loop_scope="module")


def provider(http: httpx.AsyncClient, base: str, spec: str = "") -> RunwareProvider:
    prefix = f"/fault/{spec}" if spec else ""
    return RunwareProvider(http, f"{base}{prefix}/runware/v1", "k")


def request(client_ref: str = "att_runware_1", **kw: object) -> MediaRequest:
    fields: dict[str, object] = {"kind": "image", "model": "runware:101@1", "n": 2,
                                 "prompt": "a glass greenhouse at night", "width": 1024,
                                 "height": 768, "seed": 9, "client_ref": client_ref}  # fmt: skip
    fields.update(kw)
    return MediaRequest(**fields)  # type: ignore[arg-type]


async def polled(runware: RunwareProvider, submitted: Submitted, times: int) -> list[Polled]:
    return [await runware.poll(submitted) for _ in range(times)]


async def test_a_task_is_polled_to_success_with_images_counted_once_and_its_cost(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    runware = provider(http, sandbox.url)
    submitted = await runware.submit(request())
    assert submitted.request_id == task_uuid("att_runware_1")
    assert submitted.state == Polled("queued")
    running, done, again = await polled(runware, submitted, 3)
    assert running.status == "running" and running.progress == 0.5
    assert done.status == "succeeded"
    assert len(done.outputs) == 2  # the first image came in both polls: counted once
    assert again == done
    per_image = 1022  # 0.0013 USD a megapixel x 0.786 MP, as the fake reports it, in micros
    assert done.cost_micros == 2 * per_image
    images = [decoded(await fetch(runware, output)) for output in done.outputs]
    assert [image.size for image in images] == [(1024, 768)] * 2
    assert images[0].tobytes() != images[1].tobytes()
    assert (await sandbox.submissions("runware"))["total"] == 1


async def test_a_lost_answer_is_found_again_by_the_attempts_task_uuid(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    lossy = provider(http, sandbox.url, "lose_answer=1")
    with pytest.raises(MediaProviderError) as caught:
        await lossy.submit(request("att_lost"))
    assert caught.value.kind == "ambiguous"
    runware = provider(http, sandbox.url)
    assert runware.can_lookup
    found = await runware.lookup(request("att_lost"))
    assert found is not None and found.request_id == task_uuid("att_lost")
    assert found.state is not None and found.state.status == "running"  # a lookup is a poll
    assert await runware.lookup(request("att_never_sent")) is None
    # Submitting the same attempt again names the same task: Runware does not run it twice.
    again = await runware.submit(request("att_lost"))
    assert again.request_id == found.request_id
    assert (await sandbox.submissions("runware"))["total"] == 1
    done = await runware.poll(found)
    assert done.status == "succeeded" and len(done.outputs) == 2


@pytest.mark.parametrize(
    ("spec", "kind", "status", "retry_after"),
    [("status=429,retry_after=4", "unavailable", 429, 4.0),
     ("status=502", "unavailable", 502, None),
     ("status=401", "unavailable", 401, None),
     ("nsfw=1", "refused", 400, None)],
)  # fmt: skip
async def test_errors_before_acceptance_map_to_their_kind(
    sandbox: Sandbox, http: httpx.AsyncClient, spec: str, kind: str, status: int,
    retry_after: float | None,
) -> None:  # fmt: skip
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, spec).submit(request())
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert caught.value.retry_after == retry_after
    assert (await sandbox.submissions("runware"))["total"] == 0


async def test_input_runware_rejects_is_invalid_and_refused_connections_unavailable(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url).submit(request(width=1000))
    assert (caught.value.kind, caught.value.status) == ("invalid", 400)
    assert "multiple of 64" in caught.value.message
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, closed_port_url()).submit(request())
    assert caught.value.kind == "unavailable"


async def test_a_task_failing_after_acceptance_is_failed(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    runware = provider(http, sandbox.url, "fail_after_queued=1")
    submitted = await runware.submit(request(n=1))
    running, failed = await polled(runware, submitted, 2)
    assert running.status == "running"
    assert failed.status == "failed" and failed.outputs == ()
    assert failed.error is not None and failed.error.kind == "failed"
    assert "inferenceError" in failed.error.message
