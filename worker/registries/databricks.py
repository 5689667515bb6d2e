"""The Databricks workspace model registry: transition requests, decided by the gate.

- A request is an open transition request (TRANSITION_REQUEST_CREATED); the gate approves it
  (with `archive_existing_versions` and a comment listing the checks passed) or rejects it with
  a comment giving the reason. The comment is what the engineer reads in Databricks.
- A version moved into a governed stage outside the gate is a violation of the registry's own
  approval process: reported, or moved back when a covering policy says `on_violation: revert`.
- What the gate approved per model and stage is kept in Redis, written before the approval is
  sent, so that the approval's own transition webhook is not taken for a violation.
- The sweep lists the workspace's governed models, their versions, and each version's open
  transition requests: one call per governed version per interval, plus the listing pages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from shared.errors import ConfigError, MlflowRequestError
from shared.evaluation import Decision, VersionFacts
from shared.events import GateEvent, Kind, RegistryKind, found_by_sweep
from shared.policy import STAGES, PolicySet, Target
from shared.settings import DatabricksSettings
from worker.registries.endpoints import Endpoints
from worker.registry import RegistryRefused, Request, RequestWithdrawn
from worker.rest import Json, RestClient, Service

REQUESTS_LIST = "/api/2.0/mlflow/transition-requests/list"
REQUESTS_APPROVE = "/api/2.0/mlflow/transition-requests/approve"
REQUESTS_REJECT = "/api/2.0/mlflow/transition-requests/reject"
TRANSITION_STAGE = "/api/2.0/mlflow/databricks/model-versions/transition-stage"
WEBHOOKS_CREATE = "/api/2.0/mlflow/registry-webhooks/create"
WEBHOOKS_LIST = "/api/2.0/mlflow/registry-webhooks/list"
MODELS_LIST = "/api/2.0/mlflow/registered-models/list"
MODELS_PAGE = 1000  # the documented maximum of registered-models/list
COMMENT_PREFIX = "mlflow-gate: "


def service(section: DatabricksSettings, timeout: float) -> Service:
    if not section.host or not section.token:
        raise ConfigError(
            "GATE_DATABRICKS_HOST and GATE_DATABRICKS_TOKEN must be set to reach the "
            "Databricks workspace"
        )
    return Service(
        name="Databricks",
        base_url=section.host,
        token=section.token,
        timeout=timeout,
        credentials_hint=(
            "check GATE_DATABRICKS_TOKEN (a token allowed to manage the model's transition "
            "requests)"
        ),
        down_hint="check the workspace and its status",
    )


def open_request(requests: Sequence[Json], stage: str) -> Json | None:
    """The newest open request to `stage` among a version's open transition requests."""
    matching = [r for r in requests if Target.parse(str(r.get("to_stage") or "")).name == stage]
    if not matching:
        return None
    return max(matching, key=lambda r: int(r.get("creation_timestamp") or 0))


def approval_comment(decision: Decision, archived: bool) -> str:
    passed = [c.message for c in decision.checks if c.passed]
    audited = [c.message for c in decision.checks if not c.passed and not c.enforced]
    text = (
        f"{COMMENT_PREFIX}approved for stage {decision.target} (policy "
        f"{', '.join(decision.policies)}). Checks passed: " + "; ".join(passed) + "."
    )
    if audited:
        text += " Audit only, not enforced: " + "; ".join(audited) + "."
    if archived:
        text += f" Versions already in {decision.target} are archived."
    return text


def rejection_comment(decision: Decision) -> str:
    return COMMENT_PREFIX + decision.reason


