"""Running the command line in-process, as the CLI tests do."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from generator._cli import main
from tests.helpers.specs import ROOT

SECRETS = {"pki/ca.key", "pki/admin.key", *(f"pki/etcd0{i}.key" for i in (1, 2, 3)),
           *(f"pki/etcd0{i}.ssh.key" for i in (1, 2, 3)),
           *(f"etcd0{i}/{f}" for i in (1, 2, 3) for f in ("user-data", "seed.iso"))}


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def build(workdir: Path) -> tuple[int, str, str]:
    return run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))
            if p.is_file()}


def set_spec(workdir: Path, old: str, new: str) -> None:
    spec = workdir / "cluster.yaml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))


def verify(workdir: Path) -> tuple[int, str, str]:
    return run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))


def assert_refused(workdir: Path, field: str) -> str:
    """The build exits 1 with only error/hint lines, one naming `field`, and writes nothing."""
    code, _, err = build(workdir)
    assert code == 1, err
    assert any(line.startswith(f"error: {field}") for line in err.splitlines()), err
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in err.splitlines()), err
    assert not (workdir / "out").exists()
    return err


def age_identity(directory: Path) -> tuple[Path, str]:
    """A new age identity file in `directory`, and its public recipient."""
    path = directory / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return path, public.stdout.strip()


def git(repo: Path, *args: str) -> str:
    """git in `repo`, with a fixed author and none of the caller's configuration."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}).stdout


def run_subprocess(workdir: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """`python -m generator` as a process of its own, in `workdir`."""
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)
