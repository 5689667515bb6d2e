"""The receiver's enqueue: one Redis round trip that dedupes and persists an event atomically.

Before it, an acknowledgement cost three round trips (claim the delivery id as "pending", publish
through Celery, mark the delivery id done), and most of the request's time was spent waiting for
Redis on a machine that Redis shares (bench/README.md has the profile). Here a Lua script claims
the delivery id and pushes the task message in one step: either both happen or neither, so a
duplicate is never acknowledged for an event that was not queued, and an acknowledged event is in
Redis before the 202 (and, with append-only persistence, in its log).

The message is the one `shared.queue.publisher()` sends: Celery's own task message (protocol 2,
built by Celery's `as_task_v2`) for `gate.reconcile` on the `gate.events` queue, wrapped as
kombu's Redis transport stores it. tests/unit/test_receiver_enqueue.py checks that the two
messages are alike, so that a change of routing in `publisher()` shows up there.
"""

from __future__ import annotations

import base64
import json
import uuid
from enum import Enum
from typing import Any

import redis
from celery import Celery

from shared import keys

# A delivery marker an older receiver sets while it publishes (three round trips): a copy that
# meets it must not be acknowledged yet, since that publish may still fail.
PENDING = b"pending"

# KEYS: the delivery marker, the queue. ARGV: the event id, the dedupe TTL, the message.
# Returns 1 (queued), 0 (a duplicate) or 2 (being queued by an older receiver: retry shortly).
# A push Redis refuses takes the marker back, so that MLflow's retry is not a "duplicate".
_ENQUEUE_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local pushed = redis.pcall('LPUSH', KEYS[2], ARGV[3])
  if type(pushed) == 'table' and pushed.err then
    redis.call('DEL', KEYS[1])
    return pushed
  end
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[4] then
  return 2
end
return 0
"""


class Queued(int, Enum):
    DUPLICATE = 0
    QUEUED = 1
    IN_PROGRESS = 2


class TaskMessages:
    """Builds the Celery task message of an event, exactly as `publisher()` would send it."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def reconcile(self, event: dict[str, Any]) -> bytes:
        task_id = str(uuid.uuid4())
        args = [event]
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id,
            keys.TASK_RECONCILE,
            args=args,
            kwargs={},
            reply_to=self.app.thread_oid,
            ignore_result=None,
            # What Celery's saferepr would give for an event (a flat dict of strings and
            # numbers), at a tenth of its cost: it was a sixth of an acknowledgement's time.
            argsrepr=repr(args)[: self.app.amqp.argsrepr_maxsize],
            kwargsrepr="{}",
        )
        envelope = {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": 2,  # persistent
                "delivery_info": {"exchange": "", "routing_key": keys.QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope).encode()


class AtomicEnqueue:
    """Queue an event once per delivery marker, in one round trip (one EVALSHA)."""

    def __init__(self, client: redis.Redis, messages: TaskMessages, dedupe_ttl: int) -> None:
        self.messages = messages
        self.dedupe_ttl = dedupe_ttl
        self._script = client.register_script(_ENQUEUE_ONCE)

    def __call__(self, marker: str, event: dict[str, Any]) -> Queued:
        """Raises redis.RedisError when Redis does not answer or refuses the push."""
        message = self.messages.reconcile(event)
        args = [event["event_id"], self.dedupe_ttl, message, PENDING]
        return Queued(int(self._script(keys=[marker, keys.QUEUE], args=args)))
