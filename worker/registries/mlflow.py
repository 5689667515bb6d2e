"""Open-source MLflow's model registry, over its REST API.

A request is the version's `governance.request` tag; an approval sets the alias or transitions
the stage; a decision is shown on the version's `governance.*` tags. What the gate approved for
a target is the gate's ledger; the registered-model tag `governance.approved.<target>` is a copy
for engineers, never read back (anyone who may set an alias may also write a tag).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

from shared import tags
from shared.errors import MlflowNotFound
from shared.evaluation import Decision, VersionFacts
from shared.events import GateEvent, Kind, RegistryKind, found_by_sweep
from shared.policy import STAGES, PolicySet, Target
from shared.settings import Settings
from worker.registries.endpoints import Endpoints, tag_map
from worker.registry import Request
from worker.rest import RestClient, Service

log = logging.getLogger(__name__)

# The stages a version can be moved into and a policy can govern.
GOVERNABLE = tuple(s for s in STAGES if s != "None")


def service(settings: Settings) -> Service:
    basic = None
    if settings.mlflow_username and settings.mlflow_password:
        basic = (settings.mlflow_username, settings.mlflow_password)
    return Service(
        name="MLflow",
        base_url=settings.mlflow_tracking_uri,
        token=settings.mlflow_token,
        basic_auth=basic,
        verify_tls=not settings.mlflow_insecure_tls,
        timeout=settings.mlflow_timeout_seconds,
        credentials_hint="check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD",
        down_hint="check that the tracking server is up",
    )


def undecided(version_tags: Mapping[str, str]) -> bool:
    """Whether the version's request has no decision answering it.

    MLflow keeps no time on tags, so a request set again to the target already decided looks
    decided; its own webhook is what decides it (and the engineer can set it once more).
    """
    requested = version_tags.get(tags.REQUEST)
    if requested is None:
        return False
    decided = version_tags.get(tags.TARGET)
    return tags.STATUS not in version_tags or decided != Target.parse(requested).name


class MlflowRegistry:
    kind = RegistryKind.MLFLOW
    name = "MLflow"
    has_aliases = True
    moves_outside_are_violations = False

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest
        self.api = Endpoints(rest)
        # What this event's decision read (or wrote) of versions' and registered models' tags
        # and of aliases, so that it writes only what changes, without reading it again.
        self._known = KnownTags()

    def healthy(self) -> bool:
        return self.rest.answers("GET", "/health")

    def forget(self) -> None:
        self._known.clear()

    # -- facts -----------------------------------------------------------------------------
    def version(self, model: str, version: str) -> VersionFacts:
        mv = self.api.model_version(model, version)
        facts = self.api.version_facts(mv)
        self._known.read((model, version), facts.tags)
        for alias in _strings(mv.get("aliases")):  # MLflow lists the aliases on the version
            self._known.holds(model, alias, facts.version)
        return facts

    def holder(self, model: str, target: Target) -> str | None:
        if target.is_stage:
            return self.api.newest_in_stage(model, target.name)
        rm = self.api.registered_model(model)
        self._known.read((model, None), tag_map(rm))
        for alias, version in _aliases(rm).items():
            self._known.holds(model, alias, version)
        return _aliases(rm).get(target.name)

    def request(self, model: str, version: str, target: Target | None) -> Request | None:
        candidate = self.version(model, version)
        requested = candidate.tags.get(tags.REQUEST)
        if requested is None:
            return None
        return Request(
            candidate=candidate,
            target=Target.parse(requested),
            requested_by=candidate.tags.get(tags.REQUESTED_BY) or None,
            decided=not undecided(candidate.tags),
        )

    def ask(self, model: str, version: str, target: Target, requested_by: str) -> None:
        """The tags an engineer would set, the requester first: the request's webhook finds it
        (the gate's ledger, not this tag, is what it trusts about who asked)."""
        self.api.model_version(model, version)  # MlflowNotFound: no such version
        self.api.set_version_tag(model, version, tags.REQUESTED_BY, requested_by)
        self.api.set_version_tag(model, version, tags.REQUEST, target.name)

    # -- what the gate approved -------------------------------------------------------------
    def show_approval(self, model: str, target: Target, version: str) -> None:
        key = tags.approved_pointer(target.name)
        if self._known.has((model, None), key, version):
            return
        self.api.set_model_tag(model, key, version)
        self._known.wrote((model, None), key, version)

    # -- acts ------------------------------------------------------------------------------
    def approve(self, request: Request, decision: Decision, archive: bool) -> str:
        model, version, target = request.candidate.model, request.candidate.version, request.target
        if not target.is_stage:
            # Already there as this decision read it (asked again): setting it again would
            # change nothing and come back as a webhook. Moved by someone since the read, the
            # move's own webhook is guarded, as a move just after this set would be.
            if not self._known.held(model, target.name, version):
                self.api.set_alias(model, target.name, version)
                self._known.holds(model, target.name, version)
            return f"Alias '{target.name}' now points to version {version}."
        if request.candidate.stage == target.name:
            return f"Version {version} was already in stage {target.name}."
        self.api.transition_stage(model, version, target.name, archive)
        extra = " (versions already there archived)" if archive else ""
        return f"Version {version} moved to stage {target.name}{extra}."

    def reject(self, request: Request, decision: Decision) -> str:
        return ""  # the version stays where it is; the tags say why

    def put(self, model: str, target: Target, version: str, *, archive: bool, note: str) -> None:
        if target.is_stage:
            self.api.transition_stage(model, version, target.name, archive)
        else:
            self.api.set_alias(model, target.name, version)
            self._known.holds(model, target.name, version)

    def take_off(
        self, model: str, target: Target, version: str, *, back_to: str | None, note: str
    ) -> str:
        if target.is_stage:
            stage = back_to if back_to and back_to != target.name else "None"
            self.api.transition_stage(model, version, stage, False)
            return f"version {version} was moved back to stage {stage}"
        with contextlib.suppress(MlflowNotFound):  # removed meanwhile: the outcome we want
            self.api.delete_alias(model, target.name)
        self._known.holds(model, target.name, None)
        return "the alias was removed"

    def show(self, model: str, version: str, tags_to_write: Mapping[str, str]) -> None:
        """Write the decision's tags in their order (status last), skipping each one the version
        already has with that value, as the decision read it: each write costs a call and
        comes back as a webhook that MLflow pays to send."""
        for key, value in tags_to_write.items():
            if self._known.has((model, version), key, value):
                continue
            self.api.set_version_tag(model, version, key, value)
            self._known.wrote((model, version), key, value)

    # -- the sweep -------------------------------------------------------------------------
    def sweep(self, policies: PolicySet) -> Iterator[GateEvent]:
        """Versions whose request has no decision answering it; the holders of governed
        aliases; and every version in a governed stage (MLflow sends no webhook for stage
        transitions: the sweep is what guards stages)."""
        for mv in self.api.search_versions(f"tags.`{tags.REQUEST}` LIKE '%'"):
            version_tags = tag_map(mv)
            if undecided(version_tags):
                target = Target.parse(version_tags[tags.REQUEST]).name
                yield found_by_sweep(
                    RegistryKind.MLFLOW, Kind.REQUEST, str(mv["name"]), str(mv["version"]), target
                )
        for rm in self.api.search_models():
            model = str(rm["name"])
            for entry in rm.get("aliases", []):
                alias, version = str(entry["alias"]), str(entry["version"])
                if policies.governs(model, Target(alias, is_stage=False)):
                    yield found_by_sweep(
                        RegistryKind.MLFLOW, Kind.ALIAS_CREATED, model, version, alias
                    )
            stages = {s for s in GOVERNABLE if policies.governs(model, Target(s, is_stage=True))}
            if not stages:
                continue  # no policy governs a stage of it: no more calls
            for mv in self.api.versions_of(model):
                stage = str(mv.get("current_stage") or "")
                if stage in stages:
                    yield found_by_sweep(
                        RegistryKind.MLFLOW,
                        Kind.STAGE_TRANSITIONED,
                        model,
                        str(mv["version"]),
                        stage,
                    )


class KnownTags:
    """The tags of the versions (model, version) and registered models (model, None), and the
    aliases' holders, as this event's decision read them last (or wrote them), kept for the
    most recent `size` entities. Cleared for each event (`MlflowRegistry.forget`): a decision
    reads its version (and, for a comparison, its registered model) before it writes, so this is
    what the registry showed during the decision; an earlier event's read may be stale (another
    worker process, or a person, may have written since)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._tags: dict[tuple[str, str | None], dict[str, str]] = {}
        self._holders: dict[tuple[str, str], str | None] = {}

    def clear(self) -> None:
        self._tags.clear()
        self._holders.clear()

    def holds(self, model: str, alias: str, version: str | None) -> None:
        """`alias` of `model` was seen on `version` (None: seen removed)."""
        self._holders[(model, alias)] = version

    def held(self, model: str, alias: str, version: str) -> bool:
        return self._holders.get((model, alias), None) == version

    def read(self, entity: tuple[str, str | None], found: Mapping[str, str]) -> None:
        self._tags.pop(entity, None)
        self._tags[entity] = dict(found)
        while len(self._tags) > self.size:
            del self._tags[next(iter(self._tags))]

    def has(self, entity: tuple[str, str | None], key: str, value: str) -> bool:
        known = self._tags.get(entity)
        return known is not None and known.get(key) == value

    def wrote(self, entity: tuple[str, str | None], key: str, value: str) -> None:
        known = self._tags.get(entity)
        if known is not None:
            known[key] = value


def _aliases(rm: Mapping[str, object]) -> dict[str, str]:
    """A registered model's aliases and the version each points to."""
    aliases = rm.get("aliases")
    return {
        str(entry["alias"]): str(entry["version"])
        for entry in (aliases if isinstance(aliases, list) else [])
        if isinstance(entry, dict) and "alias" in entry and "version" in entry
    }


def _strings(items: object) -> list[str]:
    return [str(item) for item in items] if isinstance(items, list) else []
