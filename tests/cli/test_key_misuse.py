"""Keys and CAs: none is reused where it must not be, replaced or adopted silently, or imported when unfit."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from generator.iso import read_iso
from tests.helpers.cli import (
    age_identity,
    assert_refused,
    build,
    run,
    set_spec,
    verify,
)


@pytest.mark.parametrize("name", ["ca", "admin", "pki"])
def test_node_names_the_build_uses_are_refused(workdir: Path, name: str) -> None:
    """A node named ca would overwrite the CA's files; admin would ship the root client key; pki writes inside pki/."""
    set_spec(workdir, "name: etcd03,", f"name: {name},")
    err = assert_refused(workdir, "nodes.2.name")
    assert "reserved" in err


def test_reserved_name_is_refused_when_joining_later(workdir: Path) -> None:
    """Added later with join: true, a node named ca is refused and the CA key stays where it is."""
    assert build(workdir)[0] == 0
    ca_key = (workdir / "out" / "demo" / "pki" / "ca.key").read_bytes()
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text().replace(
        "etcd:\n", '  - {name: ca, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}\netcd:\n', 1))
    code, _, err = build(workdir)
    assert code == 1 and "error: nodes.3.name: 'ca' is reserved" in err
    assert (workdir / "out" / "demo" / "pki" / "ca.key").read_bytes() == ca_key
    assert not (workdir / "out" / "demo" / "ca").exists()


def test_ca_key_as_a_node_key_is_refused(workdir: Path) -> None:
    """A node key that is the CA's key is never embedded in a seed: build and verify both refuse it."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    shutil.copy(pki / "ca.key", pki / "etcd02.key")
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd02.key:" in err
    assert {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()} == before
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd02.key: is the same key as pki/ca.key" in err


def test_key_shared_by_two_nodes_is_refused(workdir: Path) -> None:
    """Two nodes may never share a key, even with the manifest edited to record it for both."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    shutil.copy(root / "pki" / "etcd01.key", root / "pki" / "etcd02.key")
    document = json.loads((root / "manifest.json").read_text())
    document["files"]["pki/etcd02.key"] = dict(document["files"]["pki/etcd01.key"])
    (root / "manifest.json").write_text(json.dumps(document))
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd02.key: is the same key as pki/etcd01.key" in err
    assert not (root / "etcd02" / "user-data").read_bytes().count((root / "pki" / "etcd01.key").read_bytes()[30:90])


def test_replaced_key_is_refused_not_reissued(workdir: Path) -> None:
    """A key whose public half differs from the manifest's record stops the build; --rekey replaces it on purpose."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign_pem = foreign.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    (pki / "etcd03.key").write_bytes(foreign_pem)
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd03.key: its public key differs from the one manifest.json records" in err
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                         "--rekey", "etcd03")
    assert code == 0, err
    assert "pki: etcd03: new key (--rekey)" in out
    assert (pki / "etcd03.key").read_bytes() != foreign_pem
    assert verify(workdir)[0] == 0


def test_missing_recorded_key_is_not_silently_replaced(workdir: Path) -> None:
    """A recorded key that vanished is an error: a new key would be a silent re-key."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "pki" / "etcd01.key").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd01.key: missing, but manifest.json records its key" in err


def test_keys_without_their_manifest_are_not_adopted(workdir: Path, tmp_path: Path) -> None:
    """A pki/ planted (or copied) without the manifest that recorded it is refused, CA included."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "manifest.json").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/ca.key: not recorded in manifest.json" in err


def test_ca_key_appears_only_in_ca_key(workdir: Path) -> None:
    """No file of the tree, nor any file inside a seed ISO, holds the CA's private key, even after a node named ca."""
    assert build(workdir)[0] == 0
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text().replace(
        "etcd:\n", '  - {name: ca, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}\netcd:\n', 1))
    build(workdir)
    root = workdir / "out" / "demo"
    body = b"".join((root / "pki" / "ca.key").read_bytes().splitlines()[1:-1])
    holders = []
    for path in root.rglob("*"):
        if not path.is_file() or path == root / "pki" / "ca.key":
            continue
        contents = [path.read_bytes()] + (list(read_iso(path.read_bytes()).values()) if path.suffix == ".iso" else [])
        if any(body[:64] in b"".join(c.splitlines()) for c in contents):
            holders.append(path)
    assert holders == []


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age; make test installs it")
def test_substituted_sealed_key_is_refused(workdir: Path, tmp_path: Path) -> None:
    """An attacker's key encrypted to the public recipient, with sealed.json edited to match, is not restored."""
    ident, recipient = age_identity(tmp_path)
    assert build(workdir)[0] == 0
    common = ["--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out")]
    assert run("seal", *common, "--recipient", recipient)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    attacker = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    sealed = subprocess.run(["age", "--encrypt", "--armor", "--recipient", recipient], input=attacker,
                            capture_output=True, check=True).stdout
    (pki / "etcd02.key.age").write_bytes(sealed)
    index = json.loads((pki / "sealed.json").read_text())
    index["etcd02.key"]["key_sha256"] = hashlib.sha256(attacker).hexdigest()
    (pki / "sealed.json").write_text(json.dumps(index))
    for key in pki.glob("*.key"):
        key.unlink()
    code, _, err = run("unseal", *common, "--identity", str(ident))
    assert code == 1 and "error: pki/etcd02.key.age: holds a key whose public key differs" in err
    assert not (pki / "etcd02.key").exists()


def _import_ca(workdir: Path, tmp_path: Path, age_days: int, days_left: int, cert_sign: bool) -> None:
    """Write a CA to import, and point the spec's pki.ca at it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imported CA")])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(True, False, False, False, False, cert_sign, True, False, False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=age_days))
            .not_valid_after(now + dt.timedelta(days=days_left))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    set_spec(workdir, "validity_days: 365}", f"validity_days: 365, ca: {{cert: {tmp_path / 'ca.crt'}, "
                                             f"key: {tmp_path / 'ca.key'}}}}}")


def test_imported_ca_without_key_cert_sign_is_refused(workdir: Path, tmp_path: Path) -> None:
    """A CA certificate whose keyUsage does not allow signing certificates is not imported."""
    _import_ca(workdir, tmp_path, age_days=1, days_left=900, cert_sign=False)
    err = assert_refused(workdir, "pki.ca")
    assert "keyCertSign" in err


def test_imported_ca_close_to_expiry_is_an_error(workdir: Path, tmp_path: Path) -> None:
    """A CA inside renew_before_days would make every build reissue every leaf: say so instead."""
    _import_ca(workdir, tmp_path, age_days=1000, days_left=10, cert_sign=True)
    err = assert_refused(workdir, "pki.ca.cert")
    assert "within pki.renew_before_days" in err


def test_unseal_refuses_a_key_without_manifest(workdir: Path, tmp_path: Path) -> None:
    """unseal needs the manifest that records the keys; without one it says so."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "manifest.json").unlink()
    code, _, err = run("unseal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                       "--identity", str(tmp_path / "none"))
    assert code == 1 and "manifest.json: missing" in err
