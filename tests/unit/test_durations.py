"""shared.durations.since_timestamp: `30m`, `2h`, `1d` back from now, or an ISO 8601 time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared.durations import since_timestamp
from shared.errors import ConfigError

NOW = 1_800_000_000.0  # a fixed "now": every duration is measured back from it


@pytest.mark.parametrize(
    ("text", "seconds_back"),
    [
        ("30s", 30),
        ("30m", 30 * 60),
        ("2h", 2 * 3600),
        ("1d", 86_400),
        ("0s", 0),
        ("1.5h", 5400),
        (" 2h ", 2 * 3600),
        ("2 h", 2 * 3600),
    ],
)
def test_a_duration_is_that_long_before_now(text: str, seconds_back: float) -> None:
    # Given a duration, When it is read against a fixed now, Then it is now minus the duration
    assert since_timestamp(text, NOW) == NOW - seconds_back


def test_an_iso_time_with_z_is_utc() -> None:
    expected = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp()
    assert since_timestamp("2026-11-23T10:00Z", NOW) == expected
    assert since_timestamp("2026-11-23T10:00:00Z", NOW) == expected


def test_an_iso_time_with_an_offset_keeps_the_offset() -> None:
    # 10:00 at +02:00 is 08:00 UTC
    expected = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc).timestamp()
    assert since_timestamp("2026-11-23T10:00:00+02:00", NOW) == expected
    assert since_timestamp("2026-11-23T03:00:00-05:00", NOW) == expected


def test_a_naive_iso_time_is_taken_as_utc() -> None:
    expected = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc).timestamp()
    assert since_timestamp("2026-11-23T10:00:00", NOW) == expected


def test_an_iso_date_is_midnight_utc() -> None:
    expected = datetime(2026, 11, 23, tzinfo=timezone.utc).timestamp()
    assert since_timestamp("2026-11-23", NOW) == expected


def test_an_absolute_time_does_not_depend_on_now() -> None:
    assert since_timestamp("2026-11-23T10:00Z", NOW) == since_timestamp("2026-11-23T10:00Z", 0.0)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "yesterday", "30", "30M", "2H", "-1d", "1w", "h", "2h30m", "2026-13-45", "30 mins"],
)
def test_anything_else_is_a_config_error_showing_the_accepted_forms(text: str) -> None:
    # Given text that is neither a duration nor an ISO time
    # When it is read, Then a ConfigError quotes it and shows both accepted forms
    with pytest.raises(ConfigError) as caught:
        since_timestamp(text, NOW)
    message = str(caught.value)
    assert repr(text) in message
    assert "30m" in message
    assert "2h" in message
    assert "1d" in message
    assert "ISO" in message
    assert "2026-11-23T10:00Z" in message
