"""The command line: a build in a temporary directory, bad input, re-runs, and one real subprocess."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from generator._cli import main
from generator.iso import read_iso
from tests.helpers.cli import SECRETS, build, run, set_spec, tree
from tests.helpers.specs import ROOT, fake_bundle


def test_build_writes_the_tree_with_modes(workdir: Path) -> None:
    """A build writes every file under out/<cluster>/; secrets are 0600, the rest 0644."""
    code, out, err = build(workdir)
    assert (code, err) == (0, "")
    root = workdir / "out" / "demo"
    files = tree(root)
    expected = {".gitignore", "manifest.json", "known_hosts", "pki/ca.crt", "pki/admin.crt", "pki/etcdctl.env",
                "pki/crl.der",
                *(f"pki/etcd0{i}.crt" for i in (1, 2, 3)), *SECRETS,
                *(f"etcd0{i}/{f}" for i in (1, 2, 3) for f in (
                    "user-data.redacted", "meta-data", "network-config", "options.env", "etcd.service"))}
    assert set(files) == expected
    assert {p for p, mode in files.items() if mode == 0o600} == SECRETS
    assert all(mode == 0o644 for p, mode in files.items() if p not in SECRETS)
    assert stat.S_IMODE((root / "pki").stat().st_mode) == 0o700
    assert "node    ip           cert expires  seed.iso" in out
    assert "etcd02  192.168.0.2  " in out


def test_iso_holds_the_rendered_files_and_bundle(workdir: Path) -> None:
    """Each seed.iso carries that node's user-data, meta-data, network-config and the tarball."""
    assert build(workdir)[0] == 0
    node = workdir / "out" / "demo" / "etcd02"
    files = read_iso((node / "seed.iso").read_bytes())
    assert files == {"user-data": (node / "user-data").read_bytes(),
                     "meta-data": (node / "meta-data").read_bytes(),
                     "network-config": (node / "network-config").read_bytes(),
                     "etcd-v3.5.1-linux-amd64.tar.gz": fake_bundle()}
    want = hashlib.sha256(fake_bundle()).hexdigest()
    assert f"want={want}" in files["user-data"].decode()


def test_rerun_changes_nothing(workdir: Path) -> None:
    """A second build over an unchanged spec writes no file of the cluster: contents and mtimes stay.
    (It records what it found in the git-ignored .etcd-seed-cache.json; tests/cli/test_fastpath.py.)"""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"

    def files() -> dict[Path, tuple[bytes, int]]:
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*")
                if p.is_file() and p.name != ".etcd-seed-cache.json"}

    before = files()
    code, out, _ = build(workdir)
    assert code == 0 and "0 of 39 files written (nothing changed)" in out
    assert files() == before


