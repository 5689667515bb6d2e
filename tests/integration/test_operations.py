"""What operators use: `mlflow-gate up` (the whole stack, with the demo), `status`, `decisions`,
Prometheus metrics, structured logs, and the production docker-compose.yml."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from conftest import Stack, gate_command
from harness import free_port, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    # Only zombies left (reaped by init shortly) count as gone.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pid and stat[0] != "Z":
                return False
    return True


def test_up_starts_everything_runs_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    # Given no Redis at GATE_REDIS_URL and nothing else set up
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATE_", "MLFLOW_"))}
    env["GATE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["GATE_WORKER_METRICS_PORT"] = str(free_port())
    ports = [str(free_port()) for _ in range(5)]
    argv = [*gate_command(), "up", "--demo", "--data-dir", str(tmp_path / "data"),
            "--mlflow-port", ports[0], "--receiver-port", ports[1], "--flower-port", ports[2],
            "--redis-port", ports[3], "--console-port", ports[4]]  # fmt: skip
    out_path = tmp_path / "up.out"
    with out_path.open("wb") as out:
        up = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # When it runs the demo
        wait_until(
            lambda: "Running. Press Ctrl-C" in out_path.read_text() or up.poll() is not None,
            240,
            what="mlflow-gate up --demo",
        )
        text = out_path.read_text()
        # Then every service is listed with its URL, and the demo's outcomes with reasons
        assert up.poll() is None, text
        for name, port in (("mlflow", ports[0]), ("receiver", ports[1]), ("flower", ports[2]),
                           ("console", ports[4])):  # fmt: skip
            assert re.search(rf"{name}\s+http://127.0.0.1:{port}", text), text
        assert "APPROVED" in text and "REJECTED" in text
        assert "validation_accuracy is 0.72, below the minimum 0.9" in text
        flower = f"http://127.0.0.1:{ports[2]}"
        assert requests.get(flower, timeout=5).status_code == 401
        user, password = re.search(r"Flower login: (\S+) / (\S+)", text).groups()  # type: ignore[union-attr]
        assert requests.get(f"{flower}/healthcheck", auth=(user, password), timeout=5).ok
        # MLflow runs with accounts; its admin's login signs in to the console too.
        admin = re.search(r"MLflow and console login: admin / (\S+)", text).group(1)  # type: ignore[union-attr]
        mlflow = f"http://127.0.0.1:{ports[0]}"
        assert requests.get(f"{mlflow}/api/2.0/mlflow/users/current", timeout=5).status_code == 401
        console = requests.Session()
        signin = console.get(f"http://127.0.0.1:{ports[4]}/decisions", timeout=10)
        assert signin.url.endswith("/signin?next=/decisions"), signin.url
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', signin.text).group(1)  # type: ignore[union-attr]
        page = console.post(
            f"http://127.0.0.1:{ports[4]}/signin",
            data={"username": "admin", "password": admin, "csrf_token": csrf},
            timeout=10,
        )
        assert page.ok and "Signed in as" in page.text and "demo" in page.text, page.text[-2000:]
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
        assert len(pids) == 6
        # And no process it started has the Flower password on its command line (`ps` shows it
        # to every user of the machine)
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert password not in argv and admin not in argv, argv
        # When it gets Ctrl-C
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        # Then no process it started is left
        wait_until(lambda: all(_group_gone(pid) for pid in pids), 15, what="all groups gone")
        assert out_path.read_text().rstrip().endswith("All stopped.")
    finally:
        if up.poll() is None:
            up.kill()


def test_status_decisions_metrics_and_logs(stack: Stack) -> None:
    model = stack.new_model()
    mv = stack.new_version(model, {"validation_accuracy": 0.91})
    stack.client.set_model_version_tag(model, mv.version, "governance.request", "champion")
    stack.wait_for_decision(model, mv.version)

    status = stack.gate("status", "--json")
    report = json.loads(status.stdout)
    assert report["ok"] is True and report["workers"]
    assert report["redis"]["reachable"] and report["mlflow"]["reachable"]
    assert {"queue_depth", "tasks_in_flight", "dead_letters"} <= report.keys()
    assert stack.gate("status").stdout.startswith("redis     up")

    listed = json.loads(stack.gate("decisions", "--model", model, "--json").stdout)
    assert [(d["version"], d["outcome"], d["target"]) for d in listed] == [
        (mv.version, "approved", "champion")
    ]
    assert listed[0]["event_id"] and listed[0]["reason"]
    table = stack.gate("decisions", "--model", model).stdout
    assert model in table and "approved" in table and "1 decision, newest first" in table
    assert report["ledger"]["reachable"] and report["last_decisions"]

    receiver = requests.get(f"{stack.receiver_url}/metrics", timeout=5).text
    assert re.search(
        r'gate_webhooks_received_total\{outcome="accepted",source="mlflow"\} \d', receiver
    )
    assert "gate_webhook_ack_seconds_bucket" in receiver
    assert "gate_queue_depth" in receiver and "gate_deadletter_depth" in receiver
    worker_port = stack.env["GATE_WORKER_METRICS_PORT"]
    worker = requests.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).text
    assert re.search(r'gate_decisions_total\{outcome="approved"\} [1-9]', worker)
    assert "gate_mlflow_call_seconds_bucket" in worker

    # One field set from receipt to decision, keyed by the event id, in JSON lines
    event_id = listed[0]["event_id"]
    worker_log = stack.processes["worker"].log_tail(200_000)
    lines = [json.loads(line) for line in worker_log.splitlines() if event_id in line
             and line.startswith("{")]  # fmt: skip
    assert lines and all(line["model"] == model for line in lines)
    assert any("approved" in line["message"] for line in lines)


def test_status_exits_non_zero_when_something_is_down(stack: Stack) -> None:
    env = {**stack.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    result = subprocess.run([*gate_command(), "status"], env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert "mlflow    DOWN" in result.stdout


def test_docker_compose_file_is_valid_and_complete() -> None:
    compose = shutil.which("docker-compose")
    assert compose, (
        "docker-compose (Debian's package) validates the file: apt-get install docker-compose"
    )
    env = {**os.environ, "GATE_WEBHOOK_SECRET": "s", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "k",
           "GATE_FLOWER_PASSWORD": "p", "GATE_CONSOLE_SECRET": "c" * 32}  # fmt: skip
    result = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Services in docker-compose.yml", 1)[1].split("\n#", 1)[0]
    named = set(re.findall(r"^\| `([\w-]+)` \|", section, flags=re.MULTILINE))
    assert len(named) >= 8 and named <= services.keys(), named - services.keys()
    for name in ("postgres", "mlflow", "redis", "receiver", "worker", "beat", "flower",
                 "register-webhook", "console"):  # fmt: skip
        assert name in services
    for name in ("postgres", "mlflow", "redis", "receiver", "worker", "beat", "flower", "console"):
        assert "healthcheck" in services[name], name
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "postgresql://" in " ".join(services["mlflow"]["command"])
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == "k"
    for name in ("receiver", "worker", "beat", "register-webhook"):
        env_of = services[name]["environment"]
        for variable in ("MLFLOW_TRACKING_URI", "GATE_REDIS_URL", "GATE_WEBHOOK_SECRET"):
            assert env_of.get(variable), f"{name} lacks {variable}"
    assert "receiver" in " ".join(services["receiver"]["command"])
    assert "--beat" in services["beat"]["command"]
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:p"
    console = services["console"]
    assert console["environment"]["GATE_CONSOLE_SECRET"] == "c" * 32
    assert console["environment"]["GATE_DATABASE_URL"].startswith("postgresql")
    assert "console" in console["command"]
    assert not any("basic-auth" in part or ":p" in part for part in flower["command"])
