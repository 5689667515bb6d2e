"""The ledger's database URL (GATE_DATABASE_URL): parsed by SQLAlchemy, shown without password.

Kept apart from the ledger so that reading the settings does not import Alembic. SQLAlchemy
itself is imported on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

VARIABLE = "GATE_DATABASE_URL"


def parse(raw: str, variable: str = VARIABLE) -> URL:
    """The URL `raw` denotes, with a loadable dialect; a ConfigError naming `variable` if not.

    The message shows the URL with its password hidden.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "e.g. postgresql+psycopg2://gate:PASSWORD@db:5432/gate or sqlite:///ledger.db"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"{variable}={hide_password(raw)!r} is not a database URL SQLAlchemy can parse; "
            f"{example}"
        ) from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(
            f"{variable}={hide_password(raw)!r}: SQLAlchemy has no dialect "
            f"{url.drivername!r}; use postgresql+psycopg2:// (not postgres://) or sqlite:///, "
            f"{example}"
        ) from None
    return url


def hide_password(url: str | URL) -> str:
    """`url` for log lines and messages: the password, if any, replaced by ***.

    A string that does not parse is redacted by hand: everything between `user:` and the last
    `@` of the part after `://` is hidden (hiding too much rather than too little).
    """
    if not isinstance(url, str):
        return url.render_as_string(hide_password=True)
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    userinfo, _, location = rest.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{location}"