def test_gitignore_keeps_secrets_out_of_git(workdir: Path) -> None:
    """`git add` of the whole output tree stages no key, no full user-data and no ISO."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    assert build(workdir)[0] == 0
    out = workdir / "out"
    subprocess.run(["git", "init", "-q", str(out)], check=True)
    subprocess.run(["git", "-C", str(out), "add", "-A"], check=True)
    staged = set(subprocess.run(["git", "-C", str(out), "ls-files"], capture_output=True, text=True,
                                check=True).stdout.split())
    assert staged, "nothing staged at all"
    assert not {f"demo/{s}" for s in SECRETS} & staged
    assert "demo/etcd01/user-data.redacted" in staged and "demo/pki/ca.crt" in staged


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("ip: 192.168.0.2", "ip: 192.168.0.999"),
     "error: nodes.1.ip: '192.168.0.999' is not an IP address"),
    (lambda t: t.replace("bundle: etcd.tar.gz", "bundle: missing.tar.gz"),
     "error: etcd.bundle: "),
    (lambda t: t.replace("bundle: etcd.tar.gz", f"bundle: etcd.tar.gz\n  sha256: '{'0' * 64}'"),
     "error: etcd.bundle: "),
    (lambda t: t.replace('version: "3.5.1"', 'version: "3.5.2"'),
     "needs etcd-v3.5.2-linux-amd64/"),
    (lambda t: t.replace("validity_days: 365}", "validity_days: 365, ca: {cert: no.crt, key: no.key}}"),
     "error: pki.ca.cert: "),
], ids=["bad-ip", "missing-bundle", "bundle-sha-mismatch", "bundle-wrong-version", "missing-ca"])
def test_bad_input_writes_nothing(workdir: Path, edit: object, expected: str) -> None:
    """Bad input exits 1 with error: lines naming the field, no traceback, and no output at all."""
    spec = workdir / "cluster.yaml"
    spec.write_text(edit(spec.read_text()))  # type: ignore[operator]
    code, _, err = build(workdir)
    assert code == 1
    assert expected in err
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in err.splitlines()), err
    assert "Traceback" not in err
    assert not (workdir / "out").exists()


def test_imported_ca_that_does_not_match_its_key(workdir: Path, tmp_path: Path) -> None:
    """An imported CA whose cert and key disagree is refused before anything is written."""
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    assert build(other)[0] == 0
    pki = other / "out" / "demo" / "pki"
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text().replace(
        "validity_days: 365}", f"validity_days: 365, ca: {{cert: {pki / 'ca.crt'}, key: {pki / 'admin.key'}}}}}"))
    code, _, err = build(workdir)
    assert code == 1 and "error: pki.ca: the CA certificate and key do not match" in err
    assert not (workdir / "out").exists()


def test_existing_ca_is_never_replaced(workdir: Path) -> None:
    """With ca.key gone, a build refuses to make a new CA over the old ca.crt."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    ca = (pki / "ca.crt").read_bytes()
    (pki / "ca.key").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "pki/ca.key: missing while its pair exists" in err
    assert (pki / "ca.crt").read_bytes() == ca and not (pki / "ca.key").exists()


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error."""
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_missing_spec_file(tmp_path: Path) -> None:
    code, _, err = run("build", "--spec", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 1 and err.startswith("error: ") and "no such spec file" in err


def test_check_writes_nothing(workdir: Path) -> None:
    """`check` validates spec and inputs and writes nothing."""
    code, out, _ = run("check", "--spec", str(workdir / "cluster.yaml"))
    assert code == 0 and "3 members" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["cluster.yaml", "etcd.tar.gz"]


def test_hash_password(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """hash-password prints a SHA-512 crypt hash that verifies and that the spec accepts."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    code, out, _ = run("hash-password")
    digest = out.strip()
    assert code == 0 and sha512_crypt.verify("s3cret", digest)
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text() + f"admin: {{password_hash: '{digest}'}}\n")
    assert build(workdir)[0] == 0
    assert digest in (workdir / "out" / "demo" / "etcd01" / "user-data").read_text()


def test_real_subprocess(workdir: Path) -> None:
    """`python -m generator build` as a user runs it, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "generator", "build", "--spec", "cluster.yaml",
                             "--out", "out"], cwd=workdir, capture_output=True, text=True, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert (workdir / "out" / "demo" / "etcd03" / "seed.iso").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "generator", "build", "--spec", "absent.yaml"],
                         cwd=workdir, capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_console_script_is_installed() -> None:
    """The etcd-seed console script is on the virtualenv's PATH and runs."""
    script = Path(sys.executable).parent / "etcd-seed"
    if not script.exists():
        pytest.skip("not running from an installed virtualenv")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("etcd-seed ")


def test_spec_warnings_are_shown_when_the_build_fails(workdir: Path) -> None:
    """A spec warning is printed before the errors of a build that fails, not only after one that succeeds."""
    set_spec(workdir, "  election_timeout: 1000\n", "  election_timeout: 1000\n  quota_backend_bytes: 10737418240\n")
    (workdir / "etcd.tar.gz").unlink()
    code, _, err = build(workdir)
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("warning: etcd.quota_backend_bytes:"), err
    assert any(line.startswith("error: etcd.bundle:") for line in lines), err
