"""shared.settings: defaults, every variable, and a ConfigError naming the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import Settings


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.mlflow_tracking_uri == "http://localhost:5000"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.webhook_secret is None
    assert settings.allow_unsigned is False
    assert settings.policy_file is None
    assert settings.mlflow_timeout_seconds == 10.0
    assert settings.retry_max_attempts == 16
    assert settings.retry_backoff_seconds == 10.0
    assert settings.retry_backoff_max_seconds == 300.0
    assert settings.dedupe_ttl_seconds == 86_400
    assert settings.log_level == "INFO"
    assert settings.database_url == "sqlite:///.mlflow-gate/ledger.db"


def test_empty_values_count_as_unset() -> None:
    env = {
        "GATE_WEBHOOK_SECRET": "",
        "GATE_POLICY_FILE": "",
        "GATE_REDIS_URL": "",
        "GATE_RETRY_MAX_ATTEMPTS": "  ",
        "MLFLOW_TRACKING_TOKEN": "",
    }
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("name", "raw", "field", "value"),
    [
        ("MLFLOW_TRACKING_URI", "https://mlflow.example.com/", "mlflow_tracking_uri", None),
        ("MLFLOW_TRACKING_TOKEN", "tok", "mlflow_token", "tok"),
        ("MLFLOW_TRACKING_USERNAME", "alice", "mlflow_username", "alice"),
        ("MLFLOW_TRACKING_PASSWORD", "pw", "mlflow_password", "pw"),
        ("MLFLOW_TRACKING_INSECURE_TLS", "true", "mlflow_insecure_tls", True),
        ("GATE_MLFLOW_TIMEOUT_SECONDS", "2.5", "mlflow_timeout_seconds", 2.5),
        ("GATE_REDIS_URL", "redis://redis:6380/2", "redis_url", "redis://redis:6380/2"),
        ("GATE_WEBHOOK_SECRET", "s3cret", "webhook_secret", "s3cret"),
        ("GATE_ALLOW_UNSIGNED", "yes", "allow_unsigned", True),
        ("GATE_POLICY_FILE", "/etc/gate/policy.yaml", "policy_file", None),
        ("GATE_RETRY_MAX_ATTEMPTS", "3", "retry_max_attempts", 3),
        ("GATE_RETRY_BACKOFF_SECONDS", "0", "retry_backoff_seconds", 0.0),
        ("GATE_RETRY_BACKOFF_MAX_SECONDS", "600", "retry_backoff_max_seconds", 600.0),
        ("GATE_DEDUPE_TTL_SECONDS", "60", "dedupe_ttl_seconds", 60),
        ("GATE_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("GATE_DATABASE_URL", "sqlite:///l.db", "database_url", "sqlite:///l.db"),
    ],
)
def test_each_variable_is_parsed(name: str, raw: str, field: str, value: object) -> None:
    settings = Settings.from_env({name: raw})
    expected = {
        "mlflow_tracking_uri": "https://mlflow.example.com",  # trailing slash dropped
        "policy_file": Path("/etc/gate/policy.yaml"),
    }.get(field, value)
    assert getattr(settings, field) == expected
    assert type(getattr(settings, field)) is type(expected)


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " Yes ", "on"])
def test_true_booleans(raw: str) -> None:
    assert Settings.from_env({"GATE_ALLOW_UNSIGNED": raw}).allow_unsigned is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_false_booleans(raw: str) -> None:
    assert Settings.from_env({"GATE_ALLOW_UNSIGNED": raw}).allow_unsigned is False


@pytest.mark.parametrize("name", ["GATE_ALLOW_UNSIGNED", "MLFLOW_TRACKING_INSECURE_TLS"])
@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_a_bad_boolean_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: raw})
    assert f"{name}={raw!r} is not a boolean" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "raw", "problem"),
    [
        ("GATE_MLFLOW_TIMEOUT_SECONDS", "ten", "is not a number"),
        ("GATE_RETRY_BACKOFF_SECONDS", "10s", "is not a number"),
        ("GATE_RETRY_BACKOFF_MAX_SECONDS", "5min", "is not a number"),
        ("GATE_RETRY_MAX_ATTEMPTS", "many", "is not a whole number"),
        ("GATE_RETRY_MAX_ATTEMPTS", "2.5", "is not a whole number"),
        ("GATE_DEDUPE_TTL_SECONDS", "1d", "is not a whole number"),
    ],
)
def test_a_non_numeric_value_is_a_config_error_naming_the_variable(
    name: str, raw: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: raw})
    assert f"{name}={raw!r} {problem}" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "raw", "minimum"),
    [
        ("GATE_MLFLOW_TIMEOUT_SECONDS", "0.05", "0.1"),
        ("GATE_RETRY_MAX_ATTEMPTS", "0", "1"),
        ("GATE_RETRY_BACKOFF_SECONDS", "-1", "0"),
        ("GATE_RETRY_BACKOFF_MAX_SECONDS", "-1", "0"),
        ("GATE_DEDUPE_TTL_SECONDS", "0", "1"),
    ],
)
def test_a_value_below_the_minimum_is_a_config_error(name: str, raw: str, minimum: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: raw})
    assert f"{name}={raw!r} is below the minimum of {minimum}" in str(excinfo.value)


def test_a_backoff_maximum_below_the_backoff_is_a_config_error() -> None:
    env = {"GATE_RETRY_BACKOFF_SECONDS": "30", "GATE_RETRY_BACKOFF_MAX_SECONDS": "20"}
    with pytest.raises(ConfigError, match="GATE_RETRY_BACKOFF_MAX_SECONDS=20 is below"):
        Settings.from_env(env)


@pytest.mark.parametrize("uri", ["localhost:5000", "file:///tmp/mlruns", "databricks"])
def test_a_tracking_uri_that_is_not_http_is_a_config_error(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_URI=.* is not an http"):
        Settings.from_env({"MLFLOW_TRACKING_URI": uri})


@pytest.mark.parametrize("level", ["TRACE", "warn", "verbose"])
def test_an_unknown_log_level_is_a_config_error(level: str) -> None:
    with pytest.raises(ConfigError, match="GATE_LOG_LEVEL="):
        Settings.from_env({"GATE_LOG_LEVEL": level})


@pytest.mark.parametrize(
    "url", ["not a url", "postgres://gate:hunter2@db/gate", "postgresql://gate:hunter2@db:x/g"]
)
def test_a_database_url_sqlalchemy_cannot_use_is_a_config_error_hiding_the_password(
    url: str,
) -> None:
    with pytest.raises(ConfigError, match="GATE_DATABASE_URL=") as excinfo:
        Settings.from_env({"GATE_DATABASE_URL": url})
    assert "hunter2" not in str(excinfo.value)
    assert "hunter2" not in repr(Settings(database_url="postgresql://gate:hunter2@db/gate"))


@pytest.mark.parametrize("name", ["GATE_MLFLOW_TIMEOUT_SECONDS", "GATE_RETRY_BACKOFF_SECONDS"])
def test_nan_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "nan"})


# --- require_webhook_secret --------------------------------------------------------------------


def test_the_receiver_requires_a_secret() -> None:
    with pytest.raises(ConfigError, match="GATE_WEBHOOK_SECRET is not set"):
        Settings().require_webhook_secret()


def test_a_secret_satisfies_the_requirement() -> None:
    Settings(webhook_secret="s3cret").require_webhook_secret()


def test_unsigned_mode_waives_the_requirement() -> None:
    Settings(allow_unsigned=True).require_webhook_secret()


# --- retry_delay -------------------------------------------------------------------------------


def test_retry_delay_doubles_from_the_backoff_up_to_the_cap() -> None:
    settings = Settings(retry_backoff_seconds=10.0, retry_backoff_max_seconds=300.0)
    delays = [settings.retry_delay(attempt) for attempt in range(1, 9)]
    assert delays == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_retry_delay_treats_attempt_zero_as_the_first() -> None:
    assert Settings(retry_backoff_seconds=7.0).retry_delay(0) == 7.0


def test_retry_delay_with_a_zero_backoff_is_zero() -> None:
    settings = Settings.from_env({"GATE_RETRY_BACKOFF_SECONDS": "0"})
    assert settings.retry_delay(5) == 0.0


def test_retry_delay_for_the_last_default_attempt_is_capped() -> None:
    settings = Settings()
    assert settings.retry_delay(settings.retry_max_attempts) == 300.0


def test_retry_delay_stays_capped_for_very_late_attempts() -> None:
    settings = Settings.from_env({"GATE_RETRY_MAX_ATTEMPTS": "5000"})
    assert settings.retry_delay(2000) == 300.0


def test_the_databricks_section_is_absent_unless_configured() -> None:
    assert Settings.from_env({}).databricks is None
    receiver_only = Settings.from_env({"GATE_DATABRICKS_WEBHOOK_SECRET": "s"}).databricks
    assert receiver_only is not None
    assert receiver_only.verifies_webhooks and not receiver_only.has_workspace
    full = Settings.from_env(
        {"GATE_DATABRICKS_HOST": "https://adb-1.azuredatabricks.net/", "GATE_DATABRICKS_TOKEN": "t"}
    ).databricks
    assert full is not None and full.has_workspace and not full.verifies_webhooks
    assert full.host == "https://adb-1.azuredatabricks.net"


def test_a_databricks_host_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="GATE_DATABRICKS_TOKEN"):
        Settings.from_env({"GATE_DATABRICKS_HOST": "https://adb-1.azuredatabricks.net"})
    with pytest.raises(ConfigError, match="not an http"):
        Settings.from_env({"GATE_DATABRICKS_HOST": "adb-1", "GATE_DATABRICKS_TOKEN": "t"})
