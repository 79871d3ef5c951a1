"""CA rotation in three phases: the phase machine, the files of each phase, verify, and what is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from generator.errors import MaterialError
from generator.rotation import STEPS, Phase, Rotation, target
from tests.helpers.cli import age_identity, build, run, set_spec, verify
from tests.helpers.specs import ROOT

LEAVES = ("etcd01", "etcd02", "etcd03", "admin")


def rotate(workdir: Path, step: str, *extra: str) -> tuple[int, str, str]:
    """A rotation step without asking the cluster (--force): the example's addresses are not to be dialled."""
    return run("rotate-ca", step, "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
               *(("--force",) if step != "begin" and "--dry-run" not in extra else ()), *extra)


def _pki(workdir: Path) -> Path:
    return workdir / "out" / "demo" / "pki"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _openssl_verify(ca_file: Path, cert: Path) -> bool:
    done = subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), str(cert)], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0


def _node_trust(workdir: Path, node: str = "etcd01") -> list[x509.Certificate]:
    """The CAs the node's seed installs as /etc/ssl/etcd/ca.crt."""
    import yaml

    user_data = yaml.safe_load((workdir / "out" / "demo" / node / "user-data").read_text())
    entry = next(f for f in user_data["write_files"] if f["path"].endswith("/ca.crt"))
    return x509.load_pem_x509_certificates(entry["content"].encode())


# Every phase and step: the step is taken only from the phase before it ("begin" also after a finished rotation).
ALLOWED = {("begin", Phase.NONE), ("begin", Phase.TRUST_NEW), ("issue", Phase.TRUST_BOTH), ("finish", Phase.ISSUE)}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("step", list(STEPS))
def test_phase_machine(step: str, phase: Phase) -> None:
    current = Rotation(phase, "a" * 64, "b" * 64)
    if (step, phase) in ALLOWED:
        assert target(current, step) is STEPS[step]
    else:
        with pytest.raises(MaterialError) as caught:
            target(current, step)
        assert caught.value.messages[0].startswith(f"rotate-ca {step}: ")
        assert "cannot be skipped or repeated" in caught.value.messages[0]
    assert target(current, None) is phase


