"""Dead letters and the gate's health: list (filtered), show one, replay one, the selected or
every one a filter matches, purge with confirmation. Replay and purge need an MLflow admin or a
member of GATE_CONSOLE_ADMIN_ROLE."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from console.services import services
from console.signin import person
from shared.deadletter import DeadLetter, describe, replay, select
from shared.durations import since_timestamp
from shared.errors import ConfigError

blueprint = Blueprint("deadletters", __name__)


@blueprint.get("/dead-letters")
def index() -> str:
    gate = services()
    filters = _filters(request.args)
    problems: list[str] = []
    entries = _matching(filters, problems)
    return render_template(
        "deadletters.html",
        entries=entries,
        filters=filters,
        problems=problems,
        status=gate.status(gate.settings),
        may_operate=_may_operate(),
        now=time.time(),
        admin_role=gate.settings.console_admin_role,
        described=lambda entry: describe(entry.event),
    )


@blueprint.get("/dead-letters/<entry_id>")
def show(entry_id: str) -> str:
    entry = services().dead_letters().get(entry_id)
    if entry is None:
        abort(404, f"No dead letter {entry_id!r}: it was replayed or purged meanwhile.")
    return render_template(
        "deadletter.html",
        entry=entry,
        body=json.dumps(asdict(entry), indent=2, sort_keys=True, default=str),
        may_operate=_may_operate(),
        described=lambda entry: describe(entry.event),
    )


@blueprint.post("/dead-letters/replay")
def replay_some() -> Response:
    _require_operator("replay dead letters")
    form = request.form
    if form.get("all") == "1":
        problems: list[str] = []
        ids = [e.id for e in _matching(_filters(form), problems)]
        if problems:
            flash("Nothing replayed: " + "; ".join(problems), "error")
            return redirect(url_for("deadletters.index"))
    else:
        ids = form.getlist("id")
    if not ids:
        flash("Nothing replayed: select dead letters first (or replay all that match).", "error")
        return redirect(url_for("deadletters.index"))
    gate = services()
    report = replay(gate.dead_letters(), gate.publish, ids)
    flash(report.summary(), "error" if report.failed or report.missing else "ok")
    for entry_id, why in report.failed:
        flash(f"{entry_id} not replayed: {why} (it is kept; try again)", "error")
    for entry_id in report.missing:
        flash(f"{entry_id} was not there any more (replayed or purged meanwhile)", "error")
    return redirect(url_for("deadletters.index"))


@blueprint.get("/dead-letters/purge")
def purge_form() -> str:
    _require_operator("purge dead letters")
    return render_template("purge.html", count=services().dead_letters().count())


@blueprint.post("/dead-letters/purge")
def purge() -> Response:
    _require_operator("purge dead letters")
    store = services().dead_letters()
    count = store.count()
    if request.form.get("confirm") != "purge" or request.form.get("count") != str(count):
        flash(
            f"Nothing purged: the store now holds {count} dead letters (not the number you "
            "confirmed), or the confirmation was not given; look again and confirm.",
            "error",
        )
        return redirect(url_for("deadletters.purge_form"))
    flash(f"Purged {store.purge()} dead letters, by {person().name}.", "ok")
    return redirect(url_for("deadletters.index"))


def _may_operate() -> bool:
    return services().may_operate(person().name)


def _require_operator(what: str) -> None:
    if not _may_operate():
        role = services().settings.console_admin_role
        who = "an MLflow admin" + (f" or a member of the MLflow role {role!r}" if role else "")
        abort(403, f"Only {who} may {what}; you are signed in as {person().name}.")


def _filters(source: Any) -> dict[str, str]:
    return {key: str(source.get(key, "")).strip() for key in ("model", "error", "since")}


def _matching(filters: dict[str, str], problems: list[str]) -> list[DeadLetter]:
    after = None
    if filters["since"]:
        try:
            after = since_timestamp(filters["since"], time.time())
        except ConfigError as exc:
            problems.append(str(exc))
            return []
    return select(
        services().dead_letters().all(),
        model=filters["model"] or None,
        error=filters["error"] or None,
        since=after,
    )
