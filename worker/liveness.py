"""Dead workers: heartbeats in Redis, and the rescue of the events a dead worker held.

A worker killed as a whole (SIGKILL to its process group, an out-of-memory kill of its
container) cannot give back its messages: kombu's Redis transport keeps them in its `unacked`
hash (and `unacked_index`, by delivery time) until the visibility timeout, an hour. So every
worker's main process, in a thread of its own:

- beats: writes `gate:worker:<id>` = the delivery tags it holds now (its channel's unacked
  messages: running, prefetched, waiting for a retry's countdown) and when it read them, to
  expire after GATE_WORKER_DEAD_AFTER_SECONDS; and keeps its id in `gate:workers`;
- rescues, once it has itself beaten without a break for that long (so that after its start,
  or after Redis was out of reach, the others have had the time to beat again): a message in
  `unacked` that no live worker holds, delivered before the oldest live
  heartbeat was taken (minus one beat, for the instant between a delivery and its tag being in
  the worker's memory), goes back to the queue, in one atomic step that checks it is still
  unacknowledged and unchanged (so two rescuers never both put it back); the model locks of a
  worker whose heartbeat expired are freed (their tokens start with its id, worker/lock.py).

A live worker, however slow its task, beats from its own thread: its messages are never taken
from it. A rescued event is handled again; the ledger makes that harmless (it finishes the
pending decision, or finds it decided), and the per-model lock keeps a decision of the dead
worker's that still runs somewhere (a worker cut off from Redis, not dead) from writing again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.signals import worker_init, worker_ready, worker_shutdown

from shared import keys
from shared.settings import Settings

log = logging.getLogger(__name__)

# This worker's id: its host, the pid of its main process, and a nonce (pids are reused). Its
# pool processes, forked from the main process, inherit it for their lock tokens.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

# KEYS: unacked, unacked_index, the queue. ARGV: the delivery tag, the entry as it was read, the
# message to push. Puts the message back at the head of the queue (consumers pop from the
# right) only if its entry is still there, unchanged: acknowledged meanwhile, or put back by
# another rescuer (or by kombu), it is left alone.
_RESCUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: a model lock. ARGV: a dead worker's token prefix. Frees the lock only if that worker
# holds it.
_FREE_LOCK = """
local token = redis.call('GET', KEYS[1])
if token and string.sub(token, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def beat_interval(dead_after: float) -> float:
    """How often a worker beats: six times per GATE_WORKER_DEAD_AFTER_SECONDS, so that a late
    beat or two never makes a live worker look dead."""
    return max(0.5, dead_after / 6)


@dataclass
class Rescue:
    """What one rescue pass did."""

    requeued: list[str] = field(default_factory=list)  # event ids (or delivery tags)
    dead_workers: list[str] = field(default_factory=list)
    locks_freed: int = 0

    def __bool__(self) -> bool:
        return bool(self.requeued or self.dead_workers)

    def summary(self) -> str:
        return (
            f"rescued {len(self.requeued)} event(s) of dead workers "
            f"({', '.join(self.requeued) or 'none'}); dead workers: "
            f"{', '.join(self.dead_workers) or 'none'}; model locks freed: {self.locks_freed}"
        )


class Liveness:
    """One worker's heartbeat, and the rescue of what dead workers held."""

    def __init__(
        self,
        client: redis.Redis,
        held: Callable[[], Collection[str]],
        dead_after: float,
        worker_id: str = WORKER_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.held = held
        self.dead_after = dead_after
        self.interval = beat_interval(dead_after)
        self.worker_id = worker_id
        self.clock = clock
        self._rescue = client.register_script(_RESCUE)
        self._free_lock = client.register_script(_FREE_LOCK)
        self._beating_since: float | None = None  # the first beat of the current unbroken run

    def beat(self) -> None:
        """Say that this worker lives, and which delivery tags it holds (read after the time)."""
        at = self.clock()
        record = {"at": at, "tags": sorted(self.held()), "pid": os.getpid()}
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.worker_heartbeat(self.worker_id), json.dumps(record), px=self._ttl_ms)
        pipe.sadd(keys.WORKERS, self.worker_id)
        try:
            pipe.execute()
        except redis.RedisError:
            self._beating_since = None
            raise
        if self._beating_since is None:
            self._beating_since = at

    @property
    def may_judge(self) -> bool:
        """Whether this worker has beaten without a break for GATE_WORKER_DEAD_AFTER_SECONDS:
        after its own start, or after Redis was out of reach (when every heartbeat may have
        expired), the live workers get that long to beat again before anyone is taken for
        dead."""
        since = self._beating_since
        return since is not None and self.clock() - since >= self.dead_after

    def leave(self) -> None:
        """A worker shutting down on purpose: it is no longer one to wait for."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(keys.worker_heartbeat(self.worker_id))
        pipe.srem(keys.WORKERS, self.worker_id)
        pipe.execute()

    def rescue(self) -> Rescue:
        """Put back in the queue what no live worker holds; free the locks of dead workers."""
        done = Rescue()
        if not self.may_judge:
            return done
        ids = sorted(m.decode() for m in self.client.smembers(keys.WORKERS))  # type: ignore[union-attr]
        records = self.client.mget([keys.worker_heartbeat(i) for i in ids]) if ids else []
        live: dict[str, dict[str, Any]] = {}
        for worker_id, raw in zip(ids, records, strict=True):
            if raw is None:
                done.dead_workers.append(worker_id)
            else:
                live[worker_id] = json.loads(raw)
        if self.worker_id not in live:
            return Rescue()  # this worker's own beat is missing: it cannot judge the others
        for worker_id in done.dead_workers:
            done.locks_freed += self._free_locks_of(worker_id)
            self.client.srem(keys.WORKERS, worker_id)
        claimed = {tag for record in live.values() for tag in record.get("tags", [])}
        horizon = min(float(r["at"]) for r in live.values()) - self.interval
        for tag in self._delivered_before(horizon):
            if tag not in claimed:
                event = self._put_back(tag)
                if event is not None:
                    done.requeued.append(event)
        return done

    @property
    def _ttl_ms(self) -> int:
        return int(self.dead_after * 1000)

    def _delivered_before(self, horizon: float) -> Iterable[str]:
        tags = self.client.zrangebyscore(keys.UNACKED_INDEX, "-inf", f"({horizon}")
        return [t.decode() if isinstance(t, bytes) else str(t) for t in tags]

    def _put_back(self, tag: str) -> str | None:
        """The message of `tag` back in the queue; its event id, or None if it was not there."""
        raw = self.client.hget(keys.UNACKED, tag)
        if raw is None:
            return None
        try:
            message, exchange, routing_key = json.loads(raw)
        except (TypeError, ValueError):
            log.warning(
                "unacked message %s is not kombu's JSON, so it is left to the visibility timeout; "
                "if this repeats, check what else writes to this Redis database",
                tag,
            )
            return None
        if exchange != "" or routing_key != keys.QUEUE:
            return None  # not the gate's queue: kombu's visibility timeout restores it
        _mark_redelivered(message)
        pushed = self._rescue(
            keys=[keys.UNACKED, keys.UNACKED_INDEX, keys.QUEUE],
            args=[tag, raw, json.dumps(message)],
        )
        if not pushed:
            return None
        return _event_id(message) or tag

    def _free_locks_of(self, worker_id: str) -> int:
        freed = 0
        for key in self.client.scan_iter(match=keys.MODEL_LOCKS, count=500):
            freed += int(self._free_lock(keys=[key], args=[f"{worker_id}/"]))
        return freed


def _mark_redelivered(message: dict[str, Any]) -> None:
    """As kombu marks a message it restores."""
    headers, properties = message.get("headers"), message.get("properties")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    if isinstance(properties, dict) and isinstance(properties.get("delivery_info"), dict):
        properties["delivery_info"]["redelivered"] = True


def _event_id(message: dict[str, Any]) -> str | None:
    """The gate event id in a reconcile task message, for the log."""
    try:
        args = json.loads(base64.b64decode(message["body"]))[0]
        return str(args[0]["event_id"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class Heartbeat(threading.Thread):
    """The thread that beats and rescues, every `liveness.interval` seconds, until stopped."""

    def __init__(self, liveness: Liveness) -> None:
        super().__init__(name="gate-heartbeat", daemon=True)
        self.liveness = liveness
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.liveness.beat()
                rescued = self.liveness.rescue()
                if rescued:
                    log.warning("%s", rescued.summary())
            except redis.RedisError as exc:
                log.warning(
                    "heartbeat: Redis did not answer (%s: %s); trying again in %.1f s. Check "
                    "Redis: without heartbeats this worker looks dead to the others after "
                    "GATE_WORKER_DEAD_AFTER_SECONDS",
                    type(exc).__name__,
                    exc,
                    self.liveness.interval,
                )
            except Exception:  # a bug: keep beating, say so
                log.exception("heartbeat failed; trying again")
            self._stopping.wait(self.liveness.interval)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        try:
            self.liveness.leave()
        except redis.RedisError as exc:
            log.warning("could not remove this worker's heartbeat: %s", exc)


# -- the worker's wiring: Celery signals in its main process ---------------------------------

_running: list[Heartbeat] = []


def _settings() -> Settings:
    from worker import runtime  # the runtime the worker command installed

    return runtime.current().settings


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)


@worker_init.connect  # type: ignore[untyped-decorator]
def _announce(**_: Any) -> None:
    """Before the worker consumes anything: a heartbeat that claims nothing yet, taken at time
    0, so that no other worker rescues what this one receives before its first real beat."""
    settings = _settings()
    if settings.worker_dead_after_seconds <= 0:
        return
    record = {"at": 0, "tags": [], "pid": os.getpid()}
    ttl_ms = int(settings.worker_dead_after_seconds * 1000)
    try:
        with _client(settings) as client:
            client.set(keys.worker_heartbeat(WORKER_ID), json.dumps(record), px=ttl_ms)
            client.sadd(keys.WORKERS, WORKER_ID)
    except redis.RedisError as exc:
        log.warning("could not announce this worker in Redis (%s); its heartbeat will", exc)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start(sender: Any = None, **_: Any) -> None:
    settings = _settings()
    if settings.worker_dead_after_seconds <= 0:
        log.info("GATE_WORKER_DEAD_AFTER_SECONDS=0: dead workers' events wait for the sweep")
        return
    liveness = Liveness(
        _client(settings), lambda: _held_by(sender), settings.worker_dead_after_seconds
    )
    try:
        liveness.beat()
    except redis.RedisError as exc:
        log.warning("first heartbeat failed (%s); the heartbeat thread tries again", exc)
    thread = Heartbeat(liveness)
    thread.start()
    _running.append(thread)
    log.info(
        "worker %s: heartbeat every %.1f s; a worker silent for %g s is taken for dead and its "
        "events are put back in the queue",
        WORKER_ID,
        liveness.interval,
        settings.worker_dead_after_seconds,
    )


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _stop(**_: Any) -> None:
    while _running:
        _running.pop().stop()


def _held_by(consumer: Any) -> list[str]:
    """The delivery tags the worker's task consumer holds unacknowledged now (kombu's QoS of
    its channel: running, prefetched, waiting for a countdown). Read from this thread while
    the consumer's thread may change it: copied, and read again if it changed meanwhile."""
    qos = getattr(getattr(getattr(consumer, "task_consumer", None), "channel", None), "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if delivered is None:
        raise RuntimeError("cannot read the worker's unacknowledged messages (not kombu's Redis)")
    for _ in range(10):
        try:
            return [str(tag) for tag in list(delivered)]
        except RuntimeError:  # changed size during the copy
            continue
    return [str(tag) for tag in list(delivered)]
