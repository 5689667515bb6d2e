"""One attempt at a delivery over HTTP, its failure classified: connection errors, timeouts,
5xx and 429 are transient (retried), any other 4xx (and a redirect) permanent (dead-lettered).

Error messages name the sink by its label, never by its URL (a Slack URL is a secret, and a
webhook's query may hold a token), and so never carry requests' own text, which holds the URL.
"""

from __future__ import annotations

import time

import requests

from shared.notify import messages, standard_webhooks
from shared.notify.delivery import Delivery
from shared.notify.errors import SinkRefused, SinkUnavailable
from shared.notify.sinks import Endpoint, label

TIMEOUT_SECONDS = (3.05, 10.0)  # connect, read: a hanging sink holds a worker this long at most
USER_AGENT = "mlflow-gate"


def send(
    endpoint: Endpoint,
    delivery: Delivery,
    *,
    timeout: tuple[float, float] = TIMEOUT_SECONDS,
    now: float | None = None,
) -> int:
    """POST the delivery; its HTTP status when the sink took it (2xx)."""
    body, headers = _request(endpoint, delivery, int(time.time() if now is None else now))
    where = label(endpoint.sink.key)
    try:
        answer = requests.post(
            endpoint.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.Timeout:
        raise SinkUnavailable(f"{where} did not answer within {timeout[1]:g} s") from None
    except requests.RequestException as exc:
        raise SinkUnavailable(
            f"{where} could not be reached ({type(exc).__name__}); is it up?"
        ) from None
    status = answer.status_code
    answer.close()
    if 200 <= status < 300:
        return status
    if status >= 500 or status == 429:
        raise SinkUnavailable(f"{where} answered {status}")
    raise SinkRefused(
        f"{where} refused the {delivery.notice_type} notification with {status}"
        f"{_what_to_do(endpoint, status)}; fix it, then `mlflow-gate dlq replay "
        f"{delivery.delivery_id}`",
        status,
    )


def _request(endpoint: Endpoint, delivery: Delivery, now: int) -> tuple[bytes, dict[str, str]]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if endpoint.sink.kind == "slack":
        return messages.encode(messages.slack(delivery.body)), headers
    body = messages.encode(delivery.body)
    assert endpoint.key is not None  # a webhook endpoint always has its key (sinks.resolve)
    signature = standard_webhooks.signature(endpoint.key, delivery.delivery_id, now, body)
    headers.update(
        {
            standard_webhooks.ID_HEADER: delivery.delivery_id,
            standard_webhooks.TIMESTAMP_HEADER: str(now),
            standard_webhooks.SIGNATURE_HEADER: signature,
        }
    )
    return body, headers


def _what_to_do(endpoint: Endpoint, status: int) -> str:
    if 300 <= status < 400:
        return " (a redirect: give the final URL)"
    if endpoint.sink.kind == "slack":
        return f" (check that {endpoint.sink.address} holds a live Slack incoming-webhook URL)"
    if status in (401, 403):
        return f" (its signature or access: does it verify with {endpoint.sink.secret_env}?)"
    return " (the receiver's log says why)"
