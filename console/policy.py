"""The active policy, and "what if": a policy pasted or uploaded, re-evaluated on the stored facts
of the ledger's last N decisions with the pure evaluation (shared/whatif.py), the decisions it
would flip marked. Nothing is changed: the active policy is the file GATE_POLICY_FILE."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from cli.policytest import collect
from console.services import services
from shared.errors import ConfigError
from shared.policy import PolicySet, parse_policies
from shared.whatif import EVALUATED, WhatIf

blueprint = Blueprint("policy", __name__)

DEFAULT_LAST = 100
MAX_LAST = 1000


@blueprint.get("/policy")
def index() -> tuple[str, int]:
    text, _, _ = _active()
    return _answer(text, DEFAULT_LAST, None, None, 200)


@blueprint.post("/policy/what-if")
def try_policy() -> tuple[str, int]:
    proposed = request.form.get("policy", "")
    upload = request.files.get("file")
    last = DEFAULT_LAST

    def refused(error: str) -> tuple[str, int]:
        return _answer(proposed, last, None, error, 400)

    if upload is not None and upload.filename:
        try:
            proposed = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            return refused("The uploaded file is not UTF-8 text: upload the policy YAML file.")
    try:
        last = int(request.form.get("last") or DEFAULT_LAST)
    except ValueError:
        last = 0
    if not 1 <= last <= MAX_LAST:
        last = DEFAULT_LAST
        return refused(f"Give how many decisions to re-evaluate: 1 to {MAX_LAST}.")
    if not proposed.strip():
        return refused("Paste a policy (YAML, as in the policy file) or upload one.")
    try:
        policies = parse_policies(proposed, source="the proposed policy")
    except ConfigError as exc:
        return refused(f"The proposed policy is not valid: {exc}")
    trials = collect(services().ledger(), policies, last=last, model=None)
    # Shown: the decisions decided again, and those of a kind that could have been but were not
    # (with why); skips, rollbacks and the like are not policy decisions.
    shown = tuple(t for t in trials if t.evaluated or t.was in EVALUATED)
    return _answer(proposed, last, WhatIf(shown, "the proposed policy"), None, 200)


def _active() -> tuple[str, PolicySet | None, str | None]:
    """The active policy file's text and policies, or what is wrong with it."""
    path = services().settings.policy_file
    if path is None:
        return "", None, "GATE_POLICY_FILE is not set: the workers refuse every promotion."
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return "", None, f"Cannot read the policy file {path}: {exc.strerror}."
    try:
        return text, parse_policies(text, source=str(path)), None
    except ConfigError as exc:
        return text, None, f"The policy file {path} is not valid: {exc}"


def _answer(
    proposed: str, last: int, result: WhatIf | None, error: str | None, status: int
) -> tuple[str, int]:
    text, active, problem = _active()
    return render_template(
        "policy.html", text=text, active=active, problem=problem, proposed=proposed, last=last,
        result=result, error=error, path=services().settings.policy_file,
    ), status  # fmt: skip
