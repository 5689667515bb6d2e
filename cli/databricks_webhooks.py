"""`mlflow-gate webhook register --databricks`: the registry webhook on a Databricks workspace."""

from __future__ import annotations

from typing import Any

from shared import databricks
from shared.errors import ConfigError
from shared.settings import Settings
from worker.databricks_api import WEBHOOKS_LIST, DatabricksApi


def register(settings: Settings, *, url: str, model: str | None) -> str:
    """Create the registry webhook that sends transition requests and stage transitions to
    `url`, signed with GATE_DATABRICKS_WEBHOOK_SECRET; an existing one for `url` is kept."""
    if not settings.databricks_webhook_secret:
        raise ConfigError(
            "GATE_DATABRICKS_WEBHOOK_SECRET is not set: the webhook must be created with the "
            "secret the receiver verifies; set it here and in the receiver's environment"
        )
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} must be an http(s) URL ending in /webhooks/databricks")
    api = DatabricksApi(settings)
    where = f"model {model}" if model else "every model of the workspace registry"
    params: dict[str, Any] = {"model_name": model} if model else {}
    for hook in api.call("GET", WEBHOOKS_LIST, params=params).get("webhooks", []):
        existing = hook.get("http_url_spec") or {}
        if existing.get("url") == url and hook.get("model_name") == model:
            return (
                f"registry webhook {hook.get('id')} already sends {where} to {url}; nothing "
                "created (delete it in Databricks first to change its secret)"
            )
    http_url_spec: dict[str, Any] = {
        "url": url,
        "secret": settings.databricks_webhook_secret,
        "enable_ssl_verification": url.startswith("https://"),
    }
    if settings.databricks_webhook_authorization:
        http_url_spec["authorization"] = settings.databricks_webhook_authorization
    spec: dict[str, Any] = {
        "events": list(databricks.SUBSCRIBED),
        "description": "mlflow-gate: governance decisions on transition requests",
        "status": "ACTIVE",
        "http_url_spec": http_url_spec,
    }
    if model:
        spec["model_name"] = model
    hook = api.create_registry_webhook(spec)
    return (
        f"created registry webhook {hook.get('id')} on {settings.databricks_host} for {where}: "
        f"{url} for {', '.join(databricks.SUBSCRIBED)}, signed with "
        "GATE_DATABRICKS_WEBHOOK_SECRET"
    )
