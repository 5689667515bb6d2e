"""`mlflow-gate policy test FILE`: what a policy file would have decided for the ledger's last
decisions, on the facts they recorded (shared/whatif.py). Reads the ledger without migrating it,
as the audit commands do.

Exit 0: no decision would flip; 1: at least one would; 2: the file cannot be read or is invalid,
or the ledger cannot be read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from cli.audit import reader, shown
from shared.errors import ConfigError
from shared.ledger import Ledger
from shared.outcomes import Outcome
from shared.policy import PolicySet, parse_policies
from shared.settings import Settings
from shared.whatif import EVALUATED, Trial, WhatIf, trial

Echo = Callable[[str], None]

PAGE = 200  # decisions read from the ledger at a time


def try_policy(
    settings: Settings,
    file: str,
    *,
    last: int,
    model: str | None,
    as_json: bool,
    echo: Echo,
) -> int:
    policies = _load(file)
    if policies is None:
        return 2
    with reader(settings) as ledger:
        where = ledger.shown_url
        trials = collect(ledger, policies, last=last, model=model)
    result = WhatIf(tuple(trials), policies.source)
    if as_json:
        echo(json.dumps({"last": last, "model": model, **result.to_dict()}, indent=2))
    else:
        echo(report(result, file=file, last=last, model=model, where=where))
    return 1 if result.flipped else 0


def _load(file: str) -> PolicySet | None:
    """The policy set in `file`, or None once it has said what is wrong (and where)."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        click.echo(f"cannot read {file}: {exc.strerror or exc}", err=True)
        return None
    except UnicodeDecodeError as exc:
        click.echo(f"invalid: {file}: not UTF-8 (byte {exc.start}); save it as UTF-8", err=True)
        return None
    try:
        return parse_policies(text, source=file)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        return None


def collect(ledger: Ledger, policies: PolicySet, *, last: int, model: str | None) -> list[Trial]:
    """The ledger's decisions, newest first, each decided again, until `last` of them could be;
    those that could not, in the same span, are kept too (to be counted and said)."""
    trials: list[Trial] = []
    seen: set[int] = set()  # a decision recorded while paging shifts the pages: never twice
    evaluated = offset = 0
    while evaluated < last:
        page = ledger.decisions(model_glob=model, limit=PAGE, offset=offset)
        if not page:
            break
        offset += len(page)
        for decision in page:
            if decision.id in seen:
                continue
            seen.add(decision.id)
            tried = trial(decision, policies)
            trials.append(tried)
            evaluated += tried.evaluated
            if evaluated == last:
                break
    return trials


def report(result: WhatIf, *, file: str, last: int, model: str | None, where: str) -> str:
    evaluated = [t for t in result.trials if t.evaluated]
    which = f" on models matching {model}" if model else ""
    span = "decision" if last == 1 else f"{last} decisions"
    lines = [
        f"What {file} would have decided for the last {span}{which} the gate evaluated "
        f"(ledger at {where}), newest first:"
    ]
    if evaluated:
        lines += _table(evaluated)
    lines += _not_evaluated([t for t in result.trials if not t.evaluated])
    lines.append(_summary(result, last))
    return "\n".join(lines)


def _table(trials: Sequence[Trial]) -> list[str]:
    header = ("ID", "TIME", "MODEL", "VERSION", "TARGET", "WAS -> WOULD", "")
    rows = [
        (
            str(t.decision.id),
            shown(t.decision.decided_at),
            t.decision.model,
            t.decision.version,
            t.decision.target,
            f"{t.was.value} -> {t.would.value if t.would else '?'}",
            "FLIPS" if t.flips else "",
        )
        for t in trials
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(header)]
    for tried, row in zip(trials, rows, strict=True):
        out.append(line(row))
        if tried.flips:
            out.extend(f"    {why}" for why in _why(tried))
    return out


def _why(tried: Trial) -> list[str]:
    """Why a decision flips: the failed checks (actual against required), else the reason."""
    if tried.would is Outcome.REJECTED:
        failed = [c for c in tried.failed if c.enforced]
        if failed:
            return [
                f"FAIL [{c.policy}] {c.check}: actual {_shown(c.actual)}; required {c.required}"
                for c in failed
            ]
    return [tried.reason]


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _not_evaluated(trials: Sequence[Trial]) -> list[str]:
    """Decisions in the span that could not be decided again: those that evaluated facts one by
    one (with why), the others counted by outcome."""
    if not trials:
        return []
    plural = "s" if len(trials) != 1 else ""
    lines = [f"Not decided again: {len(trials)} decision{plural} in the same span:"]
    for t in trials:
        if t.was in EVALUATED:
            d = t.decision
            lines.append(
                f"    #{d.id} {d.model} v{d.version} -> {d.target} ({t.was.value}): {t.reason}"
            )
    counts = Counter(t.was.value for t in trials if t.was not in EVALUATED)
    if counts:
        counted = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        lines.append(f"    {counted}: no rule was evaluated for them")
    return lines


def _summary(result: WhatIf, last: int) -> str:
    evaluated = result.evaluated
    if evaluated == 0:
        return "No decision in the ledger could be decided again: nothing to compare."
    flipped = len(result.flipped)
    text = f"{flipped} of {evaluated} decision{'s' if evaluated != 1 else ''} would flip"
    if evaluated < last:
        text += f" (the ledger has {evaluated} that could be decided again, fewer than {last})"
    return text + "."
