"""The access line the receiver and the console write per request (shared/webserver.py), and the
receiver's reading of request headers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from receiver.webhooks import headers_of
from shared import logs
from shared.logs import ACCESS_EVENT, ACCESS_NOTE
from shared.webserver import AccessLog


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    logs.configure("INFO", "json")
    out = io.StringIO()
    for handler in root.handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
    yield out
    root.handlers[:], root.level = saved, level


def gunicorn_logger(accesslog: str | None = "-") -> AccessLog:
    cfg = Config()
    cfg.set("accesslog", accesslog)
    return AccessLog(cfg)


def environ(**extra: object) -> dict[str, object]:
    return {
        "REMOTE_ADDR": "10.1.2.3",
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/webhooks/mlflow",
        "PATH_INFO": "/webhooks/mlflow",
        **extra,
    }


def test_an_access_line_names_the_request_the_answer_why_and_the_event(
    log_lines: io.StringIO,
) -> None:
    # Given a request the receiver answered, having noted its outcome and the event's fields
    fields = {"event_id": "d-1", "registry": "mlflow", "model": "fraud", "version": "3"}
    env = environ(**{ACCESS_NOTE: "accepted: model_version_tag.set queued", ACCESS_EVENT: fields})
    response = SimpleNamespace(status="202 ACCEPTED", sent=83)
    # When gunicorn logs its access
    gunicorn_logger().access(response, None, env, timedelta(microseconds=1500))
    # Then one JSON line says who, what, the answer, its size and time, why, and the event
    (line,) = [json.loads(text) for text in log_lines.getvalue().splitlines()]
    assert line["logger"] == "mlflow_gate.access"
    assert line["message"] == (
        '10.1.2.3 "POST /webhooks/mlflow" 202 83 B 1.5 ms '
        "'accepted: model_version_tag.set queued'"
    )
    assert {k: line[k] for k in fields} == fields


def test_an_access_line_without_a_note_is_the_request_alone(log_lines: io.StringIO) -> None:
    env = environ(RAW_URI="/healthz?x=1", REQUEST_METHOD="GET")
    gunicorn_logger().access(SimpleNamespace(status="200 OK", sent=16), None, env, timedelta())
    (line,) = [json.loads(text) for text in log_lines.getvalue().splitlines()]
    assert line["message"] == '10.1.2.3 "GET /healthz?x=1" 200 16 B 0.0 ms'
    assert "event_id" not in line


def test_a_long_or_hostile_note_is_cut_and_quoted(log_lines: io.StringIO) -> None:
    # A note can carry text from the request (a field's value in a 400): it stays on one line
    note = "bad_request: field 'name' is " + "x\n" * 500
    env = environ(**{ACCESS_NOTE: note})
    gunicorn_logger().access(SimpleNamespace(status="400", sent=10), None, env, timedelta())
    (text,) = log_lines.getvalue().splitlines()
    message = json.loads(text)["message"]
    assert "\n" not in message
    assert "x\\n" * 100 in message  # quoted, not cut into lines
    assert len(message) < 60 + 2 * 300  # the note's first 300 characters, escaped


def test_no_access_line_without_an_access_log_or_below_info(log_lines: io.StringIO) -> None:
    response = SimpleNamespace(status="202", sent=1)
    gunicorn_logger(accesslog=None).access(response, None, environ(), timedelta())
    logging.getLogger().setLevel("WARNING")
    gunicorn_logger().access(response, None, environ(), timedelta())
    assert log_lines.getvalue() == ""


def test_request_headers_are_read_from_the_environ_by_lowercase_name() -> None:
    env = {
        "HTTP_X_MLFLOW_SIGNATURE": "v1,abc",
        "HTTP_X_MLFLOW_DELIVERY_ID": "d-1",
        "HTTP_AUTHORIZATION": "Bearer t",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": object(),
    }
    assert headers_of(env) == {
        "x-mlflow-signature": "v1,abc",
        "x-mlflow-delivery-id": "d-1",
        "authorization": "Bearer t",
    }
