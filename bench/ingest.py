"""Acknowledgement latency and sustained rate of the receiver, for signed MLflow webhooks.

Starts a private Redis and the receiver (gunicorn); no MLflow and no worker are needed, since the
receiver never calls MLflow and the point is the acknowledgement. A separate load-generating
process (bench/_loadgen.py) sends `model_version_tag.set` of `governance.request` at fixed rates
(open loop, latency from each request's due time) and then as fast as K connections allow
(closed loop). At the end, every event answered 202 is looked for in Redis, in the Celery
messages of the `gate.events` list and in its dedupe key.

    python bench/ingest.py [--quick] [--rates 100,500,1000] [--duration 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from typing import Any

import redis
from _stack import (
    SECRET,
    Stack,
    group_cpu_seconds,
    latency_stats,
    machine_info,
    machine_line,
    markdown_table,
    ms,
    run_loadgen,
    table,
    write_results,
)

QUEUE = "gate.events"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,500,1000", help="fixed rates, per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    parser.add_argument("--max-duration", type=float, default=5.0, help="seconds at the maximum")
    parser.add_argument("--connections", type=int, default=16, help="open-loop connections")
    parser.add_argument("--max-connections", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--receiver-workers", type=int, default=2, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn process")
    parser.add_argument("--models", type=int, default=50, help="distinct model names cycled")
    parser.add_argument("--quick", action="store_true", help="2 s per phase")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.duration = args.max_duration = 2.0
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    params = {k: v for k, v in vars(args).items() if k != "keep"}
    load_start, started = os.getloadavg(), time.time()

    targets = [[f"ingest-model-{i:03d}", str(1 + i % 3)] for i in range(args.models)]
    phases: list[dict[str, Any]] = []
    with Stack("ingest", keep=args.keep) as stack:
        stack.start_redis()
        url = stack.start_receiver(workers=args.receiver_workers, threads=args.threads)
        print(f"receiver {url} ({args.receiver_workers} x {args.threads} threads), Redis "
              f"{stack.redis_url}; workdir {stack.workdir}", flush=True)  # fmt: skip
        r = redis.Redis.from_url(stack.redis_url)
        spec = {
            "url": f"{url}/webhooks/mlflow",
            "secret": SECRET,
            "timeout": 30,
            "targets": targets,
        }
        # Warm up: connections, gunicorn threads, the Celery producer of each process.
        run_loadgen(
            stack,
            {**spec, "mode": "rate", "rate": 100, "duration": 1.0, "connections": 4},
            "warmup",
        )
        runs: list[tuple[str, dict[str, Any]]] = [
            (
                f"{rate:g}/s",
                {**spec, "mode": "rate", "rate": rate, "duration": args.duration,
                 "connections": args.connections},
            )
            for rate in rates
        ]  # fmt: skip
        runs.append(
            (
                f"max (K={args.max_connections})",
                {**spec, "mode": "max", "duration": args.max_duration,
                 "connections": args.max_connections},
            )
        )  # fmt: skip
        acked: set[str] = set()
        for label, run_spec in runs:
            print(f"phase {label} ...", flush=True)
            before_cmds = _redis_commands(r)
            before_cpu = group_cpu_seconds(stack.processes["receiver"])
            before_redis_cpu = group_cpu_seconds(stack.processes["redis"])
            out = run_loadgen(stack, run_spec, label.split()[0].replace("/", "per"))
            cpu = group_cpu_seconds(stack.processes["receiver"]) - before_cpu
            redis_cpu = group_cpu_seconds(stack.processes["redis"]) - before_redis_cpu
            cmds = _redis_commands(r) - before_cmds
            stats = latency_stats(out, "202")
            ok = max(stats["acknowledged"], 1)
            stats.update(
                phase=label,
                target_rate=run_spec.get("rate"),
                receiver_cpu_ms_per_event=round(cpu * 1000 / ok, 2),
                redis_cpu_ms_per_event=round(redis_cpu * 1000 / ok, 3),
                redis_commands_per_event=round((cmds - 2) / ok, 2),  # 2: our INFO calls
            )
            phases.append(stats)
            acked.update(row[3] for row in out["results"] if row[2] == "202")
        verification = _verify(r, acked)
        stack_log = stack.processes["receiver"].log_tail(2000)

    headers = ["phase", "due", "202", "not sent", "sustained/s", "p50 ms", "p95 ms", "p99 ms",
               "max ms", "recv CPU ms/ev", "Redis cmds/ev"]  # fmt: skip
    rows = [
        [
            p["phase"], p["sent"] + p["unsent"], p["acknowledged"], p["unsent"],
            p["sustained_per_s"],
            ms(p["latency_s"]["p50"]), ms(p["latency_s"]["p95"]), ms(p["latency_s"]["p99"]),
            ms(p["latency_s"]["max"]), p["receiver_cpu_ms_per_event"],
            p["redis_commands_per_event"],
        ]
        for p in phases
    ]  # fmt: skip
    info = machine_info()
    printed = "\n".join(
        [
            f"ingest: receiver acknowledgement ({args.receiver_workers} gunicorn processes x "
            f"{args.threads} threads), load generator in its own process; latency from each "
            "request's due time; 'not sent': still not started 10 s after the phase's end",
            f"machine: {machine_line(info)}",
            table(headers, rows),
            f"verified in Redis: {verification['verified']} of {verification['acknowledged']} "
            f"acknowledged events (queue messages: {verification['queued_messages']}, "
            f"dedupe keys holding the id: {verification['dedupe_keys_ok']}); "
            f"missing: {verification['missing']}",
        ]
    )
    print("\n" + printed)
    path = write_results(
        "ingest",
        params,
        {
            "phases": phases,
            "verification": verification,
            "markdown": markdown_table(headers, rows),
            "receiver_log_tail": stack_log if verification["missing"] else None,
        },
        load_start=load_start,
        started=started,
        printed=printed,
    )
    print(f"\nresults: {path}")


def _redis_commands(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def _verify(r: redis.Redis, acked: set[str]) -> dict[str, Any]:
    """Every 202-acknowledged event id must be in a Celery message of the queue."""
    queued: set[str] = set()
    messages = 0
    for raw in r.lrange(QUEUE, 0, -1):
        messages += 1
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))
        queued.add(args[0][0]["event_id"])
    ids = sorted(acked)
    dedupe_ok = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        values = r.mget([f"gate:delivery:mlflow:{i}" for i in chunk])
        dedupe_ok += sum(1 for i, v in zip(chunk, values, strict=True) if v == i.encode())
    missing = sorted(acked - queued)
    return {
        "acknowledged": len(acked),
        "verified": len(acked & queued),
        "missing": len(missing),
        "missing_ids": missing[:20],
        "queued_messages": messages,
        "dedupe_keys_ok": dedupe_ok,
    }


if __name__ == "__main__":
    main()
