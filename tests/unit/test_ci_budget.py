"""tools/ci_budget.py: a run over its budget fails with a line naming the slowest scenarios; one within passes.
And the split of the etcd tier that `make test` runs side by side names only modules that exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ETCD_SIDE
from tests.helpers.specs import ROOT

SCRIPT = ROOT / "tools" / "ci_budget.py"
# The tail of `pytest --durations=0` as make e2e prints it.
LOG = """============================= slowest durations ==============================
912.41s setup    tests/e2e/test_membership.py::test_data_disk
655.02s call     tests/e2e/test_membership.py::test_rotation
402.10s setup    tests/e2e/test_boot.py::test_every_member_healthy_over_mutual_tls
12.00s call     tests/e2e/test_boot.py::test_member_list_is_the_spec
0.01s teardown tests/e2e/test_boot.py::test_member_list_is_the_spec
=================== 21 passed in 2400.00s (0:40:00) ===================
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_a_run_over_budget_fails_naming_the_slowest(tmp_path: Path) -> None:
    log = tmp_path / "e2e.log"
    log.write_text(LOG)
    done = _run(str(61 * 60), "60", str(log))
    assert done.returncode == 1
    assert done.stdout.startswith("ci: OVER BUDGET: 61 minutes, budget 60 (hard limit 90); slowest: "
                                  "912 s setup tests/e2e/test_membership.py::test_data_disk; "
                                  "655 s call tests/e2e/test_membership.py::test_rotation; 402 s setup "), done.stdout


def test_a_run_within_budget_passes() -> None:
    done = _run(str(44 * 60), "60")
    assert (done.returncode, done.stdout) == (0, "ci: within budget: 44 of 60 minutes (hard limit 90)\n")


def test_bad_arguments_print_the_usage() -> None:
    assert _run("soon", "60").returncode == 2


def test_the_side_half_of_the_etcd_tier_names_its_modules() -> None:
    """A renamed module would silently move to the other half; both halves must hold tests."""
    modules = {p.name for p in (ROOT / "tests" / "etcd").glob("test_*.py")}
    assert modules >= ETCD_SIDE, sorted(ETCD_SIDE - modules)
    assert ETCD_SIDE and modules - ETCD_SIDE
