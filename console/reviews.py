"""Reviews: what waits for a decision by people, with its checks and the approvals so far;
approve or reject with a comment (the same rules as `mlflow-gate review`, shared/voting.py)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from console.services import services
from console.signin import person
from shared.ledger import Verdict
from shared.voting import Refused, cast, comment_of, reviews_for
from worker.decisions import target_of

blueprint = Blueprint("reviews", __name__)


@blueprint.get("/reviews")
def index() -> str:
    gate = services()
    shown = reviews_for(person(), gate.ledger(), gate.identities.roles_of, gate.clock())
    return render_template("reviews.html", reviews=shown)


@blueprint.post("/reviews/<int:decision_id>/vote")
def vote(decision_id: int) -> Response:
    gate = services()
    book = gate.ledger()
    pending = book.decision(decision_id)
    if pending is None:
        abort(404, f"The ledger has no decision {decision_id}.")
    verdict_text = request.form.get("verdict", "")
    if verdict_text not in ("approve", "reject"):
        abort(400, "Choose Approve or Reject.")
    subject = (pending.registry, pending.model, pending.version, target_of(pending))
    try:
        done = cast(
            person(),
            book,
            gate.identities.roles_of,
            gate.publish,
            subject,
            Verdict(verdict_text),
            comment_of(request.form.get("comment")),
            gate.clock(),
        )
    except Refused as exc:
        flash(f"Not recorded: {exc}", "error")
    else:
        flash(done.message.capitalize() if done.message[:1].islower() else done.message, "ok")
    return redirect(url_for("reviews.index"))