class DatabricksRegistry:
    kind = RegistryKind.DATABRICKS
    name = "Databricks"
    has_aliases = False  # the workspace registry has stages only
    moves_outside_are_violations = True

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest
        self.api = Endpoints(rest)

    def healthy(self) -> bool:
        return self.rest.answers("GET", WEBHOOKS_LIST, {"max_results": "1"})

    def forget(self) -> None:
        """Nothing kept between events."""

    # -- facts -----------------------------------------------------------------------------
    def version(self, model: str, version: str) -> VersionFacts:
        return self.api.version_facts(self.api.model_version(model, version))

    def holder(self, model: str, target: Target) -> str | None:
        return self.api.newest_in_stage(model, target.name) if target.is_stage else None

    def request(self, model: str, version: str, target: Target | None) -> Request | None:
        if target is None or not target.is_stage:
            return None
        pending = open_request(self.transition_requests(model, version), target.name)
        if pending is None:
            return None
        return Request(
            candidate=self.version(model, version),
            target=target,
            requested_by=str(pending.get("user_id") or "") or None,
            requester_verified=True,
        )

    def transition_requests(self, model: str, version: str) -> list[Json]:
        """The open transition requests of a version (with who asked: `user_id`)."""
        body = self.rest.call("GET", REQUESTS_LIST, params={"name": model, "version": version})
        return [r for r in body.get("requests", []) if isinstance(r, dict)]

    def ask(self, model: str, version: str, target: Target, requested_by: str) -> None:
        raise RegistryRefused(
            "the workspace registry has its own transition requests, which record who made "
            f"them: request the transition of {model} version {version} to {target} in the "
            "workspace (UI or API); the gate decides it from there"
        )

    # -- what the gate approved -------------------------------------------------------------
    def show_approval(self, model: str, target: Target, version: str) -> None:
        """Nothing more: the approved request's comment shows it."""

    # -- acts ------------------------------------------------------------------------------
    def approve(self, request: Request, decision: Decision, archive: bool) -> str:
        body = _transition(request, archive, approval_comment(decision, archive))
        self._answer(request, REQUESTS_APPROVE, body)
        extra = " (versions already there archived)." if archive else "."
        return f"Transition request to {request.target} approved{extra}"

    def reject(self, request: Request, decision: Decision) -> str:
        body = _transition(request, None, rejection_comment(decision))
        self._answer(request, REQUESTS_REJECT, body)
        return f"Transition request to {request.target} rejected."

    def _answer(self, request: Request, path: str, body: Json) -> None:
        try:
            self.rest.call("POST", path, json=body)
        except MlflowRequestError:
            # Someone acted between the list and our answer: that is not a failure.
            model, version = request.candidate.model, request.candidate.version
            if open_request(self.transition_requests(model, version), request.target.name):
                raise
            raise RequestWithdrawn(
                f"the transition request of version {version} to {request.target} was "
                "decided by someone else meanwhile"
            ) from None

    def put(self, model: str, target: Target, version: str, *, archive: bool, note: str) -> None:
        self._transition_stage(model, version, target.name, archive, note)

    def take_off(
        self, model: str, target: Target, version: str, *, back_to: str | None, note: str
    ) -> str:
        stage = back_to if back_to and back_to != target.name else "None"
        self._transition_stage(model, version, stage, False, f"moved back to {stage}: {note}")
        return f"moved back to stage {stage}"

    def _transition_stage(
        self, model: str, version: str, stage: str, archive: bool, note: str
    ) -> None:
        body = {"name": model, "version": version, "stage": stage,
                "archive_existing_versions": archive, "comment": COMMENT_PREFIX + note}  # fmt: skip
        self.rest.call("POST", TRANSITION_STAGE, json=body)

    def show(self, model: str, version: str, tags: Mapping[str, str]) -> None:
        """Nothing more: the request's comment, written when it was answered, shows it."""

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, policies: PolicySet) -> Iterator[GateEvent]:
        """Every open transition request to a governed stage (the worker decides the newest
        one per stage; one whose webhook decided it first is then left alone)."""
        for rm in self.rest.pages(MODELS_LIST, "registered_models", page_size=MODELS_PAGE):
            model = str(rm.get("name") or "")
            stages = (
                {s for s in STAGES if policies.governs(model, Target(s, True))} if model else set()
            )
            if not stages:
                continue  # no policy governs a stage of it: no call at all
            for mv in self.api.versions_of(model):
                if mv.get("current_stage") == "Archived":
                    continue
                version = str(mv["version"])
                enqueued: set[str] = set()
                for request in self.transition_requests(model, version):
                    target = Target.parse(str(request.get("to_stage") or ""))
                    if target.name not in stages or target.name in enqueued:
                        continue
                    enqueued.add(target.name)
                    yield found_by_sweep(
                        RegistryKind.DATABRICKS, Kind.REQUEST, model, version, target.name,
                        _text(request.get("from_stage")),
                    )  # fmt: skip


def registry_webhooks(rest: RestClient, model: str | None) -> list[Json]:
    params: dict[str, Any] = {"model_name": model} if model else {}
    hooks = rest.call("GET", WEBHOOKS_LIST, params=params).get("webhooks", [])
    return [h for h in hooks if isinstance(h, dict)]


def create_registry_webhook(rest: RestClient, spec: Json) -> Json:
    return dict(rest.call("POST", WEBHOOKS_CREATE, json=spec).get("webhook") or {})


def _transition(request: Request, archive: bool | None, comment: str) -> Json:
    body: Json = {"name": request.candidate.model, "version": request.candidate.version,
                  "stage": request.target.name, "comment": comment}  # fmt: skip
    if archive is not None:  # the approval requires it; the rejection does not take it
        body["archive_existing_versions"] = archive
    return body


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
