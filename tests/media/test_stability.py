"""The Stability adapter against its fake over real HTTP: one synchronous multipart call, the
image back, refusals final, errors of the right kind."""

from __future__ import annotations

import httpx
import pytest

from tests.media.conftest import Sandbox, closed_port_url, decoded, fetch
from toolcallstore.media.base import MediaProviderError, MediaRequest
from toolcallstore.media.stability import StabilityProvider, aspect_ratio

pytestmark = pytest.mark.asyncio(loop_scope="module")


def provider(http: httpx.AsyncClient, base: str, spec: str = "", **kw: float) -> StabilityProvider:
    prefix = f"/fault/{spec}" if spec else ""
    return StabilityProvider(http, f"{base}{prefix}/stability/v2beta", "k", **kw)


def request(prompt: str = "a red fox in snow", **kw: object) -> MediaRequest:
    fields: dict[str, object] = {
        "kind": "image",
        "model": "core",
        "prompt": prompt,
        "width": 1344,
        "height": 768,
        "seed": 42,
        "client_ref": "att_1",
    }
    fields.update(kw)
    return MediaRequest(**fields)  # type: ignore[arg-type]


async def test_a_generation_answers_at_once_with_a_decodable_image(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    stability = provider(http, sandbox.url)
    submitted = await stability.submit(request())
    assert submitted.state is not None and submitted.state.status == "succeeded"
    assert await stability.poll(submitted) == submitted.state
    (output,) = submitted.state.outputs
    assert (output.content_type, output.width, output.height) == ("image/png", 1344, 768)
    image = decoded(await fetch(stability, output))
    assert image.size == (1344, 768)
    assert submitted.handle == {"seed": "42"}
    again = await stability.submit(request())
    assert again.state is not None and again.state.outputs[0].data == output.data
    assert (await sandbox.submissions("stability"))["total"] == 2


async def test_sd3_models_go_to_the_sd3_endpoint(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    submitted = await provider(http, sandbox.url).submit(request(model="sd3.5-medium"))
    assert submitted.state is not None and submitted.state.status == "succeeded"
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url).submit(request(model="sd3.9-imaginary"))
    assert (caught.value.kind, caught.value.status) == ("invalid", 400)
    assert "model: must be one of" in caught.value.message


async def test_sizes_map_to_the_nearest_aspect_ratio() -> None:
    assert aspect_ratio(1024, 1024) == "1:1"
    assert aspect_ratio(1920, 1080) == "16:9"
    assert aspect_ratio(768, 1152) == "2:3"


@pytest.mark.parametrize(
    ("spec", "kind", "status", "retry_after"),
    [("status=429,retry_after=3", "unavailable", 429, 3.0),
     ("status=503", "unavailable", 503, None),
     ("status=500", "unavailable", 500, None),
     ("status=403", "refused", 403, None),
     ("status=422", "invalid", 422, None)],
)  # fmt: skip
async def test_errors_before_generating_map_to_their_kind_and_nothing_is_generated(
    sandbox: Sandbox, http: httpx.AsyncClient, spec: str, kind: str, status: int,
    retry_after: float | None,
) -> None:  # fmt: skip
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, spec).submit(request())
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert caught.value.retry_after == retry_after
    assert (await sandbox.submissions("stability"))["total"] == 0


async def test_a_content_filtered_image_is_a_final_refusal(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    submitted = await provider(http, sandbox.url, "nsfw=1").submit(request())
    assert submitted.state is not None
    assert submitted.state.status == "failed" and submitted.state.outputs == ()
    assert submitted.state.error is not None and submitted.state.error.kind == "refused"


async def test_a_lost_answer_is_ambiguous_and_a_refused_connection_unavailable(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, "lose_answer=1").submit(request())
    assert caught.value.kind == "ambiguous"
    assert (await sandbox.submissions("stability"))["total"] == 1  # it did generate
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, "stall_ms=800", timeout_s=0.2).submit(request())
    assert caught.value.kind == "ambiguous"
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, closed_port_url()).submit(request())
    assert caught.value.kind == "unavailable"
    assert await provider(http, sandbox.url).lookup(request()) is None


async def test_bad_input_is_refused_before_sending(http: httpx.AsyncClient) -> None:
    stability = provider(http, closed_port_url())
    for bad in (request(n=2), request(kind="video", seconds=4.0)):
        with pytest.raises(MediaProviderError) as caught:
            await stability.submit(bad)
        assert caught.value.kind == "invalid"
