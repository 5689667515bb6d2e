"""URLs that may carry credentials (`http://user:password@host`): take them apart, or hide them.

MLFLOW_TRACKING_URI, GATE_REDIS_URL and the workspace host may hold a password, and URLs end up
in logs, in error messages (which become dead letters, listed by /admin/dlq and `mlflow-gate dlq
list`) and in `mlflow-gate status`. What is shown goes through `redacted` (a URL) or `scrubbed`
(any text).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# A URL's scheme and user information: everything between "//" and the authority's last "@".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")


def redacted(url: str) -> str:
    """The URL with its password hidden (`user:***@host`); a user name without a password (often
    a token) is hidden whole (`***@host`)."""
    return scrubbed(url)


def scrubbed(text: str) -> str:
    """Any text (an error message, a log line) with the credentials of every URL in it hidden."""
    return _USERINFO.sub(_hide, text)


def _hide(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return match["scheme"] + (f"{user}:***@" if colon else "***@")


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without its user information, and the user name and password it held
    (percent-decoded, as an HTTP client reads them); None for what it did not hold."""
    match = _USERINFO.match(url.strip())
    if match is None:
        return url, None, None
    user, colon, password = match["userinfo"].partition(":")
    clean = match["scheme"] + url.strip()[match.end() :]
    return clean, unquote(user) if user else None, unquote(password) if colon else None
