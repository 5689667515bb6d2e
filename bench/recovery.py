"""Recovery: events arriving while MLflow is down, and the time until all are decided once it
is back.

Starts a private MLflow, Redis and the receiver. M model versions per variant get
`governance.request=champion` while no webhook is registered (so nothing decides them yet); then
MLflow is stopped and M signed webhooks naming them are posted to the receiver directly (MLflow,
being down, cannot send them). After `--outage` seconds MLflow is started again on the same
database, and one search call every `--poll` seconds reads the decisions. Two variants:

- retry: workers keep retrying (GATE_RETRY_MAX_ATTEMPTS=1000, backoff 0.5 s doubling to 2 s);
- redrive: the first failure dead-letters each event (GATE_RETRY_MAX_ATTEMPTS=1), and the redrive
  of `worker --beat` (GATE_REDRIVE_INTERVAL_SECONDS=1) replays them once MLflow answers.

And a whole worker killed: 4 events are sent to a worker whose MLflow answers in 2 s a call
(so that two are in flight); its process group gets SIGKILL; another worker starts at once
(no sweep); the time until all 4 are decided. `killed` with the default
GATE_WORKER_DEAD_AFTER_SECONDS (30), `killed-no-heartbeat` with it off (0), as before this
existed: there only the visibility timeout (an hour) or the sweep would decide them, so the
wait stops at `--killed-limit` (90 s).

    python bench/recovery.py [--quick] [-m 40] [--outage 10]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import redis
import requests
from _stack import (
    SECRET,
    DelayProxy,
    Stack,
    create_versions,
    decided_versions,
    machine_info,
    machine_line,
    markdown_table,
    secs,
    settings_for,
    signed_headers,
    table,
    wait_until,
    webhook_body,
    write_results,
)

from worker.registries import mlflow
from worker.registries.endpoints import Endpoints
from worker.rest import RestClient

VARIANTS: dict[str, dict[str, str]] = {
    "retry": {
        "GATE_RETRY_MAX_ATTEMPTS": "1000",
        "GATE_RETRY_BACKOFF_SECONDS": "0.5",
        "GATE_RETRY_BACKOFF_MAX_SECONDS": "2",
        "GATE_REDRIVE_ENABLED": "false",
    },
    "redrive": {
        "GATE_RETRY_MAX_ATTEMPTS": "1",
        "GATE_RETRY_BACKOFF_SECONDS": "0.5",
        "GATE_RETRY_BACKOFF_MAX_SECONDS": "2",
        "GATE_REDRIVE_ENABLED": "true",
        "GATE_REDRIVE_INTERVAL_SECONDS": "1",
        "GATE_SWEEP_INTERVAL_SECONDS": "3600",  # the redrive alone, not the sweep, recovers
    },
}


def run_variant(
    stack: Stack,
    r: redis.Redis,
    name: str,
    versions: list[tuple[str, str]],
    outage: float,
    poll: float,
) -> dict[str, Any]:
    worker = f"worker-{name}"
    stack.start_worker(worker, concurrency=2, beat=name == "redrive", env=VARIANTS[name])
    stack.stop("mlflow")
    down_at = time.time()
    session = requests.Session()
    statuses: dict[int, int] = {}
    for model, version in versions:
        body = webhook_body(model, version)
        answer = session.post(
            f"{stack.receiver_url}/webhooks/mlflow",
            data=body,
            headers=signed_headers(SECRET, body),
            timeout=10,
        )
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
    if name == "redrive":
        wait_until(
            lambda: r.hlen("gate:deadletter") >= len(versions),
            outage + 60,
            what="every event dead-lettered",
        )
        dead_lettered = int(r.hlen("gate:deadletter"))
    else:
        dead_lettered = int(r.hlen("gate:deadletter"))
    time.sleep(max(0.0, down_at + outage - time.time()))
    restart = time.time()
    stack.start_mlflow()  # returns once /health answers
    healthy = time.time()
    api = Endpoints(RestClient(mlflow.service(settings_for(stack.mlflow_uri))))
    prefix = versions[0][0].rsplit("-", 1)[0]
    seen: dict[tuple[str, str], float] = {}
    deadline = healthy + 120 + 2 * len(versions)
    while len(seen) < len(versions) and time.time() < deadline:
        now = time.time()
        for key in decided_versions(api, prefix):
            seen.setdefault(key, now)
        time.sleep(poll)
    stack.stop(worker)
    done = max(seen.values()) if seen else None
    first = min(seen.values()) if seen else None
    drain = len(seen) / (done - first) if done and first and done > first else None
    return {
        "variant": name,
        "events": len(versions),
        "receiver_statuses": statuses,
        "dead_lettered_during_outage": dead_lettered,
        "outage_s": round(restart - down_at, 2),
        "mlflow_restart_s": round(healthy - restart, 2),
        "decided": len(seen),
        "first_decision_after_healthy_s": round(first - healthy, 2) if first else None,
        "all_decided_after_healthy_s": round(done - healthy, 2) if done else None,
        "all_decided_after_restart_s": round(done - restart, 2) if done else None,
        "drain_per_s": round(drain, 1) if drain else None,
    }


KILLED: dict[str, dict[str, str]] = {
    # A whole worker killed with SIGKILL; another one starts at once. "killed" with the default
    # GATE_WORKER_DEAD_AFTER_SECONDS (30); "killed-no-heartbeat" with it off (0), as before:
    # only the visibility timeout (an hour) or the sweep (5 minutes) would rescue the events.
    "killed": {},
    "killed-no-heartbeat": {"GATE_WORKER_DEAD_AFTER_SECONDS": "0"},
}


def run_killed(
    stack: Stack,
    r: redis.Redis,
    name: str,
    versions: list[tuple[str, str]],
    poll: float,
    limit: float,
) -> dict[str, Any]:
    """Worker A (2 processes, MLflow 2 s a call through a proxy) takes the first events; it is
    killed whole; worker B starts at once; time until every event is decided, up to `limit`."""
    env = {**KILLED[name], "GATE_MODEL_LOCK_SECONDS": "60"}
    proxy = DelayProxy(stack.mlflow_uri, delay=2.0)
    try:
        doomed = stack.start_worker(f"doomed-{name}", concurrency=2,
                                    env={**env, "MLFLOW_TRACKING_URI": proxy.url})  # fmt: skip
        session = requests.Session()
        for model, version in versions:
            body = webhook_body(model, version)
            session.post(f"{stack.receiver_url}/webhooks/mlflow", data=body,
                         headers=signed_headers(SECRET, body), timeout=10)  # fmt: skip
        wait_until(lambda: r.hlen("unacked") >= 2, 30, what="two events in flight")
        time.sleep(1.0)
        held = int(r.hlen("unacked"))
        killed_at = time.time()
        stack.processes.pop(f"doomed-{name}").kill()
        del doomed
        stack.start_worker(f"rescuer-{name}", concurrency=2, env=env)
        ready_at = time.time()
    finally:
        proxy.close()
    api = Endpoints(RestClient(mlflow.service(settings_for(stack.mlflow_uri))))
    prefix = versions[0][0].rsplit("-", 1)[0]
    seen: dict[tuple[str, str], float] = {}
    while len(seen) < len(versions) and time.time() < ready_at + limit:
        now = time.time()
        for key in decided_versions(api, prefix):
            seen.setdefault(key, now)
        time.sleep(poll)
    stack.stop(f"rescuer-{name}")
    done = max(seen.values()) if len(seen) == len(versions) else None
    return {
        "variant": name,
        "events": len(versions),
        "held_by_the_killed_worker": held,
        "decided": len(seen),
        "limit_s": limit,
        "rescuer_start_s": round(ready_at - killed_at, 2),
        "all_decided_after_kill_s": round(done - killed_at, 2) if done else None,
        "all_decided_after_rescuer_ready_s": round(done - ready_at, 2) if done else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", type=int, default=40, help="events queued during the outage")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds MLflow is down")
    parser.add_argument("--variants", default="retry,redrive,killed,killed-no-heartbeat")
    parser.add_argument(
        "--killed-limit", type=float, default=90.0, help="seconds to wait after a worker is killed"
    )
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between MLflow polls")
    parser.add_argument("--quick", action="store_true", help="m=15, 5 s outage")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.m, args.outage = 15, 5.0
    variants = [v for v in args.variants.split(",") if v in VARIANTS]
    killed = [v for v in args.variants.split(",") if v in KILLED]
    params = {k: v for k, v in vars(args).items() if k != "keep"}
    load_start, started = os.getloadavg(), time.time()

    results: list[dict[str, Any]] = []
    deaths: list[dict[str, Any]] = []
    with Stack("recovery", keep=args.keep) as stack:
        stack.start_redis()
        stack.start_mlflow()
        stack.env["GATE_MLFLOW_TIMEOUT_SECONDS"] = "2"
        stack.start_receiver()
        print(f"MLflow {stack.mlflow_uri}; workdir {stack.workdir}", flush=True)
        r = redis.Redis.from_url(stack.redis_url)
        made = {v: create_versions(stack.mlflow_uri, f"rec-{v}", args.m, request="champion")
                for v in variants}  # fmt: skip
        for v in variants:
            print(f"variant {v}: MLflow down {args.outage:g} s, {args.m} events ...", flush=True)
            results.append(run_variant(stack, r, v, made[v], args.outage, args.poll))
        if killed and not stack.processes.get("mlflow"):
            stack.start_mlflow()
        for v in killed:
            versions = create_versions(stack.mlflow_uri, f"rec-{v}", 4, request="champion")
            print(f"variant {v}: a worker killed with 4 events ...", flush=True)
            deaths.append(run_killed(stack, r, v, versions, args.poll, args.killed_limit))

    headers = ["variant", "events", "202", "dead-lettered", "MLflow down s", "MLflow restart s",
               "first decision s", "all decided s", "drain/s"]  # fmt: skip
    rows = [
        [
            x["variant"], x["events"], x["receiver_statuses"].get(202, 0),
            x["dead_lettered_during_outage"], secs(x["outage_s"]), secs(x["mlflow_restart_s"]),
            secs(x["first_decision_after_healthy_s"]), secs(x["all_decided_after_healthy_s"]),
            x["drain_per_s"] or "-",
        ]
        for x in results
    ]  # fmt: skip
    death_headers = ["variant", "events", "held by the killed worker", "decided",
                     "all decided after the kill s", "after the new worker is ready s"]  # fmt: skip
    death_rows = [
        [
            x["variant"], x["events"], x["held_by_the_killed_worker"], x["decided"],
            secs(x["all_decided_after_kill_s"]) if x["all_decided_after_kill_s"] else
            f"not within {x['limit_s']:g}",
            secs(x["all_decided_after_rescuer_ready_s"]),
        ]
        for x in deaths
    ]  # fmt: skip
    info = machine_info()
    lines = [
        "recovery: events queued while MLflow is down; times after MLflow answers /health "
        f"again (polled every {args.poll:g} s); 1 worker, 2 processes",
        f"machine: {machine_line(info)}",
        table(headers, rows),
    ]
    if deaths:
        lines += [
            "a whole worker killed (SIGKILL to its process group) with events in flight; "
            "another worker started at once; no sweep",
            table(death_headers, death_rows),
        ]
    printed = "\n".join(lines)
    print("\n" + printed)
    path = write_results(
        "recovery",
        params,
        {
            "variants": results,
            "worker_killed": deaths,
            "markdown": markdown_table(headers, rows),
            "worker_killed_markdown": markdown_table(death_headers, death_rows),
        },
        load_start=load_start,
        started=started,
        printed=printed,
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
