"""Failover within a media lane under max_cost_usd (issue 14 item 5): a target that fails
before accepting hands over to the next that fits; a ceiling that fits only the first target
fails cleanly without starting the second; a content-policy refusal is final."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.chat.helpers import live_server
from tests.media.helpers import (
    finished,
    generate,
    media_key,
    media_models_file,
    price_micros,
    submissions,
)
from toolcallstore.money import micros_to_usd
from toolcallstore.settings import Settings


async def test_a_ceiling_that_fits_only_the_first_target_fails_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    file = media_models_file(
        tmp_path,
        {"down": ("fal", "status=500", "0.01"), "dear": ("replicate", None, "0.50")},
        {"fo": ["down", "dear"]},
    )
    async with live_server(settings.with_(models_file=str(file))) as live:
        agent = await media_key(live.client, live.admin_key)
        prompt = "ceiling " + secrets.token_hex(4)
        ceiling = micros_to_usd(price_micros("0.01"))
        r = await generate(
            live.client,
            agent,
            {"prompt": prompt, "model": "fo", "size": "512x512", "max_cost_usd": ceiling},
        )
        assert r.status_code == 202, r.text
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "all_providers_failed"
        assert done["amount_usd"] == "0.000000"
        receipt = await live.receipt(done["receipt_id"])
        assert receipt["amount_usd"] == "0.000000"
        outcomes = [(a["target"], a["outcome"]) for a in receipt["attempts"]]
        assert outcomes == [("down/sandbox-model", "unavailable")]
        # The dearer second target was never asked: its worst case did not fit the ceiling.
        assert await submissions(live.client, "replicate", prompt) == 0
        await live.balanced()


async def test_video_without_an_approval_is_refused_with_its_quote(
    settings: Settings, tmp_path: Path
) -> None:
    async with live_server(settings) as live:
        agent = await media_key(live.client, live.admin_key)
        body = {"prompt": "a cat surfing", "kind": "video"}
        r = await generate(live.client, agent, body)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "approval_required"
        assert error["quote_id"].startswith("q_")
        # Nor through the quote without its approval.
        r = await generate(live.client, agent, {"quote_id": error["quote_id"]})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "approval_required"
        db = live.app.state.services.db
        assert await db.fetch_val("SELECT count(*) FROM media_generations") == 0
        assert await db.fetch_val("SELECT count(*) FROM holds") == 0


@pytest.mark.parametrize(
    ("first", "fault"),
    [("fal", "status=500"), ("replicate", "status=429,retry_after=1")],
)
async def test_a_target_failing_before_accepting_hands_over_to_the_next(
    first: str, fault: str, settings: Settings, tmp_path: Path
) -> None:
    second = "replicate" if first == "fal" else "fal"
    file = media_models_file(
        tmp_path, {"down": (first, fault, "0.01"), "up": (second, None, "0.02")},
        {"fo": ["down", "up"]},
    )  # fmt: skip
    async with live_server(settings.with_(models_file=str(file))) as live:
        agent = await media_key(live.client, live.admin_key)
        prompt = "failover " + secrets.token_hex(4)
        body = {"prompt": prompt, "model": "fo", "size": "512x512", "max_cost_usd": "0.10"}
        r = await generate(live.client, agent, body)
        assert r.status_code == 202, r.text
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["amount_usd"] == micros_to_usd(price_micros("0.02"))
        receipt = await live.receipt(done["receipt_id"])
        outcomes = [(a["target"], a["outcome"]) for a in receipt["attempts"]]
        assert outcomes == [("down/sandbox-model", "unavailable"),
                            ("up/sandbox-model", "succeeded")]  # fmt: skip
        assert receipt["amount_usd"] == micros_to_usd(price_micros("0.02"))
        assert await submissions(live.client, first, prompt) == 0  # refused before accepting
        assert await submissions(live.client, second, prompt) == 1
        await live.balanced()


async def test_a_content_policy_refusal_is_final(settings: Settings, tmp_path: Path) -> None:
    file = media_models_file(
        tmp_path, {"strict": ("fal", "nsfw=1", "0.01"), "lax": ("replicate", None, "0.01")},
        {"fo": ["strict", "lax"]},
    )  # fmt: skip
    async with live_server(settings.with_(models_file=str(file))) as live:
        agent = await media_key(live.client, live.admin_key)
        prompt = "refused " + secrets.token_hex(4)
        r = await generate(live.client, agent, {"prompt": prompt, "model": "fo"})
        assert r.status_code == 202, r.text
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "failed"
        assert done["error"]["code"] == "content_policy_violation"
        assert done["amount_usd"] == "0.000000"
        receipt = await live.receipt(done["receipt_id"])
        assert [a["outcome"] for a in receipt["attempts"]] == ["refused"]
        assert await submissions(live.client, "replicate", prompt) == 0  # no failover
        await live.balanced()


async def test_a_lost_submit_answer_is_looked_up_not_resubmitted(
    settings: Settings, tmp_path: Path
) -> None:
    """Replicate: the create's answer is cut; the prediction is found in its list and
    followed. fal (no lookup): the attempt is recorded as lost (possibly billed, our cost) and
    fal is not asked again; the next target makes it."""
    file = media_models_file(
        tmp_path, {"rep": ("replicate", "lose_answer=1", "0.01"),
                   "falx": ("fal", "lose_answer=1", "0.01"), "up": ("replicate", None, "0.02")},
        {"one": ["rep"], "two": ["falx", "up"]},
    )  # fmt: skip
    async with live_server(settings.with_(models_file=str(file))) as live:
        agent = await media_key(live.client, live.admin_key)
        prompt = "lost " + secrets.token_hex(4)
        r = await generate(live.client, agent, {"prompt": prompt, "model": "one", "seed": 3})
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        assert await submissions(live.client, "replicate", prompt) == 1
        assert done["amount_usd"] == micros_to_usd(price_micros("0.01"))

        prompt = "lost fal " + secrets.token_hex(4)
        r = await generate(live.client, agent, {"prompt": prompt, "model": "two"})
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        assert await submissions(live.client, "fal", prompt) == 1
        assert await submissions(live.client, "replicate", prompt) == 1
        receipt = await live.receipt(done["receipt_id"])
        assert [a["outcome"] for a in receipt["attempts"]] == ["lost", "succeeded"]
        # The tenant pays for the image it got; the lost attempt's worst case is our cost.
        assert done["amount_usd"] == micros_to_usd(price_micros("0.02"))
        assert receipt["attempts"][0]["provider_cost_usd"] == "0.010000"
        await live.balanced()


async def test_an_accepted_job_that_fails_hands_over_and_stays_on_the_receipt(
    settings: Settings, tmp_path: Path
) -> None:
    file = media_models_file(
        tmp_path, {"flaky": ("fal", "fail_after_queued=1", "0.01"),
                   "up": ("replicate", None, "0.01")},
        {"fo": ["flaky", "up"]},
    )  # fmt: skip
    async with live_server(
        settings.with_(models_file=str(file), media_poll_max_seconds=0.5)
    ) as live:
        agent = await media_key(live.client, live.admin_key)
        prompt = "flaky " + secrets.token_hex(4)
        r = await generate(live.client, agent, {"prompt": prompt, "model": "fo"})
        done = await finished(live.client, agent, r.json()["id"])
        assert done["status"] == "succeeded", done
        receipt = await live.receipt(done["receipt_id"])
        assert [a["outcome"] for a in receipt["attempts"]] == ["failed", "succeeded"]
        assert await submissions(live.client, "fal", prompt) == 1
        assert await submissions(live.client, "replicate", prompt) == 1
        assert done["amount_usd"] == micros_to_usd(price_micros("0.01"))
        await live.balanced()
