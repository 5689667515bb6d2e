"""The reconciliation sweep: webhooks are not a guarantee, so look in MLflow for what is owed.

MLflow delivers webhooks from an in-memory pool with a few retries; a receiver down for longer,
or an MLflow restart, loses them silently. The sweep finds
- versions whose `governance.request` has no decision answering it, and
- protected aliases held by a version the gate did not approve,
and enqueues their reconciliation like any webhook.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from shared import tags
from shared.events import GateEvent, Kind
from shared.policy import PolicySet, Target
from shared.queue import Publish
from worker.facts import tag_map
from worker.mlflow_api import Json, MlflowApi

SWEEP_SOURCE = "sweep"


def undecided(version_tags: dict[str, str]) -> bool:
    """Whether the version's request has no decision answering it.

    MLflow keeps no time on tags, so a request set again to the target already decided looks
    decided; its own webhook is what decides it (and the engineer can set it once more).
    """
    requested = version_tags.get(tags.REQUEST)
    if requested is None:
        return False
    decided = version_tags.get(tags.TARGET)
    return tags.STATUS not in version_tags or decided != Target.parse(requested).name


@dataclass
class SweepReport:
    requests: int = 0
    aliases: int = 0

    def __str__(self) -> str:
        return (
            f"sweep enqueued {self.requests} undecided requests, {self.aliases} unapproved aliases"
        )


def sweep(api: MlflowApi, policies: PolicySet, publish: Publish) -> SweepReport:
    report = SweepReport()
    for mv in api.search_model_versions(f"tags.`{tags.REQUEST}` LIKE '%'"):
        if undecided(tag_map(mv)):
            publish(_event(Kind.REQUEST, str(mv["name"]), str(mv["version"]), None))
            report.requests += 1
    for rm in _registered_models(api):
        approved = tag_map(rm)
        for entry in rm.get("aliases", []):
            alias, version = str(entry["alias"]), str(entry["version"])
            protected = policies.governs(str(rm["name"]), Target(alias, is_stage=False))
            if protected and approved.get(tags.approved_pointer(alias)) != version:
                publish(_event(Kind.ALIAS_CREATED, str(rm["name"]), version, alias))
                report.aliases += 1
    return report


def _registered_models(api: MlflowApi) -> Iterator[Json]:
    token = None
    while True:
        params = {"max_results": "200", **({"page_token": token} if token else {})}
        body = api.call("GET", "/api/2.0/mlflow/registered-models/search", params=params)
        yield from body.get("registered_models", [])
        token = body.get("next_page_token")
        if not token:
            return


def _event(kind: Kind, model: str, version: str | None, target: str | None) -> dict[str, object]:
    return GateEvent(
        event_id=f"sweep-{uuid.uuid4()}",
        source=SWEEP_SOURCE,
        kind=kind,
        model=model,
        version=version,
        target=target,
        received_at=time.time(),
        webhook_event=SWEEP_SOURCE,
    ).to_dict()
