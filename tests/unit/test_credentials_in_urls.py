"""Credentials inside URLs (`MLFLOW_TRACKING_URI=http://user:password@host:5000`) are used, and
never shown: not in exception texts (which become dead letters), logs, or `mlflow-gate status`.

The settings take user:password@ out of the tracking URI into the basic-auth settings, so that
the URL every part of the gate shows and logs holds none; whatever URL is shown anyway goes
through shared.urls.redacted.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import threading
from collections.abc import Iterator

import pytest
from harness import LOOPBACK, free_port

from cli.demo import _credentials
from cli.status import gather_status
from shared.errors import ConfigError, MlflowUnavailable
from shared.settings import Settings
from shared.urls import redacted, scrubbed, split_credentials
from worker.registries import open_source
from worker.rest import RestClient, Service

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://gate:s3cret-Pa55@mlflow:5000", "http://gate:***@mlflow:5000"),
        ("https://s3cret-Pa55@mlflow.example/api", "https://***@mlflow.example/api"),
        ("redis://:s3cret-Pa55@redis:6379/0", "redis://:***@redis:6379/0"),
        ("http://gate:s3cret@Pa55@mlflow:5000/x?y=z@w", "http://gate:***@mlflow:5000/x?y=z@w"),
        ("http://gate:s3cret-Pa55@[::1]:5000", "http://gate:***@[::1]:5000"),
        ("http://gate:s3cret-Pa55@mlflow:notaport", "http://gate:***@mlflow:notaport"),
        ("http://gate:s3cret%40Pa55@mlflow", "http://gate:***@mlflow"),
        ("http://mlflow:5000/path@x", "http://mlflow:5000/path@x"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_a_redacted_url_keeps_everything_but_the_secret(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_scrubbed_text_hides_the_credentials_of_every_url_in_it() -> None:
    text = (
        "Error 111 connecting to redis://:s3cret-Pa55@redis:6379/0; "
        "MLflow at http://gate:s3cret-Pa55@mlflow:5000 (retrying); see https://docs.example/x"
    )
    assert scrubbed(text) == (
        "Error 111 connecting to redis://:***@redis:6379/0; "
        "MLflow at http://gate:***@mlflow:5000 (retrying); see https://docs.example/x"
    )


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://gate:s3cret@mlflow:5000/", ("http://mlflow:5000/", "gate", "s3cret")),
        ("http://gate:p%40ss%3Aw@mlflow", ("http://mlflow", "gate", "p@ss:w")),
        ("http://gate:pa@ss@mlflow", ("http://mlflow", "gate", "pa@ss")),
        ("http://token@mlflow", ("http://mlflow", "token", None)),
        ("http://mlflow:5000", ("http://mlflow:5000", None, None)),
    ],
)
def test_split_credentials_decodes_them_as_an_http_client_does(
    url: str, parts: tuple[str, str | None, str | None]
) -> None:
    assert split_credentials(url) == parts


# --- the settings -------------------------------------------------------------------------------


def test_credentials_in_the_tracking_uri_become_basic_auth_and_leave_the_url() -> None:
    settings = Settings.from_env({"MLFLOW_TRACKING_URI": f"http://gate:{SECRET}@mlflow:5000/"})
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert (settings.mlflow_username, settings.mlflow_password) == ("gate", SECRET)
    assert SECRET not in repr(settings)


def test_the_credential_variables_come_before_those_in_the_url() -> None:
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": f"http://old:{SECRET}@mlflow:5000",
            "MLFLOW_TRACKING_USERNAME": "gate",
            "MLFLOW_TRACKING_PASSWORD": "from-the-variable",
        }
    )
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert (settings.mlflow_username, settings.mlflow_password) == ("gate", "from-the-variable")


@pytest.mark.parametrize("uri", [f"http://{SECRET}@mlflow:5000", f"http://:{SECRET}@mlflow"])
def test_half_a_credential_in_the_url_is_refused_without_showing_it(uri: str) -> None:
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME") as caught:
        Settings.from_env({"MLFLOW_TRACKING_URI": uri})
    assert SECRET not in str(caught.value)


def test_a_tracking_uri_of_another_scheme_is_refused_without_showing_its_password() -> None:
    with pytest.raises(ConfigError, match="is not an http") as caught:
        Settings.from_env({"MLFLOW_TRACKING_URI": f"htp://gate:{SECRET}@mlflow:5000"})
    assert SECRET not in str(caught.value)


def test_no_secret_setting_shows_in_the_settings_repr() -> None:
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_TOKEN": SECRET + "-token",
            "MLFLOW_TRACKING_PASSWORD": SECRET + "-password",
            "MLFLOW_TRACKING_USERNAME": "gate",
            "GATE_REDIS_URL": f"redis://:{SECRET}-redis@redis:6379/0",
            "GATE_WEBHOOK_SECRET": SECRET + "-webhook",
            "GATE_FLOWER_PASSWORD": SECRET + "-flower",
            "GATE_ADMIN_TOKEN": SECRET + "-admin",
            "GATE_DATABRICKS_HOST": "https://adb-1.azuredatabricks.net",
            "GATE_DATABRICKS_TOKEN": SECRET + "-dbx",
            "GATE_DATABRICKS_WEBHOOK_SECRET": SECRET + "-dbx-hook",
            "GATE_DATABRICKS_WEBHOOK_AUTHORIZATION": SECRET + "-dbx-auth",
        }
    )
    assert SECRET not in repr(settings)


# --- what is sent, and what is shown ------------------------------------------------------------


class Recorder:
    """A real HTTP server on loopback answering MLflow's /health, recording what it was sent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.seen.append({"line": self.requestline, **dict(self.headers.items())})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_the_urls_credentials_are_sent_as_basic_auth(recorder: Recorder) -> None:
    uri = f"http://gate:{SECRET}@{LOOPBACK}:{recorder.port}"
    registry = open_source(Settings.from_env({"MLFLOW_TRACKING_URI": uri}))
    assert registry.healthy()
    (request,) = recorder.seen
    expected = base64.b64encode(f"gate:{SECRET}".encode()).decode()
    assert request["Authorization"] == f"Basic {expected}"
    assert request["line"] == "GET /health HTTP/1.1"
    assert request["Host"] == f"{LOOPBACK}:{recorder.port}"


