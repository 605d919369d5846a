"""The Gemini image adapter against its fake over real HTTP: generateContent with the image
inline, blocked prompts final, Google errors by kind."""

from __future__ import annotations

import httpx
import pytest

from tests.media.conftest import Sandbox, decoded, fetch
from toolcallstore.media.base import MediaProviderError, MediaRequest
from toolcallstore.media.gemini_image import GeminiImageProvider

pytestmark = pytest.mark.asyncio(loop_scope="module")


def provider(http: httpx.AsyncClient, base: str, spec: str = "") -> GeminiImageProvider:
    prefix = f"/fault/{spec}" if spec else ""
    return GeminiImageProvider(http, f"{base}{prefix}/gemini-image/v1beta", "k")


def request(prompt: str = "a nano banana dish", **kw: object) -> MediaRequest:
    fields: dict[str, object] = {"kind": "image", "model": "gemini-2.5-flash-image",
                                 "prompt": prompt, "width": 1920, "height": 1080, "seed": 3,
                                 "client_ref": "att_g"}  # fmt: skip
    fields.update(kw)
    return MediaRequest(**fields)  # type: ignore[arg-type]


async def test_the_image_comes_back_inline_and_decodes(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    gemini = provider(http, sandbox.url)
    submitted = await gemini.submit(request())
    assert submitted.state is not None and submitted.state.status == "succeeded"
    (output,) = submitted.state.outputs
    assert (output.content_type, output.width, output.height) == ("image/png", 1344, 768)
    assert decoded(await fetch(gemini, output)).size == (1344, 768)
    assert await gemini.poll(submitted) == submitted.state
    details = submitted.handle["usage"]["candidatesTokensDetails"]
    assert {"modality": "IMAGE", "tokenCount": 1290} in details
    again = await gemini.submit(request())
    assert again.state is not None and again.state.outputs[0].data == output.data
    assert (await sandbox.submissions("gemini-image"))["total"] == 2


async def test_a_blocked_prompt_is_a_final_refusal(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    submitted = await provider(http, sandbox.url, "nsfw=1").submit(request())
    assert submitted.state is not None and submitted.state.status == "failed"
    assert submitted.state.error is not None and submitted.state.error.kind == "refused"
    assert "PROHIBITED_CONTENT" in submitted.state.error.message


async def test_a_model_that_answers_without_an_image_fails(
    sandbox: Sandbox, http: httpx.AsyncClient
) -> None:
    submitted = await provider(http, sandbox.url).submit(request(model="gemini-2.5-flash"))
    assert submitted.state is not None and submitted.state.status == "failed"
    assert submitted.state.error is not None and submitted.state.error.kind == "failed"


@pytest.mark.parametrize(
    ("spec", "kind", "status", "retry_after"),
    [("status=429,retry_after=2", "unavailable", 429, 2.0),
     ("status=503", "unavailable", 503, None),
     ("fail_after_queued=1", "unavailable", 500, None),
     ("status=403", "unavailable", 403, None),
     ("status=400", "invalid", 400, None)],
)  # fmt: skip
async def test_google_errors_map_to_their_kind(
    sandbox: Sandbox, http: httpx.AsyncClient, spec: str, kind: str, status: int,
    retry_after: float | None,
) -> None:  # fmt: skip
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, spec).submit(request())
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert caught.value.retry_after == retry_after
    assert (await sandbox.submissions("gemini-image"))["total"] == 0


async def test_a_lost_answer_is_ambiguous(sandbox: Sandbox, http: httpx.AsyncClient) -> None:
    with pytest.raises(MediaProviderError) as caught:
        await provider(http, sandbox.url, "lose_answer=1").submit(request())
    assert caught.value.kind == "ambiguous"
    assert (await sandbox.submissions("gemini-image"))["total"] == 1