def test_three_phases_end_to_end(workdir: Path) -> None:
    """begin, issue, finish: each phase's files, what nodes trust, what verify says, and what is kept."""
    assert build(workdir)[0] == 0
    pki = _pki(workdir)
    old_ca, old_key = (pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes()
    keys = {n: (pki / f"{n}.key").read_bytes() for n in LEAVES}
    certs = {n: (pki / f"{n}.crt").read_bytes() for n in LEAVES}
    (workdir / "old-admin.crt").write_bytes(certs["admin"])

    code, out, err = run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0 and "CA rotation" not in out

    # Phase 1: a new CA is trusted beside the old; no leaf changes.
    code, out, err = rotate(workdir, "begin")
    assert code == 0, err
    assert "pki: ca-next: created (rotation phase 1: trusted beside the old CA)" in out
    assert "CA rotation: phase 1 of 3 (trust both CAs)" in out and "then run 'rotate-ca issue'" in out
    new_ca = (pki / "ca-next.crt").read_bytes()
    assert (pki / "ca.crt").read_bytes() == old_ca and (pki / "ca-next.key").stat().st_mode & 0o777 == 0o600
    assert (pki / "ca-bundle.crt").read_bytes() == old_ca + new_ca
    assert _cert(pki / "ca-next.crt").subject != _cert(pki / "ca.crt").subject  # told apart by name too
    assert {n: (pki / f"{n}.crt").read_bytes() for n in LEAVES} == certs
    assert [c.public_bytes(serialization.Encoding.PEM) for c in _node_trust(workdir)] == [old_ca, new_ca]
    assert "ETCDCTL_CACERT=ca-bundle.crt" in (pki / "etcdctl.env").read_text()
    state = json.loads((pki / "rotation.json").read_text())
    assert state["phase"] == 1 and state["new_ca"] == hashlib.sha256(_cert(pki / "ca-next.crt").public_bytes(
        serialization.Encoding.DER)).hexdigest()
    code, _, err = verify(workdir)
    assert code == 0 and "warning: pki/rotation.json: CA rotation in phase 1 of 3 (trust both CAs)" in err, err

    # Phase 2: every leaf from the new CA, keys kept; trust unchanged.
    code, out, err = rotate(workdir, "issue")
    assert code == 0, err
    assert all(f"pki: {n}: reissued (issued from the new CA)" in out for n in LEAVES), out
    assert "'rotate-ca finish', which deletes the old CA's key" in out
    assert {n: (pki / f"{n}.key").read_bytes() for n in LEAVES} == keys
    for name in LEAVES:
        chain = x509.load_pem_x509_certificates((pki / f"{name}.crt").read_bytes())
        assert chain[0].issuer == _cert(pki / "ca-next.crt").subject
        assert chain[1].public_bytes(serialization.Encoding.PEM) == new_ca
        assert _openssl_verify(pki / "ca-bundle.crt", pki / f"{name}.crt")
        assert not _openssl_verify(pki / "ca.crt", pki / f"{name}.crt")
    assert _openssl_verify(pki / "ca-bundle.crt", workdir / "old-admin.crt")  # still trusted in phase 2
    code, _, err = verify(workdir)
    assert code == 0 and "phase 2 of 3 (issue from the new CA)" in err, err
    # A leaf of the old CA left behind in phase 2 is named by verify, and the next build reissues it.
    (pki / "admin.crt").write_bytes(certs["admin"])
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/admin.crt: is issued by the old CA, but CA rotation phase 2" in err, err
    code, out, _ = build(workdir)
    assert code == 0 and "pki: admin: reissued (issued from the new CA)" in out, out

    # The plan of phase 3 says first what it deletes.
    code, out, _ = rotate(workdir, "finish", "--dry-run")
    assert code == 0 and "  pki/ca-next.key" in out and "delete" in out and (pki / "ca-next.key").exists()

    # Phase 3: only the new CA; it takes pki/ca.crt and ca.key; the old key is gone.
    code, out, err = rotate(workdir, "finish")
    assert code == 0, err
    assert "pki: ca: replaced by the new CA" in out and "deleted pki/ca-next.key" in out
    assert (pki / "ca.crt").read_bytes() == new_ca and (pki / "ca.key").read_bytes() != old_key
    assert not any((pki / n).exists() for n in ("ca-next.crt", "ca-next.key", "ca-bundle.crt"))
    assert old_key not in b"".join(p.read_bytes() for p in pki.iterdir() if p.is_file())
    assert [c.public_bytes(serialization.Encoding.PEM) for c in _node_trust(workdir)] == [new_ca]
    assert "ETCDCTL_CACERT=ca.crt" in (pki / "etcdctl.env").read_text()
    assert not _openssl_verify(pki / "ca.crt", workdir / "old-admin.crt")
    assert all(_openssl_verify(pki / "ca.crt", pki / f"{n}.crt") for n in LEAVES)
    manifest = json.loads((workdir / "out" / "demo" / "manifest.json").read_text())
    assert not any("ca-next" in p or "ca-bundle" in p for p in manifest["files"])
    # Reissuing every leaf from the new CA kept every key: nothing was revoked, and the CRL is the new CA's.
    assert "revoked" not in manifest
    assert x509.load_der_x509_crl((pki / "crl.der").read_bytes()).issuer == _cert(pki / "ca.crt").subject
    code, out, err = verify(workdir)
    assert code == 0 and err == "", err

    # Steady state again: a build changes nothing; a second rotation may begin.
    code, out, _ = build(workdir)
    assert code == 0 and "(nothing changed)" in out and "CA rotation" not in out
    code, out, err = rotate(workdir, "begin")
    assert code == 0 and "pki: ca-next: created" in out, err


@pytest.mark.parametrize(("step", "first"), [("issue", None), ("finish", None), ("finish", "begin"),
                                             ("begin", "begin"), ("issue", "issue")])
def test_refused_step_writes_nothing(workdir: Path, step: str, first: str | None) -> None:
    assert build(workdir)[0] == 0
    if first == "issue":
        assert rotate(workdir, "begin")[0] == 0
    if first:
        assert rotate(workdir, first)[0] == 0
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    code, _, err = rotate(workdir, step)
    assert code == 1 and err.startswith(f"error: rotate-ca {step}: "), err
    assert {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", ["edit-phase", "delete-state", "stray-next"])
def test_damaged_rotation_state_is_refused(workdir: Path, damage: str) -> None:
    """pki/rotation.json is acted on only as the last build wrote it, and a next CA without it is not guessed at."""
    assert build(workdir)[0] == 0
    pki = _pki(workdir)
    if damage == "stray-next":
        (pki / "ca-next.crt").write_bytes((pki / "ca.crt").read_bytes())
        field = "pki/ca-next.crt: present, but no CA rotation is in progress"
    else:
        assert rotate(workdir, "begin")[0] == 0
        state = pki / "rotation.json"
        if damage == "edit-phase":
            state.write_text(state.read_text().replace('"phase": 1', '"phase": 2'))
            field = "pki/rotation.json: differs from the file manifest.json lists"
        else:
            state.unlink()
            field = "pki/rotation.json: missing, but manifest.json lists it"
    code, _, err = build(workdir)
    assert code == 1 and f"error: {field}" in err, err
    code, _, err = verify(workdir)
    assert code == 1, err


def _make_ca(path: Path, name: str) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(path / f"{name}.key"), "-out", str(path / f"{name}.crt"), "-days", "3650",
                    "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)


def test_imported_ca_rotates_to_another_imported_ca(workdir: Path) -> None:
    """pki.ca names the old CA; pki.ca_next the new one through phases 1 and 2; finish wants pki.ca to name it."""
    _make_ca(workdir, "corp-2025")
    _make_ca(workdir, "corp-2026")
    set_spec(workdir, "pki: {key_type: rsa2048, validity_days: 365}",
             "pki:\n  key_type: rsa2048\n  ca: {cert: corp-2025.crt, key: corp-2025.key}")
    assert build(workdir)[0] == 0
    pki = _pki(workdir)
    set_spec(workdir, "  ca: {cert: corp-2025.crt, key: corp-2025.key}",
             "  ca: {cert: corp-2025.crt, key: corp-2025.key}\n  ca_next: {cert: corp-2026.crt, key: corp-2026.key}")
    code, out, err = build(workdir)
    assert code == 1 and "error: pki.ca_next: names the CA a rotation moves to, but none is in progress" in err
    code, out, err = rotate(workdir, "begin")
    assert code == 0 and "pki: ca-next: imported" in out, err
    assert not (pki / "ca-next.key").exists() and not (pki / "ca.key").exists()
    code, out, err = rotate(workdir, "issue")
    assert code == 0, err
    assert _cert(pki / "admin.crt").issuer.rfc4514_string() == "CN=corp-2026"
    code, _, err = rotate(workdir, "finish")
    assert code == 1 and "error: pki.ca_next: 'rotate-ca finish' makes the next CA the cluster's CA" in err
    set_spec(workdir, "  ca: {cert: corp-2025.crt, key: corp-2025.key}\n  ca_next: {cert: corp-2026.crt, key: "
             "corp-2026.key}", "  ca: {cert: corp-2026.crt, key: corp-2026.key}")
    code, out, err = rotate(workdir, "finish")
    assert code == 0, err
    assert (pki / "ca.crt").read_bytes() == (workdir / "corp-2026.crt").read_bytes()
    assert not (pki / "ca.key").exists()
    assert verify(workdir)[0] == 0
    assert build(workdir)[0] == 0


def test_imported_ca_begin_without_a_next_ca(workdir: Path) -> None:
    """Rotating an imported CA without naming the next one makes one here, and says so."""
    _make_ca(workdir, "corp")
    set_spec(workdir, "pki: {key_type: rsa2048, validity_days: 365}",
             "pki:\n  key_type: rsa2048\n  ca: {cert: corp.crt, key: corp.key}")
    assert build(workdir)[0] == 0
    code, out, err = rotate(workdir, "begin")
    assert code == 0 and "pki: ca-next: created" in out, err
    assert (_pki(workdir) / "ca-next.key").exists()
    assert rotate(workdir, "issue")[0] == 0
    code, _, err = rotate(workdir, "finish")
    assert code == 1 and "error: pki.ca: the next CA was made by this tool" in err
    set_spec(workdir, "  ca: {cert: corp.crt, key: corp.key}", "")
    code, _, err = rotate(workdir, "finish")
    assert code == 0, err
    assert (_pki(workdir) / "ca.key").exists() and verify(workdir)[0] == 0


def test_seal_covers_the_next_ca_and_finish_keeps_its_sealed_copy_as_the_ca(workdir: Path, tmp_path: Path) -> None:
    """The next CA's key is sealed like every key; finish makes it pki/ca.key, and its sealed copy becomes
    pki/ca.key.age, so that a second operator's unseal restores the CA key in use (verify checks each sealed copy
    against the manifest)."""

    key_file, recipient = age_identity(tmp_path)
    assert build(workdir)[0] == 0
    args = ["seal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--recipient", recipient]
    assert run(*args)[0] == 0  # ca.key.age now holds the old CA's key
    assert rotate(workdir, "begin")[0] == 0
    code, out, _ = run(*args)
    assert code == 0 and "ca-next.key.age" in out
    code, out, _ = rotate(workdir, "issue")
    assert code == 0 and (_pki(workdir) / "ca-next.key.age").exists()  # kept, sealed, until finish
    code, out, _ = rotate(workdir, "finish")
    assert code == 0 and "moved pki/ca-next.key.age to pki/ca.key.age" in out, out
    pki = _pki(workdir)
    assert not (pki / "ca-next.key.age").exists()
    assert set(json.loads((pki / "sealed.json").read_text())) >= {"ca.key"}
    assert "ca-next.key" not in json.loads((pki / "sealed.json").read_text())
    assert verify(workdir)[0] == 0
    new_ca_key = (pki / "ca.key").read_bytes()
    clone = tmp_path / "clone"  # another operator's checkout: no key, only what is committed
    shutil.copytree(workdir / "out", clone / "out")
    for key in (clone / "out/demo/pki").glob("*.key"):
        key.unlink()
    code, _, err = run("unseal", "--spec", str(workdir / "cluster.yaml"), "--out", str(clone / "out"),
                       "--identity", str(key_file))
    assert code == 0, err
    assert (clone / "out/demo/pki/ca.key").read_bytes() == new_ca_key


def test_a_stale_sealed_ca_key_is_named(workdir: Path, tmp_path: Path) -> None:
    """A rotation whose next CA was never sealed leaves ca.key.age with the old CA's key: the build warns and
    verify fails, instead of saying nothing."""

    _, recipient = age_identity(tmp_path)
    assert build(workdir)[0] == 0
    args = ["seal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--recipient", recipient]
    assert run(*args)[0] == 0
    for step in ("begin", "issue"):
        assert rotate(workdir, step)[0] == 0
    code, _, err = rotate(workdir, "finish")
    assert code == 0 and "warning: pki/ca.key.age: holds a CA key other than the one in use" in err, err
    code, out, err = verify(workdir)
    assert code == 1 and "pki/ca.key.age: holds a key other than the pki/ca.key that manifest.json records" in out + err
    assert run(*args)[0] == 0
    assert verify(workdir)[0] == 0


def test_rotation_is_never_answered_from_the_fast_path(workdir: Path) -> None:
    """A no-op build is recorded; the rotation step right after it still does its work."""
    assert build(workdir)[0] == 0 and build(workdir)[0] == 0
    code, out, _ = rotate(workdir, "begin")
    assert code == 0 and "ca-next: created" in out
    code, out, _ = run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert "CA rotation: phase 1 of 3" in out


def test_interrupted_finish_is_completed_by_running_it_again(workdir: Path) -> None:
    """finish writes the new CA's key over pki/ca.key first; cut short there, a plain build refuses the tree and
    says to run finish again, which completes it."""
    assert build(workdir)[0] == 0
    assert rotate(workdir, "begin")[0] == 0 and rotate(workdir, "issue")[0] == 0
    pki = _pki(workdir)
    (pki / "ca.key").write_bytes((pki / "ca-next.key").read_bytes())  # killed right after that rename
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/ca.crt: the CA certificate and key do not match" in err, err
    assert "hint: if a 'rotate-ca finish' was interrupted, run it again" in err
    code, _, err = rotate(workdir, "finish")
    assert code == 0, err
    assert verify(workdir)[0] == 0


def test_both_imported_cas_missing_are_reported_at_once(workdir: Path) -> None:
    set_spec(workdir, "pki: {key_type: rsa2048, validity_days: 365}",
             "pki:\n  ca: {cert: a.crt, key: a.key}\n  ca_next: {cert: b.crt, key: b.key}")
    code, _, err = build(workdir)
    assert code == 1 and "error: pki.ca.cert: " in err and "error: pki.ca_next.cert: " in err, err
    assert not (workdir / "out").exists()


def test_next_ca_close_to_its_end_is_refused_by_its_own_name(workdir: Path) -> None:
    """A next CA that expires within renew_before_days is named as the one at fault, not the old CA."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(workdir / "short.key"), "-out", str(workdir / "short.crt"), "-days", "10",
                    "-subj", "/CN=short", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    assert build(workdir)[0] == 0
    set_spec(workdir, "pki: {key_type: rsa2048, validity_days: 365}",
             "pki:\n  key_type: rsa2048\n  ca_next: {cert: short.crt, key: short.key}")
    code, _, err = rotate(workdir, "begin")
    assert code == 1 and "error: pki.ca_next.cert: the CA expires on " in err, err
    assert not (_pki(workdir) / "ca-next.crt").exists()


def _killed_at(workdir: Path, out: Path, argv: list[str], n: int) -> tuple[int, int]:
    """Run the CLI with `argv` in a child that dies (no cleanup) at its nth os.replace (0: never); returns its exit
    code and how many renames it made or tried."""
    hook = ("import os, sys\nreal = os.replace\ncount = [0]\n"
            "def replace(a, b):\n    count[0] += 1\n"
            f"    if count[0] == {n}:\n        os._exit(9)\n    real(a, b)\n"
            "os.replace = replace\nfrom generator._cli import main\n"
            "import io\nsink = io.StringIO()\n"
            f"code = main({[*argv, '--spec', 'cluster.yaml', '--out', str(out)]!r}, sink, sink)\n"
            "print(count[0])\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", hook], cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=False)
    return done.returncode, int(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else 0


ORDER = ["begin", "issue", "finish"]


@pytest.mark.parametrize("step", ORDER)
def test_a_rotation_step_killed_at_any_rename_is_continued(workdir: Path, step: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of a CA rotation, killed before each of its renames in turn (rotation.json, ca-next.*, the keys,
    the manifest), is completed by running the same step again, without --force, and verify then passes. The
    killed run had passed its gate (here it was forced): the cluster is not asked again. Before, the plan that comes
    ahead of the gate refused the journal and told the operator to run the same step again, which refused again."""
    from generator import status

    def dialled(*_: object) -> None:
        raise AssertionError("the continued step asked the cluster")
    monkeypatch.setattr(status, "check", dialled)
    assert build(workdir)[0] == 0
    for earlier in ORDER[:ORDER.index(step)]:
        assert rotate(workdir, earlier)[0] == 0
    base = workdir / "base"
    shutil.copytree(workdir / "out", base)
    counted = workdir / "counted"
    shutil.copytree(base, counted)
    code, renames = _killed_at(workdir, counted, ["rotate-ca", step, "--force"], 0)
    assert code == 0 and renames > 3, renames
    for n in range(1, renames + 1):
        out = workdir / f"out{n}"
        shutil.copytree(base, out)
        code, _ = _killed_at(workdir, out, ["rotate-ca", step, "--force"], n)
        assert code == 9, n
        # Killed before its journal was in place, the step changed nothing: it runs again as new (forced here).
        journalled = (out / "demo" / "pki" / "pending.json").exists()
        code, _, err = run("rotate-ca", step, *([] if journalled else ["--force"]),
                           "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"{step} killed at rename {n} of {renames}: {err}"
        code, stdout, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"{step} killed at rename {n} of {renames}: {stdout}{err}"
        shutil.rmtree(out)


def test_issue_and_finish_wait_until_every_node_confirms(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rotate-ca issue` (and finish) asks the cluster first, and refuses with one line naming each node that does not
    run the seed of the phase before, writing nothing; --force goes on and says what may break. The cluster's answer
    is replaced here because the example's addresses are not to be dialled; the real one, on real etcd, is in
    tests/etcd/test_trust_cluster.py."""
    from generator import status

    assert build(workdir)[0] == 0 and rotate(workdir, "begin")[0] == 0
    asked: list[str] = []
    rows = [status.Row("etcd01", "192.168.0.1", True, state="in step", in_step=True),
            status.Row("etcd02", "192.168.0.2", True, state="behind"),
            status.Row("etcd03", "192.168.0.3", False, error="does not answer on 192.168.0.3:2379 (refused)")]
    problems = ["etcd02: runs seed etcd02-aaaaaaaaaaaaaaaa, the build's is etcd02-bbbbbbbbbbbbbbbb: roll it",
                "etcd03: does not answer on 192.168.0.3:2379 (refused)"]

    unknown: list[str] = []

    def check(spec: Path, out: Path, timeout: float) -> status.Status:
        asked.append(str(out))
        return status.Status(rows, "3.5", "trust both CAs", unknown, [], "wait", problems)

    monkeypatch.setattr(status, "check", check)
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    code, out, err = run("rotate-ca", "issue", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 1 and out == "" and asked == [str(workdir / "out")]
    assert err.splitlines() == [
        "error: rotate-ca issue: not every node runs the seed of the phase before (trust both CAs): etcd02 behind "
        "(runs seed etcd02-aaaaaaaaaaaaaaaa, the build's is etcd02-bbbbbbbbbbbbbbbb: roll it); etcd03 down (does not "
        "answer on 192.168.0.3:2379 (refused)); roll them first (etcd-seed status names the next), or pass --force: "
        "a node that does not trust the new CA yet refuses every certificate issued from it, and the cluster splits"]
    assert {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()} == before
    # A step out of order is refused as before, without asking the cluster.
    code, _, err = run("rotate-ca", "finish", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 1 and "the next step is 'rotate-ca issue'" in err and len(asked) == 1
    # Every spec node in step, but a member the spec no longer names is still in the cluster: refused.
    rows[1:] = [status.Row(n, f"192.168.0.{i}", True, state="in step", in_step=True) for i, n in ((2, "etcd02"),
                                                                                                  (3, "etcd03"))]
    problems[:] = ["member etcd04 (4d2) at https://192.168.0.4:2380 is not in the spec; remove it (docs/operations.md)"]
    unknown.append("etcd04 (4d2) at https://192.168.0.4:2380")
    code, out, err = run("rotate-ca", "issue", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 1 and err.startswith("error: rotate-ca issue: not every node runs the seed of the phase before "
                                        "(trust both CAs): member etcd04 (4d2) at https://192.168.0.4:2380 is not in "
                                        "the spec; roll them first"), err
    # Every node in step: the step is taken.
    unknown.clear()
    problems.clear()
    code, out, err = run("rotate-ca", "issue", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0 and "phase 2 of 3" in out and len(asked) == 3, err
    code, out, err = rotate(workdir, "finish")  # --force: not asked, and told what may break
    assert code == 0 and len(asked) == 3
    assert "warning: rotate-ca finish --force: the cluster was not asked whether every node runs the seed of the " \
           "phase before; if one does not, a node still serving a certificate of the old CA is refused by every " \
           "node that trusts only the new one" in err.splitlines()
