"""MLflow webhook signatures, exactly as `mlflow/webhooks/delivery.py` makes them.

X-MLflow-Signature: v1,<base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}"))>
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from shared.errors import SignatureError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
VERSION = "v1"
TOLERANCE_SECONDS = 300


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    *,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raise SignatureError unless the signature is MLflow's for this body, and recent."""
    if not signature:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header: is the webhook's secret set?")
    if not delivery_id:
        raise SignatureError(f"missing {DELIVERY_ID_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    if len(timestamp) > 12 or not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix timestamp in seconds")
    sent_at = int(timestamp)
    if abs(now - sent_at) > tolerance:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {int(now - sent_at)} s off this server's clock (more than "
            f"{tolerance} s): a replayed delivery, or a clock to synchronise"
        )
    expected = sign(secret, delivery_id, timestamp, body).encode()
    # Standard Webhooks allows several space-separated signatures (during secret rotation).
    candidates = signature.split()
    if not any(hmac.compare_digest(expected, c.encode()) for c in candidates):
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match: the webhook's secret differs from "
            "GATE_WEBHOOK_SECRET, or the body was altered"
        )