@pytest.mark.parametrize(
    "userinfo", [f"gate:{SECRET}", SECRET], ids=["user-and-password", "token-as-user"]
)
def test_an_unreachable_service_names_its_url_without_the_secret(
    userinfo: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a service whose URL holds a secret, at a port where nothing listens
    base = f"http://{userinfo}@{LOOPBACK}:{free_port()}"
    client = RestClient(Service(name="MLflow", base_url=base, timeout=1.0))
    # When a call fails (retried, then given up)
    with caplog.at_level(logging.DEBUG), pytest.raises(MlflowUnavailable) as caught:
        client.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": "r1"})
    # Then the error names the service's URL, and neither it nor any log line holds the secret
    text = str(caught.value)
    assert f"{LOOPBACK}:" in text and "did not answer GET /api/2.0/mlflow/runs/get" in text
    assert SECRET not in text and SECRET not in repr(caught.value)
    assert caplog.records, "the retries are logged"
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_status_shows_no_password_of_redis_or_mlflow() -> None:
    settings = Settings.from_env(
        {
            "MLFLOW_TRACKING_URI": f"http://gate:{SECRET}@{LOOPBACK}:{free_port()}",
            "GATE_REDIS_URL": f"redis://:{SECRET}@{LOOPBACK}:{free_port()}/0",
            "GATE_MLFLOW_TIMEOUT_SECONDS": "1",
        }
    )
    status = gather_status(settings)
    assert status["ok"] is False and status["redis"]["reachable"] is False
    assert status["redis"]["url"].startswith(f"redis://:***@{LOOPBACK}:")
    assert status["mlflow"]["url"].startswith(f"http://{LOOPBACK}:")
    assert SECRET not in json.dumps(status)


def test_the_demo_lends_mlflows_client_the_gates_credentials_for_its_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings.from_env({"MLFLOW_TRACKING_URI": f"http://gate:{SECRET}@mlflow:5000"})
    with _credentials(settings):
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "gate"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
        assert "MLFLOW_TRACKING_TOKEN" not in os.environ
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
