"""The audit trail: the ledger's decisions with filters and paging, and one decision with its
checks (actual against required, passed or not, enforced or audit) and the facts evaluated."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from flask import Blueprint, abort, render_template, request

from console.services import services
from shared.durations import since_timestamp
from shared.errors import ConfigError
from shared.events import RegistryKind
from shared.ledger import RecordedDecision
from shared.notify.links import links
from shared.outcomes import Outcome
from shared.policy import Target

PAGE_SIZE = 50

blueprint = Blueprint("decisions", __name__)


@blueprint.get("/")
@blueprint.get("/decisions")
def index() -> str:
    args = request.args
    filters = {key: args.get(key, "").strip() for key in ("model", "target", "outcome", "since",
                                                          "until")}  # fmt: skip
    page = _page(args.get("page"))
    problems: list[str] = []
    since = _moment(filters["since"], "since", problems)
    until = _moment(filters["until"], "until", problems)
    outcome = None
    if filters["outcome"]:
        try:
            outcome = Outcome(filters["outcome"])
        except ValueError:
            problems.append(f"outcome {filters['outcome']!r} is not one the gate records")
    target = Target.parse(filters["target"]).name if filters["target"] else None
    found: list[RecordedDecision] = []
    if not problems:
        found = (
            services()
            .ledger()
            .decisions(
                model_glob=filters["model"] or None,
                target=target,
                outcome=outcome,
                since=since,
                until=until,
                limit=PAGE_SIZE + 1,  # one more: is there an older page?
                offset=(page - 1) * PAGE_SIZE,
            )
        )
    return render_template(
        "decisions.html",
        decisions=found[:PAGE_SIZE],
        filters=filters,
        outcomes=[o.value for o in Outcome],
        page=page,
        older=len(found) > PAGE_SIZE,
        problems=problems,
        query=lambda **changes: _query({**filters, "page": str(page), **changes}),
    )


@blueprint.get("/decisions/<int:decision_id>")
def show(decision_id: int) -> str:
    book = services().ledger()
    decision = book.decision(decision_id)
    if decision is None:
        abort(404, f"The ledger has no decision {decision_id}.")
    review_id = decision.facts.get("closes_review") if decision.facts else None
    votes = book.votes(decision.id)
    if not votes and isinstance(review_id, int):
        votes = book.votes(review_id)
    return render_template(
        "decision.html",
        d=decision,
        votes=votes,
        review_id=review_id,
        mlflow_link=version_link(decision.registry, decision.model, decision.version),
        facts=json.dumps(_shown_facts(decision.facts), indent=2, sort_keys=True, default=str),
        checks=[_check_row(c.to_dict()) for c in decision.checks],
    )


def version_link(registry: RegistryKind, model: str, version: str) -> str | None:
    """The version's page in its registry's own UI."""
    settings = services().settings
    if registry is RegistryKind.MLFLOW:
        return links(settings, model, version)["mlflow"]
    host = settings.databricks.host if settings.databricks else None
    if not host:
        return None
    return f"{host.rstrip('/')}/#mlflow/models/{quote(model, safe='')}/versions/{version}"


def _check_row(check: dict[str, Any]) -> dict[str, Any]:
    actual = check.get("actual")
    shown = actual if isinstance(actual, str) else json.dumps(actual, default=str)
    return {**check, "actual_shown": shown}


def _shown_facts(facts: Any) -> Any:
    return dict(facts) if facts else {}


def _page(raw: str | None) -> int:
    try:
        return max(int(raw or "1"), 1)
    except ValueError:
        return 1


def _moment(text: str, name: str, problems: list[str]) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromtimestamp(since_timestamp(text, time.time()), timezone.utc)
    except ConfigError:
        problems.append(
            f"{name} {text!r} is not a time: give a duration back (30m, 2h, 7d) or an ISO time "
            "(2026-11-23T10:00Z)"
        )
        return None


def _query(values: dict[str, str]) -> str:
    return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == "1")})
