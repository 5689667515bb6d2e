"""The registries a worker decides for, built once per process from the settings.

To add a registry: a module here implementing worker.registry.Registry, a value in
shared.events.RegistryKind, and a line in `build` below.
"""

from __future__ import annotations

from collections.abc import Iterator

from shared.errors import ConfigError, PermanentError
from shared.events import RegistryKind
from shared.settings import Settings
from worker.registries import databricks, mlflow
from worker.registry import Registry
from worker.rest import RestClient

# What to configure on a worker that gets events of a registry it was not given.
_SETUP = {
    RegistryKind.MLFLOW: "set MLFLOW_TRACKING_URI",
    RegistryKind.DATABRICKS: "set GATE_DATABRICKS_HOST and GATE_DATABRICKS_TOKEN",
}


class Registries:
    def __init__(self, registries: dict[RegistryKind, Registry]) -> None:
        self._by_kind = registries

    def get(self, kind: RegistryKind) -> Registry:
        registry = self._by_kind.get(kind)
        if registry is None:
            raise PermanentError(
                f"a {kind.value} event, but this worker has no {kind.value} registry: "
                f"{_SETUP[kind]}, restart the worker, then replay the event"
            )
        return registry

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind


def open_source(settings: Settings) -> mlflow.MlflowRegistry:
    return mlflow.MlflowRegistry(RestClient(mlflow.service(settings)))


def workspace_client(settings: Settings) -> RestClient:
    section = settings.databricks
    if section is None or not section.has_workspace:
        raise ConfigError(f"no Databricks workspace: {_SETUP[RegistryKind.DATABRICKS]}")
    return RestClient(databricks.service(section, settings.mlflow_timeout_seconds))


def workspace(settings: Settings) -> databricks.DatabricksRegistry:
    return databricks.DatabricksRegistry(workspace_client(settings))


def one(settings: Settings, kind: RegistryKind) -> Registry:
    """The registry of that kind alone (for a command)."""
    if kind is RegistryKind.DATABRICKS:
        return workspace(settings)
    return open_source(settings)


def build(settings: Settings) -> Registries:
    """Open-source MLflow always; the Databricks workspace when one is configured."""
    found: dict[RegistryKind, Registry] = {RegistryKind.MLFLOW: open_source(settings)}
    if settings.databricks is not None and settings.databricks.has_workspace:
        found[RegistryKind.DATABRICKS] = workspace(settings)
    return Registries(found)
