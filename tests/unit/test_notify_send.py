"""shared.notify.send against a real HTTP server on loopback: a signed POST that verifies, and
each kind of failure classified as transient (retry) or permanent (dead-letter)."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from harness import LOOPBACK, free_port

from shared.notices import Notice
from shared.notify import standard_webhooks
from shared.notify.errors import SinkRefused, SinkUnavailable
from shared.notify.outbox import deliveries
from shared.notify.send import send
from shared.notify.sinks import Endpoint, resolve
from shared.policy import PolicySet, Sink

SECRET = "whsec_" + base64.b64encode(b"thirty-two bytes of secret key!!").decode()
NOTICE = Notice(
    "decision.approved",
    "decision-7",
    datetime(2026, 11, 23, 13, 0, 35, tzinfo=timezone.utc),
    ("quality",),
    {"model": "fraud", "version": "7", "target": "champion", "outcome": "approved"},
)


@dataclass
class Receiver:
    """A real HTTP server answering `status` (after `delay` s); it records what it received."""

    status: int = 200
    delay: float = 0.0
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hook?token=t0ps3cret"


@pytest.fixture
def server() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.received.append((self.path, dict(self.headers.items()), body))
            time.sleep(state.delay)
            try:
                self.send_response(state.status)
                if 300 <= state.status < 400:
                    self.send_header("Location", "http://elsewhere.example.com/")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def webhook(url: str) -> tuple[Endpoint, Any]:
    sink = Sink("webhook", url, "HOOK_SECRET")
    delivery = deliveries(PolicySet((), notify=(sink,)), NOTICE)[0]
    return resolve(sink, {"HOOK_SECRET": SECRET}), delivery


def test_a_webhook_is_posted_signed_and_verifies(server: Receiver) -> None:
    endpoint, delivery = webhook(server.url)
    assert send(endpoint, delivery) == 200
    [(path, headers, body)] = server.received
    assert path == "/hook?token=t0ps3cret"
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["webhook-id"] == delivery.delivery_id
    assert lowered["content-type"] == "application/json"
    standard_webhooks.verify(SECRET, body, headers)
    assert json.loads(body) == delivery.body


def test_the_same_delivery_sent_twice_keeps_its_id(server: Receiver) -> None:
    endpoint, delivery = webhook(server.url)
    send(endpoint, delivery, now=time.time() - 5)
    send(endpoint, delivery)
    ids = [{k.lower(): v for k, v in h.items()}["webhook-id"] for _, h, _ in server.received]
    assert ids == [delivery.delivery_id] * 2


def test_slack_gets_its_block_kit_message(server: Receiver) -> None:
    sink = Sink("slack", "SLACK_URL")
    delivery = deliveries(PolicySet((), notify=(sink,)), NOTICE)[0]
    endpoint = resolve(sink, {"SLACK_URL": f"http://{LOOPBACK}:{server.port}/services/T/B/X"})
    assert send(endpoint, delivery) == 200
    [(path, headers, body)] = server.received
    message = json.loads(body)
    assert path == "/services/T/B/X"
    assert message["text"].startswith("mlflow-gate: Approved: fraud v7 -&gt; champion")
    assert message["blocks"][0]["text"]["text"] == "Approved: fraud v7 -> champion"
    assert "webhook-signature" not in {k.lower() for k in headers}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_5xx_and_429_are_transient(server: Receiver, status: int) -> None:
    server.status = status
    with pytest.raises(SinkUnavailable, match=f"answered {status}") as caught:
        send(*webhook(server.url))
    assert "t0ps3cret" not in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
def test_other_4xx_and_redirects_are_permanent_and_say_what_to_do(
    server: Receiver, status: int
) -> None:
    server.status = status
    endpoint, delivery = webhook(server.url)
    with pytest.raises(SinkRefused) as caught:
        send(endpoint, delivery)
    assert caught.value.status == status
    assert f"mlflow-gate dlq replay {delivery.delivery_id}" in str(caught.value)
    assert "t0ps3cret" not in str(caught.value)
    assert len(server.received) == 1  # a redirect is not followed


def test_a_refused_connection_is_transient_and_hides_the_url() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(SinkUnavailable, match="could not be reached") as caught:
        send(*webhook(f"http://{LOOPBACK}:{port}/hook?token=t0ps3cret"))
    assert "t0ps3cret" not in str(caught.value)


def test_a_sink_that_does_not_answer_in_time_is_transient(server: Receiver) -> None:
    server.delay = 1.0
    with pytest.raises(SinkUnavailable, match=r"did not answer within 0\.2 s"):
        send(*webhook(server.url), timeout=(1.0, 0.2))


def test_a_slack_url_never_appears_in_an_error() -> None:
    with socket.socket() as listening:
        listening.bind((LOOPBACK, 0))
        port = listening.getsockname()[1]  # bound, never listening: refuses connections
        sink = Sink("slack", "SLACK_URL")
        delivery = deliveries(PolicySet((), notify=(sink,)), NOTICE)[0]
        url = f"http://{LOOPBACK}:{port}/services/T/B/SECRETPART"
        with pytest.raises(SinkUnavailable) as caught:
            send(resolve(sink, {"SLACK_URL": url}), delivery)
    assert "SECRETPART" not in str(caught.value) and "$SLACK_URL" in str(caught.value)
