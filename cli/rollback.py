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
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import redis
from redis.exceptions import LockNotOwnedError

from shared import keys
from shared.errors import ConfigError, MlflowNotFound
from shared.evaluation import Decision
from shared.events import Origin, RegistryKind
from shared.outcomes import Outcome
from shared.policy import Target
from shared.settings import Settings
from worker.decisions import DecisionLog, Record, record
from worker.registries import one
from worker.registry import Registry

POLICY = "operator-rollback"
_COUNTED = (Outcome.APPROVED.value, Outcome.REJECTED.value, Outcome.ROLLED_BACK.value)


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
        if entry.get("outcome") == Outcome.APPROVED.value:
            approved.append(version)
    return approved


def rollback(
    settings: Settings,
    model: str,
    target_text: str,
    reason: str,
    *,
    registry_kind: RegistryKind,
    echo: Callable[[str], None],
) -> int:
    if not reason.strip():
        raise ConfigError("--reason must say why (it is recorded with the decision)")
    target = Target.parse(target_text)
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
        registry = one(settings, registry_kind, client)
        if not target.is_stage and not registry.has_aliases:
            raise ConfigError(
                f"--target {target_text!r} is not a stage: {registry.name}'s registry has stages "
                "(Staging, Production, Archived), not aliases"
            )
        return _rollback(registry, DecisionLog(client), model, target, reason.strip(), echo)
    finally:
        with contextlib.suppress(LockNotOwnedError):  # expired meanwhile: nothing to release
            lock.release()


def _rollback(
    registry: Registry,
    log: DecisionLog,
    model: str,
    target: Target,
    reason: str,
    echo: Callable[[str], None],
) -> int:
    current = registry.holder(model, target)
    history = approved_history(log.recent(model=model, limit=keys.DECISIONS_MAX), target.name)
    pointer = registry.approved(model, target)
    if pointer is not None and pointer not in history:
        history.append(pointer)  # the audit trail is bounded; the gate's own memory is not
    previous = None
    for version in (v for v in history if v != current):
        try:
            registry.version(model, version)
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
    registry.remember(model, target, previous)  # before the move: its own event finds it
    registry.put(model, target, previous, archive=True, note=f"rollback by operator: {reason}")
    text = (
        f"rollback by operator: {reason}. {target.kind.capitalize()} '{target}' moved from "
        f"version {current or '(none)'} back to version {previous}, the previous version the "
        "gate approved."
    )
    decision = Decision(True, target, (POLICY,), (), text)
    approval = Record(
        registry=registry.kind,
        model=model,
        version=previous,
        decision=decision,
        outcome=Outcome.APPROVED,
        reason=text,
        event_id=f"rollback-{uuid.uuid4().hex}",
        origin=Origin.OPERATOR,
        decided_at=datetime.now(timezone.utc),
    )
    record(registry, log, approval)
    if current is not None:
        record(registry, log, replace(approval, version=current, outcome=Outcome.ROLLED_BACK))
    echo(f"rolled back {where}: version {current or '(none)'} -> version {previous}")
    return 0
