"""The README's Notifications section is a contract: its policy example parses with the sinks it
shows, its body example is what the gate sends, and its verification snippet verifies what the
gate signs."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.notices import Notice
from shared.notify import messages, standard_webhooks
from shared.policy import parse_policies

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("## Notifications") : README.index("## Commands")]


def block(language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", SECTION, flags=re.DOTALL)[index]


def test_the_policy_example_parses_with_its_sinks() -> None:
    policies = parse_policies(block("yaml"), source="README.md")
    assert [s.key for s in policies.notify] == [
        "webhook:https://ci.example.com/hooks/mlflow-gate",
        "slack:SLACK_WEBHOOK_URL",
    ]
    assert policies.notify[0].events == ("decision.approved",)
    assert policies.policies[0].notify[0].secret_env == "DEPLOY_WEBHOOK_SECRET"


def test_the_body_example_has_the_shape_the_gate_sends() -> None:
    example = json.loads(block("json"))
    made = messages.body(
        Notice(
            "decision.approved",
            "k",
            datetime(2026, 11, 23, 13, 0, 35, tzinfo=timezone.utc),
            ("production-quality",),
            {"model": "fraud-detector"},
        )
    )
    assert set(example) == set(made) and example["timestamp"] == made["timestamp"]
    assert {"model", "version", "target", "outcome", "reason", "checks", "policies",
            "reviewers", "links"} <= set(example["data"])  # fmt: skip


def test_the_verification_snippet_verifies_what_the_gate_signs() -> None:
    namespace: dict[str, Any] = {}
    exec(block("python", 0), namespace)  # the README's own code
    secret = "whsec_" + base64.b64encode(b"a key for the readme's snippet!!").decode().rstrip("=")
    body, now = b'{"type":"decision.approved"}', int(time.time())
    headers = standard_webhooks.headers(secret, "msg_1", now, body)
    assert namespace["verify"](secret, body, headers) is True
    assert namespace["verify"](secret, body + b" ", headers) is False
