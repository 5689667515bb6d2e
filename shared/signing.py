"""MLflow webhook signatures, exactly as `mlflow/webhooks/delivery.py` makes them.

X-MLflow-Signature: v1,<base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}"))>

Shaped like the Standard Webhooks libraries: a verifier built once with its secret, whose
`verify(body, headers)` raises SignatureError saying what is wrong, and whose `sign` mirrors it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from shared.errors import ConfigError, SignatureError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
VERSION = "v1"
TOLERANCE_SECONDS = 300


class MlflowVerifier:
    """Checks that a delivery was signed by MLflow with `secret`, within `tolerance` seconds of
    `clock()` (Unix time; injectable for tests)."""

    def __init__(
        self,
        secret: str,
        *,
        tolerance: int = TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ConfigError(
                "an empty MLflow webhook secret verifies nothing: set GATE_WEBHOOK_SECRET to the "
                "secret the webhook was registered with"
            )
        self._key = secret.encode()
        self.tolerance = tolerance
        self.clock = clock

    def sign(self, delivery_id: str, timestamp: str, body: bytes) -> str:
        signed = f"{delivery_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return f"{VERSION},{base64.b64encode(digest).decode()}"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise SignatureError unless the signature is MLflow's for this body, and recent."""
        given = {name.lower(): value for name, value in headers.items()}
        signature = given.get(SIGNATURE_HEADER.lower())
        delivery_id = given.get(DELIVERY_ID_HEADER.lower())
        timestamp = given.get(TIMESTAMP_HEADER.lower())
        if not signature:
            raise SignatureError(f"missing {SIGNATURE_HEADER} header: is the webhook's secret set?")
        if not delivery_id:
            raise SignatureError(f"missing {DELIVERY_ID_HEADER} header")
        if not timestamp:
            raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
        if len(timestamp) > 12 or not timestamp.isascii() or not timestamp.isdigit():
            raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix timestamp in seconds")
        now, sent_at = self.clock(), int(timestamp)
        if abs(now - sent_at) > self.tolerance:
            raise SignatureError(
                f"{TIMESTAMP_HEADER} is {int(now - sent_at)} s off this server's clock (more than "
                f"{self.tolerance} s): a replayed delivery, or a clock to synchronise"
            )
        expected = self.sign(delivery_id, timestamp, body).encode()
        # Standard Webhooks allows several space-separated signatures (during secret rotation).
        if not any(hmac.compare_digest(expected, c.encode()) for c in signature.split()):
            raise SignatureError(
                f"{SIGNATURE_HEADER} does not match: the webhook's secret differs from "
                "GATE_WEBHOOK_SECRET, or the body was altered"
            )


def event_id_of(body: bytes, headers: Mapping[str, str]) -> str:
    """MLflow's delivery id, which its retries resend; without one (unsigned mode), a hash of the
    body, so that a resend of the same body is still a duplicate."""
    wanted = DELIVERY_ID_HEADER.lower()
    delivery_id = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return delivery_id or hashlib.sha256(body).hexdigest()
