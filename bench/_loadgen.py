"""The load generator: a separate process that sends signed MLflow webhooks.

    python bench/_loadgen.py SPEC.json OUT.json

SPEC: {"url", "secret", "mode": "rate" | "max", "rate", "duration", "connections", "timeout",
"targets": [[model, version], ...]} (targets are cycled).

- "rate" is open loop: request i is due at start + i / rate whatever happened before, and its
  latency is counted from that due time (so a stalled server is charged for the requests it
  delayed: no coordinated omission). `connections` persistent connections carry the load.
- "max" is closed loop: `connections` clients each send the next request as soon as the previous
  one is answered, for `duration` seconds.

OUT: {"results": [[due_offset_s, latency_s, status, delivery_id], ...], "unsent": n, ...} where
status is the HTTP status, "timeout" or "error:<exception class>".
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import sys
import time
import uuid
from typing import Any

import aiohttp


def _request(secret: str, model: str, version: str) -> tuple[str, bytes, dict[str, str]]:
    payload = {
        "entity": "model_version_tag",
        "action": "set",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
        "data": {
            "name": model,
            "version": version,
            "key": "governance.request",
            "value": "champion",
        },
    }
    body = json.dumps(payload).encode()
    delivery_id = str(uuid.uuid4())
    timestamp = str(int(time.time()))
    digest = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256
    ).digest()
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(digest).decode(),
    }
    return delivery_id, body, headers


async def _send(
    session: aiohttp.ClientSession, url: str, secret: str, target: list[str]
) -> tuple[str, str]:
    delivery_id, body, headers = _request(secret, target[0], target[1])
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return str(response.status), delivery_id
    except asyncio.TimeoutError:
        return "timeout", delivery_id
    except Exception as exc:
        return f"error:{type(exc).__name__}", delivery_id


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    url, secret = spec["url"], spec["secret"]
    connections = int(spec["connections"])
    duration = float(spec["duration"])
    targets = itertools.cycle(spec["targets"])
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    # Like MLflow's `requests` timeout: per connect and per read, not counting the wait for a
    # free connection (MLflow's deliveries wait for a free thread of its pool the same way).
    limit = float(spec["timeout"])
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)
    results: list[list[Any]] = []
    unsent = 0
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time() + 0.2
        if spec["mode"] == "rate":
            rate = float(spec["rate"])
            total = round(rate * duration)
            # Requests not even started by then are reported as unsent, not silently dropped.
            give_up = start + duration + max(10.0, duration)
            counter = itertools.count()

            async def open_loop_client() -> None:
                nonlocal unsent
                while (i := next(counter)) < total:
                    due = start + i / rate
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if loop.time() > give_up:
                        unsent += 1
                        continue
                    status, delivery_id = await _send(session, url, secret, next(targets))
                    results.append([due - start, loop.time() - due, status, delivery_id])

            clients = [open_loop_client() for _ in range(connections)]
        else:
            end = start + duration

            async def closed_loop_client() -> None:
                wait = start - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                while (began := loop.time()) < end:
                    status, delivery_id = await _send(session, url, secret, next(targets))
                    results.append([began - start, loop.time() - began, status, delivery_id])

            clients = [closed_loop_client() for _ in range(connections)]
        await asyncio.gather(*clients)
        elapsed = loop.time() - start
    return {
        "results": results,
        "unsent": unsent,
        "elapsed": elapsed,
        "cpu_s": time.process_time(),
        "spec": spec,
    }


def main() -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    out = asyncio.run(run(spec))
    out["spec"] = {k: v for k, v in spec.items() if k not in ("targets", "secret")}
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
