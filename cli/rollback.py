"""`mlflow-gate rollback`: put an alias or a stage back on the previous version the gate approved.

For the 2 a.m. emergency: no policy is evaluated (the version passed it when it was approved), the
move is recorded as a decision with the operator's reason, and decisions on the model are held
off meanwhile by the model's lock.

"The previous version the gate approved" comes from the audit trail (`gate:decisions`): the most
recent version, other than the current holder, whose latest decision for the target is an
approval (a version rolled back from, or rejected since, does not count), that still exists.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import redis
from redis.exceptions import LockNotOwnedError

from shared import keys, tags
from shared.errors import ConfigError, MlflowNotFound
from shared.evaluation import Decision
from shared.policy import Target
from shared.settings import Settings
from worker.decisions import DecisionLog, Record, record
from worker.facts import holder_version, tag_map
from worker.mlflow_api import MlflowApi

ROLLED_BACK = "rolled_back"
POLICY = "operator-rollback"
_COUNTED = (tags.APPROVED, tags.REJECTED, ROLLED_BACK)


def approved_history(entries: Iterable[Mapping[str, Any]], target: str) -> list[str]:
    """Versions whose latest decision for `target` is an approval, newest first.

    `entries` are audit-trail entries of one model, newest first.
    """
    seen: set[str] = set()
    approved: list[str] = []
    for entry in entries:
        if entry.get("target") != target or entry.get("outcome") not in _COUNTED:
            continue
        version = str(entry.get("version"))
        if version in seen:
            continue
        seen.add(version)
        if entry.get("outcome") == tags.APPROVED:
            approved.append(version)
    return approved


def rollback(
    settings: Settings,
    model: str,
    target_text: str,
    reason: str,
    *,
    databricks: bool,
    echo: Callable[[str], None],
) -> int:
    if not reason.strip():
        raise ConfigError("--reason must say why (it is recorded with the decision)")
    target = Target.parse(target_text)
    if databricks and not target.is_stage:
        raise ConfigError(
            f"--target {target_text!r} is not a stage: Databricks' workspace registry has stages "
            "(Staging, Production, Archived), not aliases"
        )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    lock = client.lock(
        keys.model_lock(model),
        timeout=settings.model_lock_seconds,
        blocking_timeout=max(settings.model_lock_seconds, 10.0),
    )
    if not lock.acquire():
        echo(f"model {model} is locked by a decision in progress; try again in a minute")
        return 1
    try:
        flavour = _Databricks(settings, client) if databricks else _OpenSource(settings)
        return _rollback(flavour, DecisionLog(client), model, target, reason.strip(), echo)
    finally:
        with contextlib.suppress(LockNotOwnedError):  # expired meanwhile: nothing to release
            lock.release()


def _rollback(
    flavour: _OpenSource,
    log: DecisionLog,
    model: str,
    target: Target,
    reason: str,
    echo: Callable[[str], None],
) -> int:
    current = flavour.holder(model, target)
    history = approved_history(log.recent(model=model, limit=keys.DECISIONS_MAX), target.name)
    pointer = flavour.pointer(model, target)
    if pointer is not None and pointer not in history:
        history.append(pointer)  # the audit trail is bounded; the model's tag is not
    previous = None
    for version in (v for v in history if v != current):
        try:
            flavour.api.get_model_version(model, version)
        except MlflowNotFound:
            continue  # deleted since
        previous = version
        break
    where = f"{target.kind} '{target}' of {model}"
    if previous is None:
        held = f"held by version {current}" if current else "held by no version"
        echo(
            f"cannot roll back {where} ({held}): the gate approved no other version for it that "
            "still exists; nothing changed"
        )
        return 1
    flavour.move(model, target, previous, reason)
    now = datetime.now(timezone.utc)
    event_id = f"rollback-{uuid.uuid4().hex}"
    text = (
        f"rollback by operator: {reason}. {target.kind.capitalize()} '{target}' moved from "
        f"version {current or '(none)'} back to version {previous}, the previous version the "
        "gate approved."
    )
    decision = Decision(True, target, (POLICY,), (), text)
    flavour.record(log, Record(model, previous, decision, text, event_id, now))
    if current is not None:
        entry = Record(model, current, decision, text, event_id, now).log_entry()
        entry["outcome"] = ROLLED_BACK
        log.append(entry)
    echo(f"rolled back {where}: version {current or '(none)'} -> version {previous}")
    return 0


class _OpenSource:
    """Open-source MLflow: move the alias (or transition the stage), keep the pointer tag."""

    def __init__(self, settings: Settings) -> None:
        self.api: MlflowApi = MlflowApi(settings)

    def holder(self, model: str, target: Target) -> str | None:
        return holder_version(self.api, model, target)

    def pointer(self, model: str, target: Target) -> str | None:
        rm = self.api.get_registered_model(model)
        return tag_map(rm).get(tags.approved_pointer(target.name))

    def move(self, model: str, target: Target, version: str, reason: str) -> None:
        # The pointer first: the alias's own webhook then finds the version already approved.
        self.api.set_model_tag(model, tags.approved_pointer(target.name), version)
        if target.is_stage:
            self.api.transition_stage(model, version, target.name, archive_existing=True)
        else:
            self.api.set_alias(model, target.name, version)

    def record(self, log: DecisionLog, rec: Record) -> None:
        record(self.api, log, rec)


class _Databricks(_OpenSource):
    """Databricks' workspace registry: transition the stage with a comment; the gate's approval
    is noted first so that the transition's own webhook is not taken for a violation."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        from worker.databricks_api import DatabricksApi
        from worker.transition_requests import COMMENT_PREFIX, Approvals

        self.databricks = DatabricksApi(settings)
        self.api = self.databricks
        self.approvals = Approvals(client)
        self.comment_prefix = COMMENT_PREFIX

    def pointer(self, model: str, target: Target) -> str | None:
        return None  # the audit trail is the only history

    def move(self, model: str, target: Target, version: str, reason: str) -> None:
        self.approvals.add(model, target.name, version)
        self.databricks.transition_stage_with_comment(
            model,
            version,
            target.name,
            archive_existing_versions=True,
            comment=f"{self.comment_prefix}rollback by operator: {reason}",
        )

    def record(self, log: DecisionLog, rec: Record) -> None:
        log.append(rec.log_entry())  # Databricks: the comment on the version, no gate tags
