"""Read from MLflow, once each, the facts a decision needs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shared import tags
from shared.errors import MlflowNotFound, MlflowRequestError
from shared.evaluation import Facts, RunFacts, VersionFacts
from shared.policy import CompareRule, Policy, Target
from worker.mlflow_api import Json, MlflowApi


def gather(
    api: MlflowApi,
    candidate_version: Json,
    target: Target,
    policies: Sequence[Policy],
    *,
    registered_model: Json | None = None,
    now_ms: int | None = None,
    requested_by: str | None = None,
    stages_only: bool = False,
) -> Facts:
    """The candidate version with its run, and the current holder of each compared target.

    `now_ms` is the time of the decision (the wall clock if not given); `requested_by` who asked
    (else the version's governance.requested_by tag). With `stages_only` (a registry without
    aliases, e.g. Databricks' workspace registry) the holder of an alias is left unknown.
    """
    candidate = version_facts(api, candidate_version)
    model, version = candidate.model, candidate.version
    compared = {r.compare_to for p in policies for r in p.rules if isinstance(r, CompareRule)}
    holders: dict[Target, VersionFacts | None] = {}
    for other in sorted(compared, key=str):
        if stages_only and not other.is_stage:
            continue  # unknown: a compare_to rule on it fails closed
        holder = holder_version(api, model, other, registered_model)
        if holder is None:
            holders[other] = None
        elif holder == version:
            holders[other] = candidate
        else:
            holders[other] = version_facts(api, api.get_model_version(model, holder))
    return Facts(
        candidate=candidate,
        target=target,
        holders=holders,
        requested_by=requested_by or candidate.tags.get(tags.REQUESTED_BY) or None,
        now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )


def version_facts(api: MlflowApi, mv: Json) -> VersionFacts:
    run_id = mv.get("run_id") or None
    run: RunFacts | None = None
    problem: str | None = None
    if run_id:
        try:
            run = _run_facts(api.get_run(run_id))
        except MlflowNotFound:
            problem = "the run does not exist (deleted?), so its metrics and tags are unknown"
        except MlflowRequestError as exc:
            problem = f"the run could not be read: {exc}"
    creator = str(mv.get("user_id") or "") or (run.tags.get(tags.RUN_USER) if run else None)
    return VersionFacts(
        model=str(mv["name"]),
        version=str(mv["version"]),
        description=str(mv.get("description") or ""),
        tags=_pairs(mv.get("tags")),
        run_id=run_id,
        run=run,
        run_problem=problem,
        created_by=creator or None,
    )


def holder_version(
    api: MlflowApi, model: str, target: Target, registered_model: Json | None = None
) -> str | None:
    """Which version holds the target now: the alias's version, or the newest in the stage."""
    if target.is_stage:
        versions = api.search_model_versions(f"name='{_quote(model)}'")
        in_stage = [int(v["version"]) for v in versions if v.get("current_stage") == target.name]
        return str(max(in_stage)) if in_stage else None
    rm = registered_model if registered_model is not None else api.get_registered_model(model)
    for entry in rm.get("aliases", []):
        if entry.get("alias") == target.name:
            return str(entry["version"])
    return None


def _run_facts(run: Json) -> RunFacts:
    data = run.get("data", {})
    metrics = {
        str(m["key"]): float(m["value"])
        for m in data.get("metrics", [])
        if isinstance(m, dict) and "key" in m and "value" in m
    }
    start = run["info"].get("start_time")
    return RunFacts(
        run_id=str(run["info"]["run_id"]),
        metrics=metrics,
        tags=_pairs(data.get("tags")),
        start_time_ms=int(start) if start not in (None, "") else None,
    )


def tag_map(entity: Json) -> dict[str, str]:
    """The tags of a model version or registered model, as MLflow's REST API lists them."""
    return _pairs(entity.get("tags"))


def _pairs(items: Any) -> dict[str, str]:
    if not isinstance(items, list):
        return {}
    return {str(t["key"]): str(t.get("value", "")) for t in items if isinstance(t, dict)}


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
