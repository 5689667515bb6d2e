"""The Databricks sweep: registry webhooks are not a guarantee either, so look in the workspace
for the transition requests still open.

A TRANSITION_REQUEST_CREATED webhook Databricks could not deliver would leave its request open
for good. Each interval the sweep lists the workspace's registered models
(`registered-models/list`), keeps those a policy covers for at least one stage, lists their
versions (`model-versions/search`, Archived ones skipped) and each version's open transition
requests (`transition-requests/list`), and enqueues every open request to a governed stage like
its webhook. Its cost: one call per governed version per interval, plus the listing pages.

A sweep event whose request is no longer open when the worker gets to it (its webhook decided
it first) records nothing: see DatabricksReconciler.request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from shared.events import DATABRICKS_SWEEP_SOURCE, GateEvent, Kind
from shared.policy import STAGES, PolicySet, Target
from shared.queue import Publish
from worker.databricks_api import DatabricksApi
from worker.mlflow_api import Json

MODELS_LIST = "/api/2.0/mlflow/registered-models/list"
MODELS_PAGE = 1000  # the documented maximum of registered-models/list


@dataclass
class DatabricksSweepReport:
    models: int = 0  # governed models looked at
    versions: int = 0  # their versions whose open requests were listed
    requests: int = 0  # open requests to a governed stage, enqueued

    def __str__(self) -> str:
        return (
            f"Databricks sweep enqueued {self.requests} open transition requests "
            f"({self.versions} versions of {self.models} governed models looked at)"
        )


def governed_stages(policies: PolicySet, model: str) -> set[str]:
    """The stages of `model` that some policy covers."""
    return {s for s in STAGES if policies.governs(model, Target(s, is_stage=True))}


def sweep_databricks(
    api: DatabricksApi, policies: PolicySet, publish: Publish
) -> DatabricksSweepReport:
    report = DatabricksSweepReport()
    for rm in _registered_models(api):
        model = str(rm.get("name") or "")
        stages = governed_stages(policies, model) if model else set()
        if not stages:
            continue  # no policy governs a stage of it: no call at all
        report.models += 1
        for mv in api.search_model_versions(f"name='{_quote(model)}'"):
            if mv.get("current_stage") == "Archived":
                continue
            version = str(mv["version"])
            report.versions += 1
            enqueued: set[str] = set()
            for request in api.list_transition_requests(model, version):
                target = Target.parse(str(request.get("to_stage") or ""))
                if not target.is_stage or target.name not in stages or target.name in enqueued:
                    continue
                enqueued.add(target.name)  # the worker decides the newest request to a stage
                publish(_event(model, version, target.name, request.get("from_stage")))
                report.requests += 1
    return report


def _registered_models(api: DatabricksApi) -> Iterator[Json]:
    token = None
    while True:
        params = {"max_results": str(MODELS_PAGE), **({"page_token": token} if token else {})}
        body = api.call("GET", MODELS_LIST, params=params)
        yield from (m for m in body.get("registered_models", []) if isinstance(m, dict))
        token = body.get("next_page_token")
        if not token:
            return


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _event(model: str, version: str, stage: str, from_stage: object) -> dict[str, object]:
    return GateEvent(
        event_id=f"sweep-{uuid.uuid4()}",
        source=DATABRICKS_SWEEP_SOURCE,
        kind=Kind.TRANSITION_REQUESTED,
        model=model,
        version=version,
        target=stage,
        received_at=time.time(),
        webhook_event=DATABRICKS_SWEEP_SOURCE,
        from_stage=from_stage if isinstance(from_stage, str) else None,
    ).to_dict()
