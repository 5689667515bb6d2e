"""shared.signing: MlflowVerifier signs as MLflow does, and verify() refuses anything off."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.webhooks.delivery import _generate_hmac_signature

from shared import signing
from shared.errors import ConfigError, SignatureError

SECRET = "whsec-unit-test"
DELIVERY_ID = "7f1c3a52-0d7e-4b8e-9a6f-3c2d1e0f9a8b"
NOW = 1_700_000_000
BODY = b'{"entity": "model_version_tag", "action": "set", "data": {"name": "m"}}'


def _sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    return signing.MlflowVerifier(secret).sign(delivery_id, timestamp, body)


def _mlflow_signs(secret: str, delivery_id: str, timestamp: str, body_text: str) -> str:
    return _generate_hmac_signature(secret, delivery_id, timestamp, body_text)


# --- sign() against MLflow's implementation (the oracle) ---------------------------------------


@pytest.mark.parametrize(
    "body_text",
    [
        "",
        '{"entity": "model_version_tag", "action": "set"}',
        '{"data": {"name": "modèle-für-prüfung", "value": "冠军"}}',
        "emoji 🚀 and a zero-width joiner \u200d and a BOM \ufeff",
    ],
    ids=["empty", "ascii", "non-ascii", "astral-and-specials"],
)
def test_sign_matches_mlflow_byte_for_byte(body_text: str) -> None:
    # Given a body as MLflow serialises it (a str, sent as UTF-8 bytes)
    timestamp = str(NOW)
    # When the gate signs the bytes and MLflow signs the str
    ours = _sign(SECRET, DELIVERY_ID, timestamp, body_text.encode("utf-8"))
    theirs = _mlflow_signs(SECRET, DELIVERY_ID, timestamp, body_text)
    # Then both signatures are identical
    assert ours == theirs


@settings(max_examples=200, deadline=None, database=None)
@given(
    secret=st.text(min_size=1),
    delivery_id=st.text(),
    timestamp=st.integers(min_value=0, max_value=2**40).map(str),
    body_text=st.text(),
)
def test_sign_matches_mlflow_for_any_input(
    secret: str, delivery_id: str, timestamp: str, body_text: str
) -> None:
    # Given any secret, delivery id, timestamp and (possibly non-ASCII) body
    # When both implementations sign it
    ours = _sign(secret, delivery_id, timestamp, body_text.encode("utf-8"))
    # Then they agree
    assert ours == _mlflow_signs(secret, delivery_id, timestamp, body_text)


def test_sign_matches_a_vector_computed_by_hand() -> None:
    # Given the signed content laid out as MLflow documents it: "<id>.<timestamp>.<body>"
    secret, delivery_id, timestamp = "s3cr3t", "abc-123", "1700000000"
    body = '{"x": "é"}'.encode()
    mac = hmac.new(
        b"s3cr3t", b"abc-123.1700000000." + '{"x": "é"}'.encode(), hashlib.sha256
    ).digest()
    expected = "v1," + base64.b64encode(mac).decode("ascii")
    # When the gate signs it
    signature = _sign(secret, delivery_id, timestamp, body)
    # Then it is the hand-computed value, in the "v1,<base64>" format
    assert signature == expected
    assert signature.startswith("v1,")
    assert len(base64.b64decode(signature[3:])) == 32


# --- verify() ----------------------------------------------------------------------------------


def _valid_signature(body: bytes = BODY, timestamp: int = NOW) -> str:
    return _mlflow_signs(SECRET, DELIVERY_ID, str(timestamp), body.decode("utf-8"))


def _verify(**overrides: object) -> None:
    """Verify a delivery made of the defaults and `overrides`; a header given as None is absent."""
    args: dict[str, object] = {
        "secret": SECRET,
        "delivery_id": DELIVERY_ID,
        "timestamp": str(NOW),
        "signature": _valid_signature(),
        "body": BODY,
        "now": float(NOW),
    }
    args.update(overrides)
    headers = {
        name: str(args[field])
        for field, name in (
            ("signature", signing.SIGNATURE_HEADER),
            ("delivery_id", signing.DELIVERY_ID_HEADER),
            ("timestamp", signing.TIMESTAMP_HEADER),
        )
        if args[field] is not None
    }
    now = float(args["now"])  # type: ignore[arg-type]
    verifier = signing.MlflowVerifier(str(args["secret"]), clock=lambda: now)
    verifier.verify(args["body"], headers)  # type: ignore[arg-type]


def test_verify_accepts_mlflows_signature() -> None:
    # Given a delivery signed by MLflow with our secret, just now
    # When it is verified, Then no error is raised
    _verify()


def test_verify_accepts_a_non_ascii_body() -> None:
    body = '{"data": {"name": "modèle", "value": "冠军"}}'.encode()
    _verify(body=body, signature=_valid_signature(body))


def test_verify_rejects_a_different_secret() -> None:
    # Given a delivery signed with another secret
    # When it is verified with ours, Then it is refused as not matching
    with pytest.raises(SignatureError, match="does not match"):
        _verify(secret="another-secret")


def test_verify_rejects_an_altered_body() -> None:
    # Given a body changed by one byte after signing
    altered = BODY.replace(b'"m"', b'"n"')
    assert altered != BODY
    with pytest.raises(SignatureError, match="does not match"):
        _verify(body=altered)


def test_verify_rejects_an_altered_delivery_id() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        _verify(delivery_id=DELIVERY_ID + "x")


@pytest.mark.parametrize(
    ("field", "header"),
    [
        ("signature", signing.SIGNATURE_HEADER),
        ("delivery_id", signing.DELIVERY_ID_HEADER),
        ("timestamp", signing.TIMESTAMP_HEADER),
    ],
)
@pytest.mark.parametrize("missing", [None, ""])
def test_verify_rejects_a_missing_header(field: str, header: str, missing: str | None) -> None:
    # Given a delivery with one of the three headers absent (or empty)
    # When it is verified, Then the error names that header
    with pytest.raises(SignatureError, match=f"missing {header}"):
        _verify(**{field: missing})


@pytest.mark.parametrize("timestamp", ["yesterday", "1700000000.5", "0x6553f100"])
def test_verify_rejects_a_non_numeric_timestamp(timestamp: str) -> None:
    with pytest.raises(SignatureError, match="not a Unix timestamp"):
        _verify(
            timestamp=timestamp,
            signature=_mlflow_signs(SECRET, DELIVERY_ID, timestamp, BODY.decode()),
        )


@pytest.mark.parametrize("offset", [-301, 301], ids=["301s-in-the-past", "301s-in-the-future"])
def test_verify_rejects_a_timestamp_outside_the_tolerance(offset: int) -> None:
    # Given a correctly signed delivery whose timestamp is 301 s off our clock
    sent_at = NOW + offset
    # When it is verified, Then it is refused as stale or from the future
    with pytest.raises(SignatureError, match="off this server's clock"):
        _verify(timestamp=str(sent_at), signature=_valid_signature(timestamp=sent_at))


@pytest.mark.parametrize("offset", [-299, 299, -300, 300])
def test_verify_accepts_a_timestamp_within_the_tolerance(offset: int) -> None:
    sent_at = NOW + offset
    _verify(timestamp=str(sent_at), signature=_valid_signature(timestamp=sent_at))


def test_verify_accepts_several_signatures_when_one_matches() -> None:
    # Given a header with an old-secret signature, then ours (secret rotation)
    old = _mlflow_signs("old-secret", DELIVERY_ID, str(NOW), BODY.decode())
    header = f"{old} {_valid_signature()}"
    # When it is verified, Then it passes
    _verify(signature=header)


def test_verify_rejects_several_signatures_when_none_matches() -> None:
    old = _mlflow_signs("old-secret", DELIVERY_ID, str(NOW), BODY.decode())
    other = _mlflow_signs("other-secret", DELIVERY_ID, str(NOW), BODY.decode())
    with pytest.raises(SignatureError, match="does not match"):
        _verify(signature=f"{old} {other}")


def test_verify_rejects_a_signature_without_the_version_prefix() -> None:
    bare = _valid_signature().removeprefix("v1,")
    with pytest.raises(SignatureError, match="does not match"):
        _verify(signature=bare)


def test_verify_rejects_an_absurdly_large_timestamp_as_a_signature_error() -> None:
    huge = "1" + "0" * 400
    with pytest.raises(SignatureError):
        _verify(timestamp=huge, signature=_mlflow_signs(SECRET, DELIVERY_ID, huge, BODY.decode()))


def test_header_names_are_case_insensitive() -> None:
    # Given the headers as a WSGI server may spell them (werkzeug title-cases them)
    headers = {
        "x-mlflow-signature": _valid_signature(),
        "X-MLFLOW-DELIVERY-ID": DELIVERY_ID,
        "X-Mlflow-Timestamp": str(NOW),
    }
    # When they are verified, Then they are found
    signing.MlflowVerifier(SECRET, clock=lambda: float(NOW)).verify(BODY, headers)


def _valid_headers() -> dict[str, str]:
    return {
        signing.SIGNATURE_HEADER: _valid_signature(),
        signing.DELIVERY_ID_HEADER: DELIVERY_ID,
        signing.TIMESTAMP_HEADER: str(NOW),
    }


def test_the_clock_is_read_at_each_verification() -> None:
    # Given a verifier whose clock moves on by more than the tolerance after the first delivery
    times = iter([float(NOW), float(NOW + 301)])
    verifier = signing.MlflowVerifier(SECRET, clock=lambda: next(times))
    verifier.verify(BODY, _valid_headers())
    # When the same delivery is verified again, Then it is refused as replayed
    with pytest.raises(SignatureError, match="off this server's clock"):
        verifier.verify(BODY, _valid_headers())


def test_the_tolerance_can_be_set() -> None:
    verifier = signing.MlflowVerifier(SECRET, tolerance=10, clock=lambda: float(NOW + 11))
    with pytest.raises(SignatureError, match=r"more than 10 s"):
        verifier.verify(BODY, _valid_headers())


@pytest.mark.parametrize("secret", ["", None])
def test_an_empty_secret_is_refused_when_the_verifier_is_built(secret: str | None) -> None:
    with pytest.raises(ConfigError, match="GATE_WEBHOOK_SECRET"):
        signing.MlflowVerifier(secret)  # type: ignore[arg-type]


# --- event_id_of() -----------------------------------------------------------------------------


def test_the_event_id_is_the_delivery_id() -> None:
    assert signing.event_id_of(BODY, {"x-mlflow-delivery-id": DELIVERY_ID}) == DELIVERY_ID


@pytest.mark.parametrize("headers", [{}, {signing.DELIVERY_ID_HEADER: ""}])
def test_without_a_delivery_id_the_event_id_is_a_hash_of_the_body(headers: dict[str, str]) -> None:
    assert signing.event_id_of(BODY, headers) == hashlib.sha256(BODY).hexdigest()
