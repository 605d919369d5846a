"""Signing secrets and the two signature headers every delivery carries.

`ToolCall-Signature: t=<unix>,v1=<hex>` is Stripe's scheme: HMAC-SHA256 keyed with the whole
`whsec_...` string (UTF-8) over `"<t>.<body>"`. `webhook-signature` is Standard Webhooks': the
base64 after `whsec_` decoded as the key, over `"<webhook-id>.<t>.<body>"`, base64 out. During a
rotation's overlap each header carries one signature per live secret, newest first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
USER_AGENT = "ToolCallStore-Webhooks/1.0"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def toolcall_signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(
    message_id: str, body: bytes, secrets: list[str], timestamp: int
) -> dict[str, str]:
    """Every header of a delivery: content type, both signatures, the Standard Webhooks ids."""
    v1 = ",".join(f"v1={toolcall_signature(s, timestamp, body)}" for s in secrets)
    standard = " ".join(f"v1,{standard_signature(s, message_id, timestamp, body)}" for s in secrets)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "toolcall-signature": f"t={timestamp},{v1}",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
    }
