"""Sealed state: keys sealed with age, committed, and unsealed by a second operator rebuild the same bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import age_identity, build, git, run

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("git") is None,
                                reason="needs age and git; make test installs them")


def test_second_operator_rebuilds_identical_seeds(workdir: Path, tmp_path: Path) -> None:
    """Commit the tree with sealed keys; a fresh clone plus the identity rebuilds byte-identical ISOs."""
    ident, recipient = age_identity(tmp_path)
    assert build(workdir)[0] == 0
    code, out, err = run("seal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                         "--recipient", recipient)
    assert code == 0, err
    assert "8 keys sealed" in out
    pki = workdir / "out" / "demo" / "pki"
    assert sorted(p.name for p in pki.glob("*.key.age")) == sorted(p.name + ".age" for p in pki.glob("*.key"))
    assert b"PRIVATE KEY" not in (pki / "etcd01.key.age").read_bytes()

    repo = workdir / "out"
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "cluster")
    assert ".key\n" not in git(repo, "ls-files") + "\n"

    other = tmp_path / "second"
    other.mkdir()
    shutil.copy(workdir / "cluster.yaml", other)
    shutil.copy(workdir / "etcd.tar.gz", other)
    subprocess.run(["git", "clone", "-q", str(repo), str(other / "out")], check=True)
    assert not list((other / "out" / "demo" / "pki").glob("*.key"))
    code, out, err = run("unseal", "--spec", str(other / "cluster.yaml"), "--out", str(other / "out"),
                         "--identity", str(ident))
    assert code == 0, err
    assert "8 keys restored" in out
    code, out, _ = build(other)
    assert code == 0
    assert "pki: etcd01: reused" in out and "pki: ca: reused" in out
    for node in ("etcd01", "etcd02", "etcd03"):
        original = (workdir / "out" / "demo" / node / "seed.iso").read_bytes()
        assert (other / "out" / "demo" / node / "seed.iso").read_bytes() == original


def test_reseal_keeps_committed_files(workdir: Path, tmp_path: Path) -> None:
    """Sealing again with nothing changed rewrites no .age file (age output is random)."""
    _, recipient = age_identity(tmp_path)
    assert build(workdir)[0] == 0
    args = ["seal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--recipient", recipient]
    assert run(*args)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    before = {p.name: p.read_bytes() for p in pki.glob("*.age")}
    code, out, _ = run(*args)
    assert code == 0 and "0 keys sealed, 8 unchanged" in out
    assert {p.name: p.read_bytes() for p in pki.glob("*.age")} == before


def test_unseal_refuses_wrong_identity_and_never_replaces(workdir: Path, tmp_path: Path) -> None:
    """A wrong identity fails; a different key already on disk is never overwritten."""
    _, recipient = age_identity(tmp_path)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    wrong, _ = age_identity(stranger)
    assert build(workdir)[0] == 0
    common = ["--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out")]
    assert run("seal", *common, "--recipient", recipient)[0] == 0
    code, _, err = run("unseal", *common, "--identity", str(wrong))
    assert code == 1 and "age could not decrypt it" in err
    pki = workdir / "out" / "demo" / "pki"
    shutil.copy(pki / "etcd01.key", pki / "etcd02.key")
    code, _, err = run("unseal", *common, "--identity", str(tmp_path / "identity.txt"))
    assert code == 1 and "etcd02.key: exists and differs" in err


def test_seal_rejects_a_bad_recipient(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    code, _, err = run("seal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                       "--recipient", "ssh-rsa AAAA")
    assert code == 1 and "is not an age public key" in err
