"""Links a notification carries: the version in MLflow's UI, and the gate's console once one is
configured (GATE_CONSOLE_URL)."""

from __future__ import annotations

from urllib.parse import quote

from shared.settings import Settings


def links(settings: Settings, model: str, version: str | int | None) -> dict[str, str]:
    """{"mlflow": the version's page (or the model's, without a version), "console": the
    model's page in the console when GATE_CONSOLE_URL is set}. Names are URL-quoted whole."""
    base = settings.mlflow_tracking_uri.rstrip("/")  # never holds credentials (see Settings)
    name = quote(model, safe="")
    page = f"{base}/#/models/{name}"
    found = {"mlflow": f"{page}/versions/{quote(str(version), safe='')}" if version else page}
    if settings.console_url:
        found["console"] = f"{settings.console_url.rstrip('/')}/models/{name}"
    return found
