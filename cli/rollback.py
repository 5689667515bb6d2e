"""`mlflow-gate rollback`: put an alias or a stage back on the previous version the gate approved.

For the 2 a.m. emergency: no policy is evaluated (the version passed it when it was approved), the
move is recorded in the ledger as a decision with the operator's reason (and the holder's
approval revoked, so it does not count as approved again), and decisions on the model are held
off meanwhile by the model's lock.

"The previous version the gate approved" comes from the ledger: the newest version, other than
the current holder, whose latest approval for the target was not revoked, that still exists.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Callable

import redis
from redis.exceptions import LockNotOwnedError

from shared.errors import ConfigError
from shared.events import RegistryKind
from shared.ledger import Ledger
from shared.policy import PolicySet, Target
from shared.settings import Settings
from worker.lock import ModelLock
from worker.pipeline import Pipeline
from worker.registries import Registries, one


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
    registry = one(settings, registry_kind)
    if not target.is_stage and not registry.has_aliases:
        raise ConfigError(
            f"--target {target_text!r} is not a stage: {registry.name}'s registry has stages "
            "(Staging, Production, Archived), not aliases"
        )
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    lock = ModelLock(client, model, settings.model_lock_seconds)
    if not lock.acquire(wait=max(settings.model_lock_seconds, 10.0)):
        echo(f"model {model} is locked by a decision in progress; try again in a minute")
        return 1
    try:
        with Ledger(settings.database_url) as ledger:
            ledger.check_current()
            pipeline = Pipeline(Registries({registry_kind: registry}), PolicySet(()), ledger)
            current, previous = pipeline.roll_back(
                registry_kind, model, target, reason.strip(), acted_by=_operator(),
                keep=lock.keep,
            )  # fmt: skip
    finally:
        with contextlib.suppress(LockNotOwnedError):  # expired meanwhile: nothing to release
            lock.release()
    where = f"{target.kind} '{target}' of {model}"
    if previous is None:
        held = f"held by version {current}" if current else "held by no version"
        echo(
            f"cannot roll back {where} ({held}): the gate approved no other version for it that "
            "still exists; nothing changed"
        )
        return 1
    echo(f"rolled back {where}: version {current or '(none)'} -> version {previous}")
    return 0


def _operator() -> str | None:
    """Who runs the command, as the operating system knows them."""
    try:
        return f"operator {getpass.getuser()}"
    except (KeyError, OSError):
        return None
