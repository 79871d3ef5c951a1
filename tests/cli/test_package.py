"""The package as pip and pipx users get it: a wheel that installs in a fresh virtualenv on the locked
dependencies, satisfies its own declared ranges with them, and builds the example twice from another directory."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.specs import ROOT, fake_bundle


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done


def test_the_wheel_installs_and_builds_the_example_from_another_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # The locked hatchling builds it where it is installed (make's virtualenv: nothing unlocked is fetched);
    # elsewhere (make test-newest) pip fetches the newest one, as for a user.
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "--wheel-dir", dist, ROOT)
    wheel = next(dist.glob("etcd_seed-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "--quiet", "--disable-pip-version-check"]
    _run(*pip, "install", "--require-hashes", "-r", ROOT / "requirements.lock")
    _run(*pip, "install", "--no-deps", wheel)
    _run(*pip, "check")  # the wheel's own ranges accept every locked version
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The example spec, with a stand-in tarball: this test checks the package, not etcd.
    (elsewhere / "etcd.tar.gz").write_bytes(fake_bundle("3.5.16"))
    example = (ROOT / "cluster.yaml").read_text()
    (elsewhere / "cluster.yaml").write_text(example.replace("vendor/etcd-v3.5.16-linux-amd64.tar.gz", "etcd.tar.gz"))
    tool = venv / "bin" / "etcd-seed"
    first = _run(tool, "build", "--spec", "cluster.yaml", "--out", "out", cwd=elsewhere)
    assert "etcd01  192.168.0.1" in first.stdout
    second = _run(tool, "build", "--spec", "cluster.yaml", "--out", "out", cwd=elsewhere)
    assert "(nothing changed)" in second.stdout
    assert _run(tool, "verify", "--spec", "cluster.yaml", "--out", "out", cwd=elsewhere).returncode == 0
    # The templates came from the wheel, not from this checkout.
    where = _run(venv / "bin" / "python", "-c", "import generator; print(generator.__file__)", cwd=elsewhere)
    assert str(venv) in where.stdout
