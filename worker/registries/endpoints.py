"""The MLflow model-registry REST endpoints the gate calls, over one RestClient.

Open-source MLflow serves them all; a workspace registry built on MLflow serves the same reads and
stage transitions (and has its own endpoints for transition requests on top).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared import tags
from shared.errors import MlflowForbidden, MlflowNotFound, MlflowRequestError
from shared.evaluation import RunFacts, VersionFacts
from worker.rest import Json, RestClient

MODEL_VERSIONS = "/api/2.0/mlflow/model-versions"
REGISTERED_MODELS = "/api/2.0/mlflow/registered-models"


class Endpoints:
    def __init__(self, rest: RestClient) -> None:
        self.rest = rest

    # -- reads -----------------------------------------------------------------------------
    def model_version(self, name: str, version: str) -> Json:
        params = {"name": name, "version": version}
        return dict(self.rest.call("GET", f"{MODEL_VERSIONS}/get", params=params)["model_version"])

    def registered_model(self, name: str) -> Json:
        body = self.rest.call("GET", f"{REGISTERED_MODELS}/get", params={"name": name})
        return dict(body["registered_model"])

    def run(self, run_id: str) -> Json:
        return dict(
            self.rest.call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})["run"]
        )

    def search_versions(self, filter_string: str) -> Iterator[Json]:
        return self.rest.pages(
            f"{MODEL_VERSIONS}/search", "model_versions", {"filter": filter_string}
        )

    def versions_of(self, model: str) -> Iterator[Json]:
        return self.search_versions(name_filter(model))

    def search_models(self) -> Iterator[Json]:
        return self.rest.pages(f"{REGISTERED_MODELS}/search", "registered_models")

    def version_facts(self, mv: Json) -> VersionFacts:
        """A model version as the evaluation sees it, with its run read once.

        A run that does not exist is a fact (a check fails on it, saying so). A run the gate may
        not read (401, 403) is not: the gate's credentials are at fault, so MlflowForbidden is
        raised and the event dead-lettered until they are fixed, whoever's run it is (the
        candidate's, or a compared target's holder's)."""
        run_id = mv.get("run_id") or None
        run: RunFacts | None = None
        problem: str | None = None
        if run_id:
            try:
                run = run_facts(self.run(run_id))
            except MlflowNotFound:
                problem = "the run does not exist (deleted?), so its metrics and tags are unknown"
            except MlflowForbidden as exc:
                raise MlflowForbidden(
                    f"cannot read run {run_id} of version {mv.get('version')} of model "
                    f"{mv.get('name')!r}: {exc}",
                    exc.status,
                    exc.error_code,
                ) from exc
            except MlflowRequestError as exc:
                problem = f"the run could not be read: {exc}"
        recorded = str(mv.get("user_id") or "") or None
        run_user = (run.tags.get(tags.RUN_USER) if run else None) or None
        creator = recorded or run_user
        source = "registry" if recorded else ("run" if run_user else None)
        return VersionFacts(
            model=str(mv["name"]),
            version=str(mv["version"]),
            description=str(mv.get("description") or ""),
            tags=tag_map(mv),
            run_id=run_id,
            run=run,
            run_problem=problem,
            created_by=creator,
            created_by_source=source,
            stage=str(mv.get("current_stage") or "None"),
        )

    def newest_in_stage(self, model: str, stage: str) -> str | None:
        in_stage = [
            int(v["version"]) for v in self.versions_of(model) if v.get("current_stage") == stage
        ]
        return str(max(in_stage)) if in_stage else None

    # -- writes ----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: str) -> None:
        body = {"name": name, "alias": alias, "version": version}
        self.rest.call("POST", f"{REGISTERED_MODELS}/alias", json=body)

    def delete_alias(self, name: str, alias: str) -> None:
        self.rest.call("DELETE", f"{REGISTERED_MODELS}/alias", json={"name": name, "alias": alias})

    def transition_stage(self, name: str, version: str, stage: str, archive: bool) -> None:
        body = {
            "name": name,
            "version": version,
            "stage": stage,
            "archive_existing_versions": archive,
        }
        self.rest.call("POST", f"{MODEL_VERSIONS}/transition-stage", json=body)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        body = {"name": name, "version": version, "key": key, "value": value}
        self.rest.call("POST", f"{MODEL_VERSIONS}/set-tag", json=body)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        body = {"name": name, "key": key, "value": value}
        self.rest.call("POST", f"{REGISTERED_MODELS}/set-tag", json=body)


def run_facts(run: Json) -> RunFacts:
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


def name_filter(name: str) -> str:
    """A model-versions search filter matching exactly the model called `name`.

    MLflow's filter parser never undoes escapes inside a quoted string (`name='o\\'brien'` looks
    for a name with a backslash in it), so a name holding a quote or a backslash cannot be
    written as `name='...'`. It reads a list after IN as a Python literal (ast.literal_eval),
    where Python's repr of the name reads back exactly. Other names keep the plain form, the
    one the workspace registry documents. (Joined to another clause, IN needs an explicit AND.)
    """
    if "'" in name or "\\" in name:
        return f"name IN ({name!r})"
    return f"name='{name}'"
