"""What a notice says, as data (pure): the JSON body every webhook sink receives, and the Slack
message (Block Kit, with a plain-text fallback) made from that same body.

Body: {"type": "decision.approved", "timestamp": "2026-11-23T13:00:35Z", "data": {"model": ...,
"version": ..., "target": ..., "outcome": ..., "reason": ..., "checks": [...], "policies": [...],
"reviewers": [...], "links": {"mlflow": ..., "console": ...}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from shared.notices import Notice

TITLES = {
    "review.requested": ("Review requested", ":eyes:"),
    "review.approved": ("Review approved", ":thumbsup:"),
    "review.expired": ("Review expired", ":hourglass:"),
    "decision.approved": ("Approved", ":white_check_mark:"),
    "decision.rejected": ("Rejected", ":x:"),
    "guard.reverted": ("Reverted", ":leftwards_arrow_with_hook:"),
}
LINK_LABELS = {"mlflow": "Open in MLflow", "console": "Open in the console"}

# Slack's limits: a header's text, a section's text, a button's text.
_HEADER_MAX, _SECTION_MAX, _BUTTON_MAX = 150, 3000, 75


def body(notice: Notice) -> dict[str, Any]:
    """The Standard Webhooks body of a notice. `data` is the notice's, made JSON-safe, with
    `policies` defaulting to the covering policies."""
    data: dict[str, Any] = json.loads(json.dumps(dict(notice.data), default=str))
    data.setdefault("policies", list(notice.policies))
    return {"type": notice.type, "timestamp": iso(notice.at), "data": data}


def encode(message: Mapping[str, Any]) -> bytes:
    """The bytes sent (and signed): compact JSON, UTF-8."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def iso(at: datetime) -> str:
    """ISO 8601 in UTC, to the second: 2026-11-23T13:00:35Z (a naive time is taken as UTC)."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def slack(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message for a body: a header, the facts as fields, the reason,
    the failed checks, the reviewers so far, buttons to MLflow and the console, and `text`, the
    plain fallback that notifications and old clients show."""
    kind = str(message.get("type", "notice"))
    data: Mapping[str, Any] = message.get("data") or {}
    title, emoji = TITLES.get(kind, (kind, ":bell:"))
    subject = _subject(data)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"{title}: {subject}", _HEADER_MAX)},
        {"type": "section", "fields": _fields(data)},
    ]
    if data.get("reason"):
        blocks.append(_section(f"*Reason*\n{_escape(str(data['reason']))}"))
    failed = failed_checks(data.get("checks"))
    if failed:
        lines = "\n".join(f"• {_escape(line)}" for line in failed)
        blocks.append(_section(f"*Failed checks*\n{lines}"))
    reviewers = reviewer_names(data.get("reviewers"))
    if reviewers:
        blocks.append(_section(f"*Reviewers so far*\n{_escape(', '.join(reviewers))}"))
    buttons = _buttons(data.get("links"))
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    context = [f"{emoji} `{kind}`"]
    if data.get("policies"):
        context.append("policies: " + _escape(", ".join(str(p) for p in data["policies"])))
    if message.get("timestamp"):
        context.append(_escape(str(message["timestamp"])))
    blocks.append({"type": "context", "elements": [_mrkdwn(" · ".join(context))]})
    return {"text": fallback(message), "blocks": blocks}


def fallback(message: Mapping[str, Any]) -> str:
    """One readable line: `mlflow-gate: Approved: fraud-model v3 -> champion. <reason> <link>`."""
    kind = str(message.get("type", "notice"))
    data: Mapping[str, Any] = message.get("data") or {}
    title = TITLES.get(kind, (kind, ""))[0]
    text = f"mlflow-gate: {title}: {_subject(data)}."
    if data.get("reason"):
        text += f" {data['reason']}"
    links = data.get("links")
    if isinstance(links, Mapping) and links.get("mlflow"):
        text += f" {links['mlflow']}"
    return _escape(text)


def failed_checks(checks: Any) -> list[str]:
    """`policy: message` of each check that did not pass (from governance.checks' shape)."""
    if not isinstance(checks, list):
        return []
    lines = []
    for check in checks:
        if isinstance(check, Mapping) and check.get("passed") is False:
            what = check.get("message") or check.get("check") or "a check failed"
            policy = check.get("policy")
            audit = "" if check.get("enforced", True) else " (audit only)"
            lines.append(f"{policy}: {what}{audit}" if policy else f"{what}{audit}")
    return lines


def reviewer_names(reviewers: Any) -> list[str]:
    """Reviewers as names: strings, or objects with `reviewer`, `name` or `user`."""
    if not isinstance(reviewers, list):
        return []
    names = []
    for each in reviewers:
        if isinstance(each, Mapping):
            each = each.get("reviewer") or each.get("name") or each.get("user")
        if each:
            names.append(str(each))
    return names


def _subject(data: Mapping[str, Any]) -> str:
    model = data.get("model") or "?"
    version = f" v{data['version']}" if data.get("version") is not None else ""
    target = f" -> {data['target']}" if data.get("target") else ""
    return f"{model}{version}{target}"


def _fields(data: Mapping[str, Any]) -> list[dict[str, str]]:
    shown = (("Model", "model"), ("Version", "version"), ("Target", "target"),
             ("Outcome", "outcome"))  # fmt: skip
    return [
        _mrkdwn(f"*{label}*\n{_escape(str(data[key]))}")
        for label, key in shown
        if data.get(key) is not None
    ] or [_mrkdwn("*Model*\n?")]


def _buttons(links: Any) -> list[dict[str, Any]]:
    if not isinstance(links, Mapping):
        return []
    return [
        {
            "type": "button",
            "text": _plain(LINK_LABELS.get(str(name), f"Open {name}"), _BUTTON_MAX),
            "url": str(url),
        }
        for name, url in links.items()
        if isinstance(url, str) and url.startswith(("http://", "https://"))
    ]


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(_cut(text, _SECTION_MAX))}


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _cut(text, limit), "emoji": True}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters, as its documentation asks them escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
