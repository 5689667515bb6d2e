"""Model-name globs (`fraud-*`, as in policy files) as SQL LIKE patterns.

The LIKE pattern selects a superset of the names the glob matches: `*` and `?` translate
exactly, a character class `[...]` becomes "any one character", and some databases compare
LIKE without case (SQLite). The caller filters the rows with `matches` for the exact answer.
"""

from __future__ import annotations

import fnmatch

ESCAPE = "\\"
_LIKE_SPECIAL = frozenset({"%", "_", ESCAPE})


def like_pattern(glob: str) -> str:
    """A LIKE pattern (escape character ESCAPE) matching every name `glob` matches."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char == "[" and (end := _class_end(glob, i)) is not None:
            out.append("_")
            i = end
        else:
            out.append(ESCAPE + char if char in _LIKE_SPECIAL else char)
        i += 1
    return "".join(out)


def matches(name: str, glob: str) -> bool:
    """Whether `name` matches `glob`, case-sensitively, as fnmatch reads globs."""
    return fnmatch.fnmatchcase(name, glob)


def _class_end(glob: str, start: int) -> int | None:
    """The index of the `]` closing the class opened at `start`, as fnmatch finds it."""
    j = start + 1
    if j < len(glob) and glob[j] == "!":
        j += 1
    if j < len(glob) and glob[j] == "]":
        j += 1
    while j < len(glob) and glob[j] != "]":
        j += 1
    return j if j < len(glob) else None
