"""`mlflow-gate request` and `mlflow-gate review`: clients of the gate's HTTP API (/api/v1) at
GATE_URL, signed in with the caller's own MLflow credentials (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD). A reviewer's laptop needs nothing else: no Redis, no database.

Exit codes: 0 done; 1 refused or not done (the reason is printed: not a reviewer, your own
request or version, already decided, bad credentials, the gate did not answer); 2 usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from shared.settings import Settings

DONE, REFUSED, USAGE = 0, 1, 2

Echo = Callable[..., None]


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.body.get("status") or f"HTTP {self.status}")


class GateApi:
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.base = settings.gate_url.rstrip("/")
        self.http = session or requests.Session()
        self.auth = (
            (settings.mlflow_username, settings.mlflow_password)
            if settings.mlflow_username and settings.mlflow_password
            else None
        )
        self.timeout = max(settings.mlflow_timeout_seconds, 10.0)

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        try:
            reply = self.http.request(
                method, self.base + path, auth=self.auth, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            return Reply(
                0,
                {
                    "message": f"the gate at {self.base} did not answer ({type(exc).__name__}): "
                    "check GATE_URL and that the receiver is running"
                },
            )
        try:
            body = reply.json()
        except ValueError:
            body = {"message": f"HTTP {reply.status_code} from {self.base}: not the gate's API?"}
        return Reply(reply.status_code, body if isinstance(body, dict) else {})


def exit_code(reply: Reply) -> int:
    if 200 <= reply.status < 300:
        return DONE
    if reply.status == 400:
        return USAGE
    return REFUSED


def _fail(reply: Reply, echo: Echo) -> int:
    hint = ""
    if reply.status == 401:
        hint = " (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your MLflow account)"
    echo(f"refused: {reply.message}{hint}" if reply.status else reply.message, err=True)
    return exit_code(reply)


def request_promotion(
    api: GateApi, model: str, version: str, target: str, comment: str | None, registry: str,
    echo: Echo,
) -> int:  # fmt: skip
    body = {"model": model, "version": version, "target": target, "registry": registry}
    if comment:
        body["comment"] = comment
    reply = api.call("POST", "/api/v1/requests", json=body)
    if exit_code(reply) != DONE:
        return _fail(reply, echo)
    echo(reply.message)
    return DONE


def vote(
    api: GateApi, verdict: str, model: str, version: str, target: str, comment: str | None,
    registry: str, echo: Echo,
) -> int:  # fmt: skip
    body = {
        "model": model,
        "version": version,
        "target": target,
        "verdict": verdict,
        "comment": comment,
        "registry": registry,
    }
    reply = api.call("POST", "/api/v1/reviews", json=body)
    if exit_code(reply) != DONE:
        return _fail(reply, echo)
    echo(reply.message)
    return DONE


def list_reviews(api: GateApi, mine: bool, as_json: bool, echo: Echo) -> int:
    reply = api.call("GET", "/api/v1/reviews", params={"mine": "true"} if mine else None)
    if exit_code(reply) != DONE:
        return _fail(reply, echo)
    reviews = reply.body.get("reviews") or []
    if as_json:
        echo(json.dumps(reviews, indent=2))
        return DONE
    if not reviews:
        echo("no review is waiting for you" if mine else "no review is pending")
        return DONE
    for r in reviews:
        approvals = f"{len(r['approvals'])}/{r['approvals_needed']}"
        by = ", ".join(r["approvals"]) or "nobody yet"
        expires = r.get("expires_at") or "never"
        you = "you may review" if r.get("you_may_review") else f"not you: {r.get('why_not')}"
        echo(
            f"{r['model']} v{r['version']} -> {r['target']}  approvals {approvals} ({by})  "
            f"expires {expires}\n  {r['requester']['says']}; {r['creator']['says']}\n  {you}"
        )
    return DONE
