"""The sinks of the policies in force, found by key; their URL and secret read from the
environment when a delivery is made (never queued, never stored); and the check, at worker
start, that every variable a sink names is set and valid."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared.errors import ConfigError
from shared.notify import standard_webhooks
from shared.policy import PolicySet, Sink


@dataclass(frozen=True)
class Endpoint:
    """Where one delivery goes, secrets included: made at delivery time, kept out of repr."""

    sink: Sink
    url: str = field(repr=False)  # a Slack URL is a secret
    key: bytes | None = field(default=None, repr=False)  # a webhook's HMAC key


def configured(policies: PolicySet) -> dict[str, Sink]:
    """Every sink of the policies (top level first), by key."""
    found: dict[str, Sink] = {}
    for sink in [*policies.notify, *(s for p in policies.policies for s in p.notify)]:
        found.setdefault(sink.key, sink)
    return found


def find(policies: PolicySet, key: str) -> Sink | None:
    return configured(policies).get(key)


def label(sink_key: str) -> str:
    """A sink as shown in logs, errors and `dlq list`: a webhook's URL without its query or
    credentials (they may hold a token), or the name of Slack's variable."""
    kind, _, address = sink_key.partition(":")
    if kind == "slack":
        return f"slack ${address}"
    parts = urlsplit(address)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"webhook {parts.scheme}://{host}{port}{parts.path}"


def resolve(sink: Sink, environ: Mapping[str, str] | None = None) -> Endpoint:
    """The sink's endpoint from the environment; ConfigError naming the variable at fault."""
    env = os.environ if environ is None else environ
    if sink.kind == "slack":
        url = env.get(sink.address, "").strip()
        if not url:
            raise ConfigError(
                f"{sink.address} is not set: it must hold the Slack incoming-webhook URL "
                "(https://hooks.slack.com/services/...) that a Slack sink of the policy file "
                "names; set it in the workers' environment"
            )
        if not url.startswith(("http://", "https://")) or not urlsplit(url).hostname:
            raise ConfigError(
                f"{sink.address} is not an http(s) URL: set it to the Slack incoming-webhook URL "
                "(https://hooks.slack.com/services/...)"
            )
        return Endpoint(sink, url)
    variable = sink.secret_env or "secret_env"
    secret = env.get(variable, "").strip()
    if not secret:
        raise ConfigError(
            f"{variable} is not set: it must hold the whsec_... secret of the webhook "
            f"{label(sink.key).removeprefix('webhook ')} in the policy file; set it in the "
            f"workers' environment ({standard_webhooks.MAKE_ONE})"
        )
    return Endpoint(sink, sink.address, standard_webhooks.key_of(secret, variable))


def check(policies: PolicySet, environ: Mapping[str, str] | None = None) -> str:
    """At worker start: every sink resolves, and no webhook URL is given two secrets. Raises
    ConfigError on the first problem; returns a line saying what will be notified."""
    sinks = configured(policies)
    secrets: dict[str, str | None] = {}
    for sink in [*policies.notify, *(s for p in policies.policies for s in p.notify)]:
        seen = secrets.setdefault(sink.key, sink.secret_env)
        if seen != sink.secret_env:
            raise ConfigError(
                f"{policies.source}: the webhook {label(sink.key).removeprefix('webhook ')} is "
                f"signed with {seen} in one place and {sink.secret_env} in another; use one "
                "secret_env for one URL"
            )
    for sink in sinks.values():
        resolve(sink, environ)
    if not sinks:
        return "notify: no sinks"
    return "notify: " + ", ".join(label(k) for k in sinks)
