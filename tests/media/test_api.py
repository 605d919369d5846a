"""The generation API beyond the happy path: the same tool through /v1/quotes and
/v1/executions, visibility (mode), cancel, provider webhooks (verified hints), and publishing
(high risk: an approved quote)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path

import orjson

from tests.chat.helpers import live_server
from tests.media.helpers import (
    auth,
    finished,
    generate,
    media_key,
    media_models_file,
    price_micros,
    submissions,
)
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings

FAST = {"media_poll_max_seconds": 0.5}


async def test_media_image_through_quotes_and_executions(settings: Settings) -> None:
    async with live_server(settings.with_(**FAST)) as live:
        agent = await media_key(live.client, live.admin_key)
        params = {"prompt": "a red kite " + secrets.token_hex(4)}
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        q = await live.client.post("/v1/quotes", json={"tool": "media.image", "params": params},
                                   headers=headers)  # fmt: skip
        assert q.status_code == 200, q.text
        quote = q.json()
        assert quote["requires_approval"] is False
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        r = await live.client.post("/v1/executions", json={"quote_id": quote["id"]},
                                   headers=headers)  # fmt: skip
        assert r.status_code == 202, r.text
        listed = (await live.client.get("/v1/media/generations", headers=auth(agent))).json()
        [generation] = listed["data"]
        assert generation["execution_id"] == r.json()["id"]
        assert generation["model"] == "image-fast"  # the image kind's default lane
        done = await finished(live.client, agent, generation["id"])
        assert done["status"] == "succeeded"
        assert done["amount_usd"] == quote["price_usd"]
        execution = await live.client.get(f"/v1/executions/{done['execution_id']}",
                                          headers=auth(agent))  # fmt: skip
        assert execution.json()["receipt_id"] == done["receipt_id"]
        # A key bound to another project of the same tenant does not see it.
        project = await live.client.post(
            "/v1/projects",
            json={"name": "elsewhere"},
            headers={**live.auth(), "Idempotency-Key": secrets.token_hex(8)},
        )
        assert project.status_code == 200, project.text
        bound = await media_key(live.client, live.admin_key, project_id=project.json()["id"])
        other = await live.client.get(f"/v1/media/generations/{done['id']}",
                                      headers=auth(bound))  # fmt: skip
        assert other.status_code == 404
        listed = await live.client.get("/v1/media/generations", headers=auth(bound))
        assert listed.json()["data"] == []
        await live.balanced()


async def test_a_cancelled_generation_is_cancelled_at_the_provider_and_not_charged(
    settings: Settings, tmp_path: Path
) -> None:
    file = media_models_file(tmp_path, {"slow": ("replicate", "stall_ms=60000", "0.01")})
    async with live_server(settings.with_(models_file=str(file), **FAST)) as live:
        agent = await media_key(live.client, live.admin_key)
        r = await generate(live.client, agent, {"prompt": "slow", "model": "slow/sandbox-model"})
        gid = r.json()["id"]
        db = live.app.state.services.db
        for _ in range(200):  # until the provider accepted it
            if await db.fetch_val("SELECT state FROM media_attempts") == "submitted":
                break
            await asyncio.sleep(0.05)
        c = await live.client.post(f"/v1/media/generations/{gid}/cancel", headers=auth(agent))
        assert c.status_code == 200, c.text
        done = await finished(live.client, agent, gid)
        assert done["status"] == "cancelled"
        assert done["error"]["code"] == "generation_cancelled"
        assert done["amount_usd"] == "0.000000"
        receipt = await live.receipt(done["receipt_id"])
        assert [a["outcome"] for a in receipt["attempts"]] == ["cancelled"]
        again = await live.client.post(f"/v1/media/generations/{gid}/cancel", headers=auth(agent))
        assert again.status_code == 409
        await live.balanced()


def _signed(secret: str, body: bytes) -> dict[str, str]:
    key = base64.b64decode(secret.split("_", 1)[1])
    webhook_id, stamp = "msg_" + secrets.token_hex(6), str(int(time.time()))
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}  # fmt: skip


async def test_provider_webhooks_are_verified_hints(settings: Settings) -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    async with live_server(settings.with_(replicate_webhook_secret=secret)) as live:
        body = orjson.dumps({"id": "abc123", "status": "succeeded", "output": ["x"]})
        path = "/v1/provider-webhooks/replicate"
        forged = await live.client.post(
            path,
            content=body,
            headers=_signed(
                "whsec_" + base64.b64encode(b"another key, 24 bytes!!!").decode(), body
            ),
        )
        assert forged.status_code == 403, forged.text
        assert forged.json()["error"]["code"] == "invalid_signature"
        unsigned = await live.client.post(path, content=body)
        assert unsigned.status_code == 403
        good = await live.client.post(path, content=body, headers=_signed(secret, body))
        assert good.status_code == 200, good.text
        assert good.json() == {"received": True, "polling": False}  # no such request polled
        # fal does not sign: a hint only, and the body is never taken as a result.
        hint = await live.client.post(
            "/v1/provider-webhooks/fal", json={"request_id": "r-1", "status": "OK", "payload": {}}
        )
        assert hint.status_code == 200
        unknown = await live.client.post("/v1/provider-webhooks/nobody", json={"id": "x"})
        assert unknown.status_code == 404


async def test_publishing_needs_an_approved_quote(settings: Settings, tmp_path: Path) -> None:
    file = media_models_file(tmp_path, {"rep": ("replicate", None, "0.01")})
    async with live_server(settings.with_(models_file=str(file), **FAST)) as live:
        agent = await media_key(live.client, live.admin_key)
        human = await media_key(live.client, live.admin_key, scopes=["approvals:grant"])
        prompt = "publish me " + secrets.token_hex(4)
        r = await generate(live.client, agent, {"prompt": prompt, "model": "rep/sandbox-model"})
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded"
        assert done["amount_usd"] == micros_to_usd(price_micros("0.01"))
        path = f"/v1/media/generations/{done['id']}/publish"
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        refused = await live.client.post(path, json={}, headers=headers)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "approval_required"
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        approval = await live.client.post("/v1/approvals", json={"quote_id": error["quote_id"]},
                                          headers=headers)  # fmt: skip
        assert approval.status_code == 200, approval.text
        grant = await live.client.post(
            f"/v1/approvals/{approval.json()['id']}/grant",
            headers={**auth(human), "Idempotency-Key": secrets.token_hex(8)},
        )
        assert grant.status_code == 200, grant.text
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        published = await live.client.post(path, json={"quote_id": error["quote_id"],
                                                       "approval_id": approval.json()["id"]},
                                           headers=headers)  # fmt: skip
        assert published.status_code == 200, published.text
        [url] = published.json()["result"]["urls"]
        got = await live.client.get(url)
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        assert await submissions(live.client, "replicate", prompt) == 1
        await live.balanced()


async def test_generation_events_stream_to_the_end(settings: Settings, tmp_path: Path) -> None:
    file = media_models_file(tmp_path, {"rep": ("replicate", "polls=4", "0.01")})
    async with live_server(settings.with_(models_file=str(file), **FAST)) as live:
        agent = await media_key(live.client, live.admin_key)
        r = await generate(live.client, agent, {"prompt": "sse", "model": "rep/sandbox-model"})
        gid = r.json()["id"]
        names: list[str] = []
        last: dict[str, object] = {}
        async with live.client.stream("GET", f"/v1/media/generations/{gid}/events",
                                      headers=auth(agent), timeout=60) as stream:  # fmt: skip
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    names.append(line.removeprefix("event: "))
                elif line.startswith("data: "):
                    last = orjson.loads(line.removeprefix("data: "))
        assert names[0] in ("queued", "running") and names[-1] == "succeeded", names
        assert "running" in names  # the provider reported progress on the way
        assert last["receipt_id"] and len(last["assets"]) == 1  # type: ignore[arg-type]
        got = await live.client.get(last["assets"][0]["url"])  # type: ignore[index]
        assert got.status_code == 200


async def test_a_video_with_its_approval_runs(settings: Settings) -> None:
    async with live_server(settings.with_(**FAST)) as live:
        agent = await media_key(live.client, live.admin_key)
        human = await media_key(live.client, live.admin_key, scopes=["approvals:grant"])
        prompt = "a wave breaking " + secrets.token_hex(4)
        refused = await generate(live.client, agent, {"prompt": prompt, "kind": "video",
                                                      "seconds": 3})  # fmt: skip
        assert refused.status_code == 403
        quote_id = refused.json()["error"]["quote_id"]
        headers = {**auth(agent), "Idempotency-Key": secrets.token_hex(8)}
        approval = await live.client.post("/v1/approvals", json={"quote_id": quote_id},
                                          headers=headers)  # fmt: skip
        headers = {**auth(human), "Idempotency-Key": secrets.token_hex(8)}
        grant = await live.client.post(f"/v1/approvals/{approval.json()['id']}/grant",
                                       headers=headers)  # fmt: skip
        assert grant.status_code == 200, grant.text
        r = await generate(
            live.client, agent, {"quote_id": quote_id, "approval_id": approval.json()["id"]}
        )
        assert r.status_code == 202, r.text
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["model"] == "video-standard" and done["seconds"] == 3
        [asset] = done["assets"]
        got = await live.client.get(asset["url"])
        assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
        assert got.content[4:8] == b"ftyp"
        await live.balanced()
