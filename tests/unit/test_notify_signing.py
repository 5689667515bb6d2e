"""shared.notify.standard_webhooks: the specification's own test vector, and verification that
refuses what it must."""

from __future__ import annotations

import base64

import pytest

from shared.errors import ConfigError, SignatureError
from shared.notify import standard_webhooks as sw

# From the Standard Webhooks reference implementation's tests: standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signing_matches_the_specification_vector() -> None:
    assert sw.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def spec_headers(**changes: str) -> dict[str, str]:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }
    return {**headers, **changes}


def test_the_specification_vector_verifies_within_the_tolerance() -> None:
    sw.verify(SPEC_SECRET, SPEC_BODY, spec_headers(), now=SPEC_TIMESTAMP + 299)
    upper = {k.title(): v for k, v in spec_headers().items()}  # header names in any case
    sw.verify(SPEC_SECRET, SPEC_BODY, upper, now=SPEC_TIMESTAMP - 299)


def test_a_tampered_body_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        sw.verify(SPEC_SECRET, b'{"test": 2432232315}', spec_headers(), now=SPEC_TIMESTAMP)


def test_a_tampered_id_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        sw.verify(SPEC_SECRET, SPEC_BODY, spec_headers(**{"webhook-id": "msg_other"}),
                  now=SPEC_TIMESTAMP)  # fmt: skip


@pytest.mark.parametrize("offset", [-301, 301])
def test_a_timestamp_out_of_the_window_is_refused(offset: int) -> None:
    with pytest.raises(SignatureError, match="off this server's clock"):
        sw.verify(SPEC_SECRET, SPEC_BODY, spec_headers(), now=SPEC_TIMESTAMP + offset)


def test_a_signature_made_with_another_secret_is_refused() -> None:
    other = "whsec_" + base64.b64encode(b"another key of thirty-two bytes!").decode()
    with pytest.raises(SignatureError):
        sw.verify(other, SPEC_BODY, spec_headers(), now=SPEC_TIMESTAMP)


def test_one_matching_signature_among_several_suffices() -> None:
    rotated = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc " + SPEC_SIGNATURE
    headers = spec_headers(**{"webhook-signature": rotated})
    sw.verify(SPEC_SECRET, SPEC_BODY, headers, now=SPEC_TIMESTAMP)
    wrong_only = spec_headers(**{"webhook-signature": "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAF="})
    with pytest.raises(SignatureError):
        sw.verify(SPEC_SECRET, SPEC_BODY, wrong_only, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(missing: str) -> None:
    headers = spec_headers()
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        sw.verify(SPEC_SECRET, SPEC_BODY, headers, now=SPEC_TIMESTAMP)


def test_a_timestamp_that_is_no_number_is_refused() -> None:
    with pytest.raises(SignatureError, match="not a Unix timestamp"):
        sw.verify(SPEC_SECRET, SPEC_BODY, spec_headers(**{"webhook-timestamp": "1.5e9"}),
                  now=SPEC_TIMESTAMP)  # fmt: skip


def test_headers_carry_id_timestamp_and_signature() -> None:
    made = sw.headers(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert made == spec_headers()


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
        ("whsec_", "not base64"),
        ("whsec_not base64!", "not base64"),
    ],
)
def test_a_bad_secret_is_a_configuration_error_naming_the_variable(
    secret: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        sw.key_of(secret, "CI_WEBHOOK_SECRET")
    assert "CI_WEBHOOK_SECRET" in str(caught.value)
    assert "secrets.token_bytes" in str(caught.value)  # and how to make a good one
    if len(secret) > len("whsec_"):
        assert secret not in str(caught.value)  # the value itself is never shown


def test_an_unpadded_secret_is_accepted() -> None:
    key = base64.b64encode(b"0123456789abcdefghijk").decode().rstrip("=")
    assert sw.key_of("whsec_" + key) == b"0123456789abcdefghijk"
