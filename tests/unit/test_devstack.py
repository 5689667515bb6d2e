"""cli.devstack on real processes: a redis-server started and stopped, a stubborn process killed."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from cli.devstack import (
    LOOPBACK,
    ManagedProcess,
    flower_command,
    free_port,
    group_members,
    http_ok,
    mlflow_server_command,
    redis_answers,
    start_redis,
    wait_until,
)
from shared.errors import ConfigError

# Ignores SIGTERM, then starts a child that inherits that (an ignored signal stays ignored across
# exec), says so, and sleeps: only a SIGKILL of the whole group ends both.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ignoring", "SIGTERM", flush=True)  # not as it stands in the log's header
time.sleep(60)
"""


def test_redis_starts_on_a_free_port_answers_and_stops_with_its_group(tmp_path: Path) -> None:
    process, url = start_redis(tmp_path / "redis", port=free_port())
    try:
        assert redis_answers(url)
        with redis.Redis.from_url(url, decode_responses=True) as client:
            client.set("key", "value")
            assert client.get("key") == "value"
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        process.stop()

    assert process.popen.returncode is not None
    assert not process.group_alive() and group_members(process.pgid) == []
    assert not redis_answers(url)


def test_a_process_group_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", STUBBORN]
    with ManagedProcess.start(argv, os.environ, tmp_path / "stubborn.log") as process:
        wait_until(lambda: "ignoring SIGTERM" in process.log_tail(), 30, what="the handler")
        assert len(group_members(process.pgid) or []) == 2

        started = time.monotonic()
        process.stop(timeout=1)
        took = time.monotonic() - started

    assert 1 <= took < 5
    assert process.popen.returncode == -signal.SIGKILL
    assert not process.group_alive()


def test_free_port_prefers_the_given_port_while_it_is_free() -> None:
    port = free_port()
    assert free_port(port) == port
    with socket.socket() as taken:
        taken.bind((LOOPBACK, port))
        taken.listen()
        assert free_port(port) != port


def test_mlflow_may_send_webhooks_to_localhost_with_a_key_kept_across_restarts(
    tmp_path: Path,
) -> None:
    argv, env = mlflow_server_command(tmp_path, 5001, env={"MLFLOW_DISABLE_TELEMETRY": "false"})
    _, again = mlflow_server_command(tmp_path, 5001, env={})

    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in argv
    assert env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https"
    assert env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "false"  # the caller's choice stands
    assert again["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert (
        env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == again["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    )


def test_flower_enforces_its_login_without_it_on_the_command_line(tmp_path: Path) -> None:
    # Given Flower started as `mlflow-gate up` starts it, on a real Redis
    redis_process, url = start_redis(tmp_path / "redis", port=free_port())
    password = "flower-Pa55-word"
    port = free_port()
    argv, env = flower_command(url, port, ("admin", password), os.environ)
    flower = ManagedProcess.start(argv, env, tmp_path / "flower.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        flower.wait_ready(lambda: http_ok(f"{base}/healthcheck", ("admin", password)), 60, "flower")
        # Then its command line, which any user can read, holds neither the password nor the
        # broker URL
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode()
        assert password not in cmdline and url not in cmdline
        # And it still refuses whoever does not log in with it
        assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
        wrong = requests.get(f"{base}/api/workers", auth=("admin", "guess"), timeout=5)
        assert wrong.status_code == 401
        right = requests.get(f"{base}/api/workers", auth=("admin", password), timeout=5)
        assert right.status_code == 200
        assert "Broker: redis://" in flower.log_tail()
    finally:
        flower.stop()
        redis_process.stop()


def test_a_flower_login_that_flower_would_split_is_refused() -> None:
    # Flower reads FLOWER_BASIC_AUTH as a comma-separated list: "pa,ss" would let in "ss".
    for login in (("admin", "pa,ss"), ("ad,min", "pass"), ("ad:min", "pass")):
        with pytest.raises(ConfigError, match="GATE_FLOWER_PASSWORD"):
            flower_command("redis://127.0.0.1:1/0", 5555, login, {})
