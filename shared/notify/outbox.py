"""The Notify a decision hands its notices to: one delivery per sink that wants the notice,
published to the workers (shared.queue routes deliveries to the deliver task). Nothing here
talks to a sink, so a sink that is down never delays a decision."""

from __future__ import annotations

from shared.notices import Notice, Notify
from shared.notify import messages
from shared.notify.delivery import Delivery, delivery_id
from shared.policy import PolicySet, Sink
from shared.queue import Publish


def outbox(policies: PolicySet, publish: Publish) -> Notify:
    """A Notify publishing each notice's deliveries. A publish error (Redis down) propagates:
    the caller decides; calling again with the same notice makes the same delivery ids."""

    def notify(notice: Notice) -> None:
        for delivery in deliveries(policies, notice):
            publish(delivery.to_dict())

    return notify


def sinks_for(policies: PolicySet, notice: Notice) -> list[Sink]:
    """The top-level sinks and those of the policies the notice names, that want its type; a
    sink configured in several places is notified once."""
    named = set(notice.policies)
    candidates = [*policies.notify]
    for policy in policies.policies:
        if policy.name in named:
            candidates.extend(policy.notify)
    chosen: dict[str, Sink] = {}
    for sink in candidates:
        if sink.wants(notice.type):
            chosen.setdefault(sink.key, sink)
    return list(chosen.values())


def deliveries(policies: PolicySet, notice: Notice) -> list[Delivery]:
    body = messages.body(notice)
    model, version = body["data"].get("model"), body["data"].get("version")
    return [
        Delivery(
            delivery_id=delivery_id(notice.key, notice.type, sink.key),
            sink=sink.key,
            notice_type=notice.type,
            notice_key=notice.key,
            body=body,
            model=None if model is None else str(model),
            version=None if version is None else str(version),
        )
        for sink in sinks_for(policies, notice)
    ]
