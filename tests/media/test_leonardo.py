"""The Leonardo adapter against its fake over real HTTP: a generation id, polls to COMPLETE,
images downloaded from the URLs it gives, the credits it billed as the cost, errors by kind."""

from __future__ import annotations

import httpx
import pytest

from tests.media.conftest import Sandbox, decoded, fetch
from toolcallstore.media.base import MediaProviderError, MediaRequest, Polled, Submitted
from toolcallstore.media.leonardo import LeonardoProvider

pytestmark = pytest.mark.asyncio(loop_scope="module")
CREDIT_MICROS = 2600


def provider(http: httpx.AsyncClient, base: str, spec: str = "") -> LeonardoProvider:
    prefix = f"/fault/{spec}" if spec else ""
    url = f"{base}{prefix}/leonardo/api/rest/v1"
    return LeonardoProvider(http, url, "k", credit_micros=CREDIT_MICROS)


def request(prompt: str = "a koi pond, ink wash", **kw: object) -> MediaRequest:
    fields: dict[str, object] = {"kind": "image", "model": "b24e16ff-06e3-43eb-8d33-4416c2d75876",
                                 "prompt": prompt, "width": 1024, "height": 768, "n": 2,
                                 "seed": 5, "client_ref": "att_1"}  # fmt: skip
    fields.update(kw)
    return MediaRequest(**fields)  # type: ignore[arg-type]


async def until_over(leonardo: LeonardoProvider, submitted: Submitted) -> list[Polled]:
    seen = [await leonardo.poll(submitted)]
    while seen[-1].status not in ("succeeded", "failed", "cancelled"):
        assert len(seen) < 10, "the generation never finished"
        seen.append(await leonardo.poll(submitted))
    return seen


async def test_a_generation_is_polled_to_complete_and_its_images_decode(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    leonardo = provider(http, sandbox.url)
    submitted = await leonardo.submit(request())
    assert submitted.handle == {"generation_id": submitted.request_id, "api_credit_cost": 12}
    # What a job stored is enough: a new adapter (after a restart) polls the same generation.
    resumed = Submitted(submitted.request_id, dict(submitted.handle))
    seen = await until_over(provider(http, sandbox.url), resumed)
    assert [p.status for p in seen] == ["running", "succeeded"]
    done = seen[-1]
    assert done.cost_micros == 12 * CREDIT_MICROS
    assert len(done.outputs) == 2
    images = [decoded(await fetch(leonardo, output)) for output in done.outputs]
    assert [image.size for image in images] == [(1024, 768), (1024, 768)]
    assert images[0].tobytes() != images[1].tobytes()  # one seed each
    assert (await sandbox.submissions("leonardo"))["total"] == 1
    assert not leonardo.can_cancel and await leonardo.cancel(submitted) is False


async def test_a_generation_failing_after_acceptance_is_failed_and_still_costs(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    leonardo = provider(http, sandbox.url, "fail_after_queued=1,polls=3")
    submitted = await leonardo.submit(request(n=1))
    seen = await until_over(leonardo, submitted)
    assert [p.status for p in seen] == ["running", "running", "failed"]
    assert seen[-1].error is not None and seen[-1].error.kind == "failed"
    assert seen[-1].cost_micros == 6 * CREDIT_MICROS


@pytest.mark.parametrize(
    ("spec", "kind", "status", "retry_after"),
    [("status=429,retry_after=7", "unavailable", 429, 7.0),
     ("status=500", "unavailable", 500, None),
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
    assert (await sandbox.submissions("leonardo"))["total"] == 0


async def test_input_leonardo_rejects_is_invalid(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url).submit(request(width=1020))
    assert (caught.value.kind, caught.value.status) == ("invalid", 400)
    assert "multiple of 8" in caught.value.message


async def test_a_lost_answer_is_ambiguous_and_cannot_be_looked_up(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    leonardo = provider(http, sandbox.url, "lose_answer=1")
    with pytest.raises(MediaProviderError) as caught:
        await leonardo.submit(request())
    assert caught.value.kind == "ambiguous"
    assert (await sandbox.submissions("leonardo"))["total"] == 1
    assert not leonardo.can_lookup and await leonardo.lookup(request()) is None


async def test_poll_errors_unknown_ids_and_cut_downloads(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    leonardo = provider(http, sandbox.url, "poll_status=503,polls=1,cut_download=100")
    submitted = await leonardo.submit(request(n=1))
    with pytest.raises(MediaProviderError) as caught:
        await leonardo.poll(submitted)
    assert (caught.value.kind, caught.value.status) == ("unavailable", 503)
    done = await leonardo.poll(submitted)
    assert done.status == "succeeded"
    with pytest.raises(MediaProviderError) as caught:
        await fetch(leonardo, done.outputs[0])
    assert caught.value.kind == "unavailable"
    lost = await leonardo.poll(Submitted("f3e95b9a-0000-4000-8000-000000000000"))
    assert lost.status == "failed" and lost.error is not None
