"""Acknowledgement latency and sustained rate of the receiver, for signed MLflow webhooks, beside
a bare baseline (bench/bare_app.py: Flask answering 202 after one Redis LPUSH, no checks).

Starts a private Redis, the receiver and the bare baseline (both under gunicorn, same processes
and threads); no MLflow and no worker are needed, since the receiver never calls MLflow and the
point is the acknowledgement. The phases alternate between the two designs, so that the
machine's noise falls on both. A separate load-generating
process (bench/_loadgen.py) sends `model_version_tag.set` of `governance.request` at fixed rates
(open loop, latency from each request's due time) and then as fast as K connections allow
(closed loop). At the end, every event answered 202 is looked for in Redis, in the Celery
messages of the `gate.events` list and in its dedupe key (the baseline's, in its list).

    python bench/ingest.py [--quick] [--rates 100,300,500,1000] [--duration 5] [--designs gate,bare]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import redis
import requests
from _stack import (
    BENCH,
    SECRET,
    Stack,
    free_port,
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
BARE_QUEUE = "bare.events"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,300,500,1000", help="fixed rates, per second")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    parser.add_argument("--max-duration", type=float, default=5.0, help="seconds at the maximum")
    parser.add_argument("--connections", type=int, default=16, help="open-loop connections")
    parser.add_argument("--max-connections", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--receiver-workers", type=int, default=2, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn process")
    parser.add_argument("--models", type=int, default=50, help="distinct model names cycled")
    parser.add_argument(
        "--designs", default="gate,bare", help="gate (the receiver), bare (bench/bare_app.py)"
    )
    parser.add_argument("--quick", action="store_true", help="2 s per phase")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.duration = args.max_duration = 2.0
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    designs = [d for d in args.designs.split(",") if d in DESIGNS]
    params = {k: v for k, v in vars(args).items() if k != "keep"}
    load_start, started = os.getloadavg(), time.time()

    targets = [[f"ingest-model-{i:03d}", str(1 + i % 3)] for i in range(args.models)]
    phases: list[dict[str, Any]] = []
    verification: dict[str, dict[str, Any]] = {}
    logs: dict[str, str] = {}
    with Stack("ingest", keep=args.keep) as stack:
        stack.start_redis()
        urls = {d: _start(stack, d, args.receiver_workers, args.threads) for d in designs}
        print(f"{urls} ({args.receiver_workers} x {args.threads} threads), Redis "
              f"{stack.redis_url}; workdir {stack.workdir}", flush=True)  # fmt: skip
        r = redis.Redis.from_url(stack.redis_url)
        runs: list[tuple[str, dict[str, Any]]] = [
            (f"{rate:g}/s", {"mode": "rate", "rate": rate, "duration": args.duration,
                             "connections": args.connections})
            for rate in rates
        ]  # fmt: skip
        runs.append(
            (f"max (K={args.max_connections})",
             {"mode": "max", "duration": args.max_duration, "connections": args.max_connections})
        )  # fmt: skip
        acked: dict[str, set[str]] = {d: set() for d in designs}
        for design in designs:  # warm up: connections, gunicorn threads, Celery's producer
            spec = _spec(urls[design], targets)
            warm = {**spec, "mode": "rate", "rate": 100, "duration": 1.0, "connections": 4}
            out = run_loadgen(stack, warm, f"warmup-{design}")
            acked[design].update(row[3] for row in out["results"] if row[2] == "202")
        for label, run_spec in runs:  # interleaved: the machine's noise falls on both designs
            for design in designs:
                print(f"{DESIGNS[design]}: phase {label} ...", flush=True)
                server, spec = stack.processes[design], {**_spec(urls[design], targets), **run_spec}
                before_cmds = _redis_commands(r)
                before_cpu = group_cpu_seconds(server)
                before_redis_cpu = group_cpu_seconds(stack.processes["redis"])
                tag = f"{design}-{label.split()[0].replace('/', 'per')}"
                out = run_loadgen(stack, spec, tag)
                cpu = group_cpu_seconds(server) - before_cpu
                redis_cpu = group_cpu_seconds(stack.processes["redis"]) - before_redis_cpu
                after_cmds = _redis_commands(r)
                by_name = {k: v - before_cmds.get(k, 0) for k, v in after_cmds.items()}
                by_name["info"] = by_name.get("info", 0) - 2  # our own INFO calls
                cmds = sum(by_name.values())
                # The gate's script runs two commands inside Redis per EVALSHA (SET, then LPUSH
                # or GET), which commandstats counts too: they are no round trips.
                sent = cmds - 2 * by_name.get("evalsha", 0)
                stats = latency_stats(out, "202")
                ok = max(stats["acknowledged"], 1)
                stats.update(
                    design=design,
                    phase=label,
                    target_rate=run_spec.get("rate"),
                    server_cpu_ms_per_event=round(cpu * 1000 / ok, 2),
                    redis_cpu_ms_per_event=round(redis_cpu * 1000 / ok, 3),
                    redis_commands_per_event=round(cmds / ok, 2),
                    redis_round_trips_per_event=round(sent / ok, 2),
                    redis_commands_by_name={k: v for k, v in sorted(by_name.items()) if v},
                )
                phases.append(stats)
                acked[design].update(row[3] for row in out["results"] if row[2] == "202")
        for design in designs:
            verification[design] = VERIFY[design](r, acked[design])
            if verification[design]["missing"]:
                logs[design] = stack.processes[design].log_tail(2000)

    headers = ["design", "phase", "due", "202", "not sent", "sustained/s", "p50 ms", "p95 ms",
               "p99 ms", "max ms", "server CPU ms/ev", "Redis round trips/ev"]  # fmt: skip
    rows = [
        [
            p["design"], p["phase"], p["sent"] + p["unsent"], p["acknowledged"], p["unsent"],
            p["sustained_per_s"],
            ms(p["latency_s"]["p50"]), ms(p["latency_s"]["p95"]), ms(p["latency_s"]["p99"]),
            ms(p["latency_s"]["max"]), p["server_cpu_ms_per_event"],
            p["redis_round_trips_per_event"],
        ]
        for p in phases
    ]  # fmt: skip
    ratios = _ratios(phases)
    info = machine_info()
    lines = [
        f"ingest: acknowledgement ({args.receiver_workers} gunicorn processes x {args.threads} "
        "threads each), load generator in its own process; latency from each request's due "
        "time; 'not sent': still not started 10 s after the phase's end",
        f"machine: {machine_line(info)}",
        table(headers, rows),
    ]
    if ratios:
        lines.append(
            f"gate / bare: max rate {ratios['max_rate']:.2f}x; "
            + "; ".join(f"p99 at {k} {v:.2f}x" for k, v in ratios["p99"].items())
        )
    for design, v in verification.items():
        lines.append(
            f"{design}: verified in Redis: {v['verified']} of {v['acknowledged']} acknowledged "
            f"events (queue messages: {v['queued_messages']}, dedupe keys holding the id: "
            f"{v['dedupe_keys_ok']}); missing: {v['missing']}"
        )
    printed = "\n".join(lines)
    print("\n" + printed)
    path = write_results(
        "ingest",
        params,
        {
            "phases": phases,
            "ratios": ratios,
            "verification": verification,
            "markdown": markdown_table(headers, rows),
            "log_tails": logs or None,
        },
        load_start=load_start,
        started=started,
        printed=printed,
    )
    print(f"\nresults: {path}")


DESIGNS = {"gate": "gate receiver", "bare": "bare baseline (Flask + one LPUSH)"}


def _start(stack: Stack, design: str, workers: int, threads: int) -> str:
    if design == "gate":
        url = stack.start_receiver(workers=workers, threads=threads)
        stack.processes["gate"] = stack.processes.pop("receiver")
        return url
    port = free_port()
    gunicorn = [
        sys.executable, "-m", "gunicorn", "--chdir", str(BENCH),
        "-k", "gthread", "-w", str(workers), "--threads", str(threads),
        "--keep-alive", "2", "-b", f"127.0.0.1:{port}", "bare_app:create_app()",
    ]  # fmt: skip
    proc = stack.start("bare", gunicorn, stack.env)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(lambda: _listening(url), 60, "the bare baseline")
    return url


def _listening(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def _spec(url: str, targets: list[list[str]]) -> dict[str, Any]:
    return {"url": f"{url}/webhooks/mlflow", "secret": SECRET, "timeout": 30, "targets": targets}


def _ratios(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The gate's figures over the bare baseline's, phase by phase."""
    by = {(p["design"], p["phase"]): p for p in phases}
    labels = [p["phase"] for p in phases if p["design"] == "gate"]
    if not labels or not any(p["design"] == "bare" for p in phases):
        return {}
    p99: dict[str, float] = {}
    max_rate = 0.0
    for label in labels:
        gate, bare = by.get(("gate", label)), by.get(("bare", label))
        if gate is None or bare is None:
            continue
        if label.startswith("max"):
            max_rate = (gate["sustained_per_s"] or 0) / (bare["sustained_per_s"] or 1)
        elif gate["latency_s"]["p99"] and bare["latency_s"]["p99"]:
            p99[label] = gate["latency_s"]["p99"] / bare["latency_s"]["p99"]
    return {"max_rate": max_rate, "p99": p99}


def _redis_commands(r: redis.Redis) -> dict[str, int]:
    """Commands Redis ran so far, by name (commands run by scripts included)."""
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _verify_bare(r: redis.Redis, acked: set[str]) -> dict[str, Any]:
    """Every 202-acknowledged request must be in the bare baseline's list."""
    raws: list[bytes] = r.lrange(BARE_QUEUE, 0, -1)  # type: ignore[assignment]
    queued = {raw.split(b"\n", 1)[0].decode() for raw in raws}
    return {
        "acknowledged": len(acked),
        "verified": len(acked & queued),
        "missing": len(acked - queued),
        "missing_ids": sorted(acked - queued)[:20],
        "queued_messages": int(r.llen(BARE_QUEUE)),
        "dedupe_keys_ok": None,
    }


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


VERIFY = {"gate": _verify, "bare": _verify_bare}

if __name__ == "__main__":
    main()
