"""Standard Webhooks signatures (https://www.standardwebhooks.com):

    webhook-id: msg_...            the same on every attempt of one delivery
    webhook-timestamp: 1614265330  Unix seconds of this attempt
    webhook-signature: v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>

The key is the base64 part of a `whsec_...` secret. Several space-separated signatures may be
sent (during a secret rotation); one matching suffices.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from shared.errors import ConfigError, SignatureError

PREFIX = "whsec_"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
VERSION = "v1"
TOLERANCE_SECONDS = 300

MAKE_ONE = (
    'make one with: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def key_of(secret: str, variable: str = "the secret") -> bytes:
    """The HMAC key of a `whsec_` secret; ConfigError naming `variable` (never the value)."""
    if not secret.startswith(PREFIX):
        raise ConfigError(
            f"{variable} does not start with 'whsec_': it must hold a Standard Webhooks secret, "
            f"whsec_ followed by base64; {MAKE_ONE}, and give the receiver the same value"
        )
    rest = secret[len(PREFIX) :].strip()
    try:
        key = base64.b64decode(rest + "=" * (-len(rest) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError(
            f"{variable}: what follows 'whsec_' is not base64 (or is empty); {MAKE_ONE}"
        )
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: "v1,<base64>"."""
    return signature(key_of(secret), msg_id, timestamp, body)


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one attempt."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    body: bytes,
    given: Mapping[str, str],
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless `given` (the request's headers, any case) signs `body` with
    `secret`, within `tolerance` seconds of `now` (default: the clock)."""
    lowered = {name.lower(): value for name, value in given.items()}
    msg_id = lowered.get(ID_HEADER)
    timestamp = lowered.get(TIMESTAMP_HEADER)
    signatures = lowered.get(SIGNATURE_HEADER)
    for name, value in ((ID_HEADER, msg_id), (TIMESTAMP_HEADER, timestamp),
                        (SIGNATURE_HEADER, signatures)):  # fmt: skip
        if not value:
            raise SignatureError(f"missing {name} header")
    assert msg_id and timestamp and signatures  # for mypy: checked just above
    if len(timestamp) > 12 or not timestamp.isascii() or not timestamp.isdigit():
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix timestamp in seconds")
    sent_at = int(timestamp)
    clock = time.time() if now is None else now
    if abs(clock - sent_at) > tolerance:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {int(clock - sent_at)} s off this server's clock (more than "
            f"{tolerance} s): a replayed request, or a clock to synchronise"
        )
    expected = signature(key_of(secret), msg_id, sent_at, body).encode()
    if not any(hmac.compare_digest(expected, s.encode()) for s in signatures.split()):
        raise SignatureError(
            f"{SIGNATURE_HEADER} does not match: the secret differs, or the body was altered"
        )


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`sign` with the key already taken from its secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{VERSION},{base64.b64encode(digest).decode()}"
