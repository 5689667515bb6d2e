"""A model: its versions with their governance status, and for each target a timeline of who
held it, from when to when, approved by which decision or reviewers."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, abort, render_template

from console.decisions import version_link
from console.services import services
from shared.events import RegistryKind
from shared.ledger import Ledger, RecordedDecision, Tenure, Verdict

blueprint = Blueprint("models", __name__)

# Enough of a model's history to show its versions; older decisions are on the audit pages.
MODEL_DECISIONS = 2000


@dataclass(frozen=True)
class Held:
    tenure: Tenure
    reviewers: tuple[str, ...]  # who approved it in review (empty: the checks alone)


@blueprint.get("/models")
def index() -> str:
    book = services().ledger()
    return render_template("models.html", models=book.models())


@blueprint.get("/models/<path:model>")
def show(model: str) -> str:
    book = services().ledger()
    found = book.decisions(model=model, limit=MODEL_DECISIONS)
    if not found:
        abort(404, f"The ledger has no decision on a model named {model!r}.")
    timelines = [
        (registry, target, [_held(book, t) for t in book.history(registry, model, target)])
        for registry, target in book.targets(model)
    ]
    return render_template(
        "model.html",
        model=model,
        versions=_versions(found),
        timelines=timelines,
        link=lambda registry, version: version_link(registry, model, version),
    )


@dataclass(frozen=True)
class VersionRow:
    registry: RegistryKind
    version: str
    latest: list[RecordedDecision]  # the latest decision for each target, by target


def _versions(found: list[RecordedDecision]) -> list[VersionRow]:
    """Each version (newest first) with the latest decision for each target it was decided
    for: its governance status there."""
    by_version: dict[tuple[RegistryKind, str], dict[str, RecordedDecision]] = {}
    for decision in found:  # newest first: the first seen per target is the latest
        targets = by_version.setdefault((decision.registry, decision.version), {})
        targets.setdefault(decision.target, decision)
    rows = [
        VersionRow(registry, version, sorted(targets.values(), key=lambda d: d.target))
        for (registry, version), targets in by_version.items()
    ]
    rows.sort(key=lambda r: int(r.version) if r.version.isdigit() else 0, reverse=True)
    return rows


def _held(book: Ledger, tenure: Tenure) -> Held:
    decision = book.decision(tenure.decision_id)
    review_id = decision.facts.get("closes_review") if decision is not None else None
    if not isinstance(review_id, int):
        return Held(tenure, ())
    approvals = [v.reviewer for v in book.votes(review_id) if v.verdict is Verdict.APPROVE]
    return Held(tenure, tuple(approvals))
