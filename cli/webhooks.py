"""`mlflow-gate webhook register`: the webhook that feeds the gate, created or updated: MLflow's,
or with --databricks the workspace's registry webhook."""

from __future__ import annotations

from typing import Any

from shared import databricks
from shared.errors import ConfigError
from shared.events import SUBSCRIBED
from shared.settings import Settings
from shared.urls import redacted
from worker.registries import open_source, workspace_client
from worker.registries.databricks import create_registry_webhook, registry_webhooks

WEBHOOKS = "/api/2.0/mlflow/webhooks"


def register(settings: Settings, *, url: str, name: str) -> str:
    """Make the webhook named `name` point at `url`, signed, for the gate's events."""
    if not settings.webhook_secret:
        raise ConfigError(
            "GATE_WEBHOOK_SECRET is not set: the webhook must be registered with the secret the "
            "receiver verifies; set it in this environment and the receiver's"
        )
    _check_url(url, "/webhooks/mlflow")
    rest = open_source(settings).rest
    events = [
        {"entity": entity.upper(), "action": action.upper()}
        for entity, action in (e.split(".") for e in SUBSCRIBED)
    ]
    spec = {
        "name": name,
        "url": url,
        "events": events,
        "secret": settings.webhook_secret,
        "status": "ACTIVE",
        "description": "mlflow-gate: governance decisions for model promotions",
    }
    existing = [h for h in rest.pages(WEBHOOKS, "webhooks", page_size=100) if h.get("name") == name]
    if existing:
        path = f"{WEBHOOKS}/{existing[0]['webhook_id']}"
        hook = rest.call("PATCH", path, json=spec)["webhook"]
        verb = "updated"
    else:
        hook = rest.call("POST", WEBHOOKS, json=spec)["webhook"]
        verb = "created"
    return (
        f"{verb} webhook '{name}' (id {hook.get('webhook_id')}) at "
        f"{redacted(settings.mlflow_tracking_uri)}: {url} for {', '.join(SUBSCRIBED)}, signed with "
        "GATE_WEBHOOK_SECRET"
    )


def register_workspace(settings: Settings, *, url: str, model: str | None) -> str:
    """Create the Databricks registry webhook that sends transition requests and stage
    transitions to `url`, signed with GATE_DATABRICKS_WEBHOOK_SECRET; an existing one for `url`
    is kept."""
    section = settings.databricks
    if section is None or not section.webhook_secret:
        raise ConfigError(
            "GATE_DATABRICKS_WEBHOOK_SECRET is not set: the webhook must be created with the "
            "secret the receiver verifies; set it here and in the receiver's environment"
        )
    _check_url(url, "/webhooks/databricks")
    rest = workspace_client(settings)
    where = f"model {model}" if model else "every model of the workspace registry"
    for hook in registry_webhooks(rest, model):
        existing = hook.get("http_url_spec") or {}
        if existing.get("url") == url and hook.get("model_name") == model:
            return (
                f"registry webhook {hook.get('id')} already sends {where} to {url}; nothing "
                "created (delete it in Databricks first to change its secret)"
            )
    http_url_spec: dict[str, Any] = {
        "url": url,
        "secret": section.webhook_secret,
        "enable_ssl_verification": url.startswith("https://"),
    }
    if section.webhook_authorization:
        http_url_spec["authorization"] = section.webhook_authorization
    spec: dict[str, Any] = {
        "events": list(databricks.SUBSCRIBED),
        "description": "mlflow-gate: governance decisions on transition requests",
        "status": "ACTIVE",
        "http_url_spec": http_url_spec,
    }
    if model:
        spec["model_name"] = model
    hook = create_registry_webhook(rest, spec)
    return (
        f"created registry webhook {hook.get('id')} on {redacted(section.host or '')} for {where}: "
        f"{url} for {', '.join(databricks.SUBSCRIBED)}, signed with "
        "GATE_DATABRICKS_WEBHOOK_SECRET"
    )


def _check_url(url: str, ending: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} must be an http(s) URL ending in {ending}")
