"""CI's time budget: the whole run against its budget, and the slowest VM scenarios when it is over.

usage: ci_budget.py TOTAL_SECONDS BUDGET_MINUTES [PYTEST_LOG]
PYTEST_LOG holds the output of `pytest --durations=0` (make e2e prints it); its slowest entries, where a
module's shared lab boots in its first test's setup, are named. Exit 1 when the run is over its budget.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HARD_LIMIT_MINUTES = 90  # CI's own limit: a run past it does not land
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s (setup|call|teardown) +(\S+)$")


def slowest(log: str, count: int = 5) -> list[tuple[float, str]]:
    """The `count` longest (seconds, 'phase test') entries of pytest's --durations report."""
    found = [(float(m.group(1)), f"{m.group(2)} {m.group(3)}")
             for line in log.splitlines() if (m := _DURATION.match(line.strip()))]
    return sorted(found, reverse=True)[:count]


def verdict(total_s: int, budget_min: int, log: str) -> tuple[int, str]:
    minutes = total_s / 60
    if minutes <= budget_min:
        return 0, f"ci: within budget: {minutes:.0f} of {budget_min} minutes (hard limit {HARD_LIMIT_MINUTES})"
    named = "; ".join(f"{seconds:.0f} s {what}" for seconds, what in slowest(log)) or "no durations found"
    return 1, (f"ci: OVER BUDGET: {minutes:.0f} minutes, budget {budget_min} (hard limit {HARD_LIMIT_MINUTES}); "
               f"slowest: {named}")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not all(a.isdigit() for a in argv[:2]):
        print(__doc__, file=sys.stderr)
        return 2
    log = Path(argv[2]).read_text(errors="replace") if len(argv) == 3 and Path(argv[2]).exists() else ""
    code, line = verdict(int(argv[0]), int(argv[1]), log)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
