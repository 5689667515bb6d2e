"""Reading operator-friendly times: `30m`, `2h`, `1d`, or an ISO 8601 timestamp."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from shared.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def seconds(text: str) -> float | None:
    """The number of seconds a duration such as `30m`, `2h` or `3d` denotes; None if `text`
    is not one."""
    match = _DURATION.match(text)
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


def since_timestamp(text: str, now: float) -> float:
    """The Unix time `text` denotes: a duration back from `now`, or an absolute timestamp."""
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"since {text!r} is not a time: give a duration (30m, 2h, 1d) or an ISO 8601 time "
            "(2026-11-23T10:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
