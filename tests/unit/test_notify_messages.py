"""shared.notify.messages and links: the body every webhook gets, and a readable Slack message
with the same facts and links."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.notices import Notice
from shared.notify import messages
from shared.notify.links import links
from shared.settings import Settings

AT = datetime(2026, 11, 23, 13, 0, 35, 123456, tzinfo=timezone.utc)


def rejected(**data: Any) -> Notice:
    facts: dict[str, Any] = {
        "model": "fraud <detector>",
        "version": "3",
        "target": "champion",
        "outcome": "rejected",
        "reason": "validation_accuracy is 0.85, below the minimum 0.9",
        "checks": [
            {
                "policy": "quality",
                "check": "metric",
                "passed": False,
                "enforced": True,
                "message": "validation_accuracy is 0.85, below the minimum 0.9",
            },
            {
                "policy": "quality",
                "check": "description",
                "passed": True,
                "enforced": True,
                "message": "has a description",
            },
            {
                "policy": "advisory",
                "check": "tags",
                "passed": False,
                "enforced": False,
                "message": "tag data_version is missing",
            },
        ],
        "reviewers": ["alice", {"reviewer": "bob", "at": "2026-11-23T12:00:00Z"}],
        "links": {
            "mlflow": "http://mlflow:5000/#/models/fraud/versions/3",
            "console": "https://gate.example.com/models/fraud",
        },
        **data,
    }
    return Notice("decision.rejected", "decision-42", AT, ("quality", "advisory"), facts)


def test_the_body_is_type_timestamp_and_data() -> None:
    body = messages.body(rejected())
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "decision.rejected"
    assert body["timestamp"] == "2026-11-23T13:00:35Z"
    assert body["data"]["model"] == "fraud <detector>"
    assert body["data"]["policies"] == ["quality", "advisory"]  # from the notice by default
    assert body["data"]["checks"][0]["passed"] is False
    assert json.loads(messages.encode(body)) == body


def test_the_timestamp_is_utc_whatever_the_zone_given() -> None:
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    notice = Notice("decision.approved", "k", paris, ())
    assert messages.body(notice)["timestamp"] == "2026-11-23T13:00:35Z"


def test_data_that_json_cannot_carry_is_made_text() -> None:
    body = messages.body(rejected(decided_at=AT, policies=["given"]))
    assert body["data"]["decided_at"] == str(AT)
    assert body["data"]["policies"] == ["given"]  # the data's own wins


def blocks_text(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"], ensure_ascii=False)


def test_the_slack_message_has_the_facts_the_failed_checks_the_reviewers_and_links() -> None:
    message = messages.slack(messages.body(rejected()))
    header = message["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "Rejected: fraud <detector> v3 -> champion"  # plain text
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert fields == ["*Model*\nfraud &lt;detector&gt;", "*Version*\n3", "*Target*\nchampion",
                      "*Outcome*\nrejected"]  # fmt: skip
    text = blocks_text(message)
    assert "*Reason*\\nvalidation_accuracy is 0.85, below the minimum 0.9" in text
    assert "• quality: validation_accuracy is 0.85" in text
    assert "• advisory: tag data_version is missing (audit only)" in text
    assert "has a description" not in text  # passed checks are not listed
    assert "*Reviewers so far*\\nalice, bob" in text
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    assert [(e["text"]["text"], e["url"]) for e in actions["elements"]] == [
        ("Open in MLflow", "http://mlflow:5000/#/models/fraud/versions/3"),
        ("Open in the console", "https://gate.example.com/models/fraud"),
    ]
    assert message["blocks"][-1]["type"] == "context"
    assert "policies: quality, advisory" in blocks_text(message)


def test_the_fallback_text_is_one_readable_line() -> None:
    message = messages.slack(messages.body(rejected()))
    assert message["text"] == (
        "mlflow-gate: Rejected: fraud &lt;detector&gt; v3 -&gt; champion. validation_accuracy is "
        "0.85, below the minimum 0.9 http://mlflow:5000/#/models/fraud/versions/3"
    )


def test_a_sparse_notice_still_makes_a_valid_message() -> None:
    notice = Notice("guard.reverted", "g-1", AT, (), {"model": "m"})
    message = messages.slack(messages.body(notice))
    assert message["blocks"][0]["text"]["text"] == "Reverted: m"
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "context"]


def test_long_text_is_cut_to_slacks_limits() -> None:
    message = messages.slack(messages.body(rejected(reason="x" * 5000, model="m" * 300)))
    assert len(message["blocks"][0]["text"]["text"]) <= 150
    reason = next(b for b in message["blocks"] if "Reason" in b.get("text", {}).get("text", ""))
    assert len(reason["text"]["text"]) <= 3000


def test_links_to_the_mlflow_ui_and_to_the_console_when_configured() -> None:
    settings = Settings(mlflow_tracking_uri="https://mlflow.example.com")
    assert links(settings, "team/fraud model", "3") == {
        "mlflow": "https://mlflow.example.com/#/models/team%2Ffraud%20model/versions/3"
    }
    with_console = Settings(
        mlflow_tracking_uri="https://mlflow.example.com", console_url="https://gate.example.com"
    )
    assert links(with_console, "fraud", 7) == {
        "mlflow": "https://mlflow.example.com/#/models/fraud/versions/7",
        "console": "https://gate.example.com/models/fraud",
    }


def test_gate_console_url_is_read_and_checked() -> None:
    env = {"GATE_CONSOLE_URL": "https://gate.example.com/"}
    assert Settings.from_env(env).console_url == "https://gate.example.com"
    assert Settings.from_env({}).console_url is None
    with pytest.raises(ConfigError, match="GATE_CONSOLE_URL"):
        Settings.from_env({"GATE_CONSOLE_URL": "gate.example.com"})
