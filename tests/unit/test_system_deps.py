"""tools/system-deps.sh: every outside command the tests look up or run is in its table, with the package that
brings it, so that `make test` installs it and a skip can name it."""

from __future__ import annotations

import re
import subprocess

from tests.helpers.specs import ROOT

SCRIPT = ROOT / "tools" / "system-deps.sh"
# Essential on every Debian system, or brought by the tests themselves (etcdctl comes in each etcd bundle).
BUILT_IN = {"sh", "bash", "etcdctl", "etcd", "true", "env"}


def _table() -> dict[str, tuple[str, set[str]]]:
    text = SCRIPT.read_text()
    body = text.split("TABLE='", 1)[1].split("'", 1)[0]
    rows = [line.split() for line in body.splitlines() if line.strip()]
    return {row[0]: (row[1], set(row[2:])) for row in rows}


def _commands_used(tier: str) -> set[str]:
    found = set()
    # The VM lab's helper serves tests/e2e alone; the VM tests use the helpers it imports.
    vm_lab = ("vm.py", "netns.py", "etcd_checks.py")
    helpers = [p for p in (ROOT / "tests" / "helpers").glob("*.py")
               if (p.name in vm_lab if tier == "e2e" else p.name != "vm.py")]
    paths = [*(ROOT / "tests" / tier).glob("*.py"), *helpers]
    for path in paths:
        text = path.read_text()
        found |= set(re.findall(r'which\("([A-Za-z0-9._-]+)"\)', text))
        found |= set(re.findall(r'(?:run|check_output|Popen|call)\(\s*\["([A-Za-z0-9._-]+)"', text))
    return found - BUILT_IN


def test_every_command_the_tests_use_has_a_row() -> None:
    table = _table()
    for tier, target in (("cli", "test"), ("parsers", "test"), ("etcd", "test"), ("unit", "test"), ("e2e", "e2e")):
        missing = {c for c in _commands_used(tier) if c not in table or target not in table[c][1]}
        assert not missing, f"tests/{tier} uses {missing}: give each a row for `{target}` in {SCRIPT.name}"
    assert {"age", "isoinfo", "cloud-init", "promtool"} <= {c for c, (_, ts) in table.items() if "test" in ts}


def test_list_prints_each_targets_packages() -> None:
    listed = subprocess.run(["sh", str(SCRIPT), "--list", "test"], capture_output=True, text=True, check=True)
    packages = set(listed.stdout.split())
    assert {"age", "genisoimage", "cloud-init", "prometheus", "openssl"} <= packages
    assert "qemu-system-x86" not in packages
    e2e = subprocess.run(["sh", str(SCRIPT), "--list", "e2e"], capture_output=True, text=True, check=True)
    assert {"qemu-system-x86", "mmdebstrap", "chrony"} <= set(e2e.stdout.split())


def test_an_unknown_target_is_refused() -> None:
    done = subprocess.run(["sh", str(SCRIPT), "lint"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage:" in done.stderr
