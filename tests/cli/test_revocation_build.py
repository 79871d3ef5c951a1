"""Revocation as the build writes it: pki/crl.der, read back by a real `openssl crl` and `openssl verify -crl_check`,
the manifest's record, what revokes and what does not (renewal keeps the key), and verify on a CRL that lies."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.helpers.cli import assert_refused, build, run, set_spec, verify

CLIENTS = "clients:\n  - {name: flannel, use: flannel}\n  - {name: reader}\netcd:\n"


def _manifest(workdir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((workdir / "out/demo/manifest.json").read_text())
    return document


def _serial(workdir: Path, name: str) -> str:
    serial: str = _manifest(workdir)["certificates"][f"pki/{name}.crt"]["serial"]
    return serial


def _delete_as_told(workdir: Path, name: str) -> None:
    """What the build's note tells the operator to delete once a client is no longer in use."""
    for path in [*(workdir / "out/demo/clients").glob(f"{name}.*"), *(workdir / "out/demo/pki").glob(f"{name}.*")]:
        path.unlink()


def _crl_check(workdir: Path, name: str, cert: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`openssl verify -crl_check` of a certificate against the CA and the build's CRL (PEM-converted: -CRLfile reads
    PEM only)."""
    pki = workdir / "out/demo/pki"
    pem = workdir / "crl.pem"
    subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(pki / "crl.der"), "-out", str(pem)], check=True)
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(pki / "ca.crt"), "-CRLfile", str(pem),
                           str(cert or pki / f"{name}.crt")], capture_output=True, text=True, check=False)


def test_every_build_writes_a_crl_that_openssl_reads(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(workdir / "out/demo/pki/crl.der"), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout
    assert "Issuer: CN = demo etcd CA, O = example.com" in text and "No Revoked Certificates." in text
    assert "X509v3 CRL Number:" in text
    assert _crl_check(workdir, "etcd01").returncode == 0
    assert "revoked" not in _manifest(workdir)


def test_revoked_client_goes_on_the_crl_and_stays_there(workdir: Path) -> None:
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    serial = _serial(workdir, "reader")
    kept = workdir / "reader.crt"
    kept.write_bytes((workdir / "out/demo/pki/reader.crt").read_bytes())
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    code, out, err = build(workdir)
    assert code == 0, err
    assert f"reader: its certificate (serial {serial}, " in out and "is revoked (revoked in the spec)" in out
    checked = _crl_check(workdir, "reader", kept)
    assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr, checked
    assert _crl_check(workdir, "flannel").returncode == 0 and _crl_check(workdir, "etcd02").returncode == 0
    revoked = _manifest(workdir)["revoked"]
    assert revoked == [{"serial": serial, "name": "reader", "not_after": revoked[0]["not_after"],
                        "revoked_at": revoked[0]["revoked_at"], "reason": "revoked in the spec"}]
    assert "pki/reader.crt" not in _manifest(workdir)["certificates"]
    assert "client reader is no longer in use: delete clients/reader.etcdctl.env, pki/reader.key and " in out
    _delete_as_told(workdir, "reader")
    # A later build keeps it on the list and the CRL as it is; verify agrees with the tree.
    crl = (workdir / "out/demo/pki/crl.der").read_bytes()
    code, out, _ = build(workdir)
    assert code == 0 and "(nothing changed)" in out and "is revoked" not in out
    assert (workdir / "out/demo/pki/crl.der").read_bytes() == crl
    assert verify(workdir)[0] == 0


def test_renewal_revokes_nothing_and_a_new_key_revokes_the_old_certificate(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    old = _serial(workdir, "etcd02")
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--renew")
    assert code == 0 and "revoked" not in out and "revoked" not in _manifest(workdir), out
    assert _serial(workdir, "etcd02") != old
    renewed = _serial(workdir, "etcd02")
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                         "--rekey", "etcd02")
    assert code == 0, err
    assert f"etcd02: its certificate (serial {renewed}, " in out and "(replaced by a new key)" in out
    assert "(1. etcd02; 2. etcd01; 3. etcd03)" in out  # the rekeyed node is rolled first
    # The certificate before the renewal has the old key too: it is revoked with the renewed one.
    assert f"etcd02: its certificate (serial {old}, " in out
    assert [r["serial"] for r in _manifest(workdir)["revoked"]] == sorted([old, renewed], key=lambda s: int(s, 16))


def _keep(workdir: Path, name: str, as_name: str) -> Path:
    kept = workdir / as_name
    kept.write_bytes((workdir / f"out/demo/pki/{name}.crt").read_bytes())
    return kept


def _renew(workdir: Path) -> None:
    code, _, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--renew")
    assert code == 0, err


def _assert_refused_by_openssl(workdir: Path, name: str, *certs: Path) -> None:
    for cert in certs:
        checked = _crl_check(workdir, name, cert)
        assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr, (cert, checked)


@pytest.mark.parametrize("how", ["revoked", "removed"])
def test_revoking_a_client_revokes_every_certificate_of_its_key(workdir: Path, how: str) -> None:
    """Renewal keeps the key and leaves the older certificate valid for its year: revoking the client, or taking it
    out of the spec, revokes both, and openssl refuses both."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    first = _keep(workdir, "reader", "reader-1.crt")
    _renew(workdir)
    second = _keep(workdir, "reader", "reader-2.crt")
    assert first.read_bytes() != second.read_bytes()
    if how == "revoked":
        set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    else:
        set_spec(workdir, "  - {name: reader}\n", "")
    code, out, err = build(workdir)
    assert code == 0, err
    serials = {f"{x509.load_pem_x509_certificate(c.read_bytes()).serial_number:x}" for c in (first, second)}
    assert {r["serial"] for r in _manifest(workdir)["revoked"]} == serials
    assert all(f"reader: its certificate (serial {serial}, " in out for serial in serials), out
    _assert_refused_by_openssl(workdir, "reader", first, second)
    assert _crl_check(workdir, "flannel").returncode == 0 and _crl_check(workdir, "etcd02").returncode == 0
    _delete_as_told(workdir, "reader")
    assert verify(workdir)[0] == 0


@pytest.mark.parametrize("how", ["rekey", "replace"])
def test_a_new_key_revokes_every_certificate_of_the_old_key(workdir: Path, how: str) -> None:
    """A replaced or rekeyed node: its certificates before and after a renewal both carry the old key, and both
    are refused; the new certificate is not."""
    assert build(workdir)[0] == 0
    first = _keep(workdir, "etcd03", "etcd03-1.crt")
    _renew(workdir)
    second = _keep(workdir, "etcd03", "etcd03-2.crt")
    if how == "rekey":
        code, _, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                           "--rekey", "etcd03")
    else:
        set_spec(workdir, "{name: etcd03, ", "{name: etcd03, replace: true, ")
        code, _, err = build(workdir)
    assert code == 0, err
    _assert_refused_by_openssl(workdir, "etcd03", first, second)
    assert _crl_check(workdir, "etcd03").returncode == 0


def test_a_client_revoked_during_a_ca_rotation_is_revoked_under_both_cas(workdir: Path) -> None:
    """After `rotate-ca issue` a client holds a certificate of each CA with the same key, and the old CA is still
    trusted: revoking it lists both serials (etcd matches serials alone, tests/etcd/test_revocation.py)."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    old_ca = _serial(workdir, "reader")
    for step in ("begin", "issue"):
        code, _, err = run("rotate-ca", step, "--force", "--spec", str(workdir / "cluster.yaml"),
                           "--out", str(workdir / "out"))
        assert code == 0, err
    new_ca = _serial(workdir, "reader")
    assert new_ca != old_ca
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    code, _, err = build(workdir)
    assert code == 0, err
    listed = x509.load_der_x509_crl((workdir / "out/demo/pki/crl.der").read_bytes())
    assert {f"{r.serial_number:x}" for r in listed} == {old_ca, new_ca}
    _delete_as_told(workdir, "reader")
    code, _, err = verify(workdir)
    assert code == 0, err


@pytest.mark.parametrize("lost", ["every entry", "one entry"])
def test_a_manifest_that_lost_revoked_entries_is_refused(workdir: Path, lost: str) -> None:
    """Entries deleted from manifest.json (a merge resolved the wrong way) would let the next CRL take the
    certificates back: the build refuses, naming each serial the CRL lists, and writes nothing."""
    set_spec(workdir, "etcd:\n", CLIENTS.replace("  - {name: reader}\n",
                                                 "  - {name: reader}\n  - {name: writer}\n"))
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n  - {name: writer}\n",
             "  - {name: reader, revoked: true}\n  - {name: writer, revoked: true}\n")
    assert build(workdir)[0] == 0
    document = _manifest(workdir)
    gone = document["revoked"] if lost == "every entry" else document["revoked"][:1]
    document["revoked"] = [r for r in document["revoked"] if r not in gone]
    if not document["revoked"]:
        del document["revoked"]
    (workdir / "out/demo/manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    before = {p: p.read_bytes() for p in (workdir / "out/demo").rglob("*") if p.is_file()}
    code, _, err = build(workdir)
    assert code == 1, err
    first = err.splitlines()[0]
    assert first.startswith("error: manifest.json: revoked: lacks ") and "which pki/crl.der lists" in first, err
    assert all(f"{r['serial']} ({r['name']})" in first for r in gone), err
    assert {p: p.read_bytes() for p in (workdir / "out/demo").rglob("*") if p.is_file()} == before
    assert verify(workdir)[0] == 1


def test_expired_entries_leave_the_crl(workdir: Path) -> None:
    """An entry whose certificate has expired is dropped: an expired certificate is refused anyway."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    assert build(workdir)[0] == 0
    document = _manifest(workdir)
    document["revoked"][0]["not_after"] = "2020-01-01T00:00:00Z"  # as if the build ran after it expired
    document["revoked"][0]["revoked_at"] = "2019-06-01T00:00:00Z"
    for entry in document["issued"]:
        if entry["serial"] == document["revoked"][0]["serial"]:
            entry["not_after"] = "2020-01-01T00:00:00Z"
    (workdir / "out/demo/manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    assert build(workdir)[0] == 0
    assert "revoked" not in _manifest(workdir)
    assert "No Revoked Certificates." in subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(workdir / "out/demo/pki/crl.der"), "-noout", "-text"],
        capture_output=True, text=True, check=True).stdout


def _resign_crl(workdir: Path, serials: list[int], key_path: Path | None = None) -> None:
    pki = workdir / "out/demo/pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((key_path or pki / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now) \
        .next_update(now + dt.timedelta(days=30)).add_extension(x509.CRLNumber(9), critical=False)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    (pki / "crl.der").write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))  # type: ignore[arg-type]


def test_verify_finds_a_crl_that_drops_an_entry_or_is_signed_by_another_key(workdir: Path, tmp_path: Path) -> None:
    """A CRL re-signed by the real CA without the revoked serial (a revoked client let back in) fails verify, as does
    one signed by another key; a build puts the right one back."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    assert build(workdir)[0] == 0
    _delete_as_told(workdir, "reader")
    assert verify(workdir)[0] == 0
    good = (workdir / "out/demo/pki/crl.der").read_bytes()
    _resign_crl(workdir, [])
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/crl.der: does not list what manifest.json's revoked lists: missing " in err, err
    other = tmp_path / "other.key"
    other.write_bytes(subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                                     capture_output=True, check=True).stdout)
    _resign_crl(workdir, [int(_manifest(workdir)["revoked"][0]["serial"], 16)], other)
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/crl.der: missing, or not a DER CRL signed by O=example.com,CN=demo etcd CA" in err
    assert build(workdir)[0] == 1  # what it revoked cannot be known: restored from git, as the build says
    (workdir / "out/demo/pki/crl.der").write_bytes(good)
    assert build(workdir)[0] == 0
    code, _, err = verify(workdir)
    assert code == 0, err


@pytest.mark.parametrize(("setting", "field", "expected"), [
    ("  - {name: reader, revoked: 'yes'}\n", "clients.1.revoked", "must be true or false"),
    ("  - {name: reader, revoked: 1}\n", "clients.1.revoked", "must be true or false"),
], ids=["string", "number"])
def test_bad_revoked_is_refused(workdir: Path, setting: str, field: str, expected: str) -> None:
    set_spec(workdir, "etcd:\n", CLIENTS.replace("  - {name: reader}\n", setting))
    assert expected in assert_refused(workdir, field)


def test_revoked_on_a_node_is_refused(workdir: Path) -> None:
    set_spec(workdir, "{name: etcd02, ", "{name: etcd02, revoked: true, ")
    assert "unknown key" in assert_refused(workdir, "nodes.1.revoked")


def test_revoked_certificate_stays_on_the_crl_through_a_ca_rotation(workdir: Path) -> None:
    """A certificate of the old CA revoked before a rotation stays listed in every phase; the CRL is signed by the CA
    that issues leaves in that phase (etcd matches serials alone, tests/etcd/test_revocation.py), and verify agrees."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    assert build(workdir)[0] == 0
    serial = _manifest(workdir)["revoked"][0]["serial"]
    _delete_as_told(workdir, "reader")
    pki = workdir / "out/demo/pki"
    for step, signer in (("begin", "ca.crt"), ("issue", "ca-next.crt"), ("finish", "ca.crt")):
        code, _, err = run("rotate-ca", step, "--force", "--spec", str(workdir / "cluster.yaml"),
                           "--out", str(workdir / "out"))
        assert code == 0, err
        assert [r["serial"] for r in _manifest(workdir)["revoked"]] == [serial], step
        issuer = x509.load_pem_x509_certificate((pki / signer).read_bytes())
        listed = x509.load_der_x509_crl((pki / "crl.der").read_bytes())
        assert listed.issuer == issuer.subject and [r.serial_number for r in listed] == [int(serial, 16)], step
        code, _, err = verify(workdir)
        assert code == 0, (step, err)


def _edit_manifest(workdir: Path, edit: Any) -> None:
    document = _manifest(workdir)
    edit(document)
    (workdir / "out/demo/manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _refused_unchanged(workdir: Path, starts: str) -> str:
    before = {p: p.read_bytes() for p in (workdir / "out/demo").rglob("*") if p.is_file()}
    code, _, err = build(workdir)
    assert code == 1 and err.startswith(starts), err
    assert {p: p.read_bytes() for p in (workdir / "out/demo").rglob("*") if p.is_file()} == before
    return err


def test_a_history_entry_that_names_a_certificate_in_use_otherwise_is_refused(workdir: Path) -> None:
    """A history entry carrying etcd01's serial under another name would put etcd01's certificate on the CRL, and
    one with the CA's serial the CA's; a revoked entry with a serial in use likewise: each is refused."""
    assert build(workdir)[0] == 0
    serial, ca = _serial(workdir, "etcd01"), _serial(workdir, "ca")
    original = _manifest(workdir)

    def rename(document: dict[str, Any]) -> None:
        for entry in document["issued"]:
            if entry["serial"] == serial:
                entry["name"] = "ghost"
    _edit_manifest(workdir, rename)
    err = _refused_unchanged(workdir, "error: manifest.json: issued.")
    assert f"serial {serial} is pki/etcd01.crt's, not ghost's" in err, err
    entry = {"serial": ca, "name": "etcd02", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}
    _edit_manifest(workdir, lambda d: d.update(issued=[*original["issued"], entry]))
    assert "is pki/ca.crt's" in _refused_unchanged(workdir, "error: manifest.json: issued.")
    _edit_manifest(workdir, lambda d: d.update(issued=original["issued"]))
    _edit_manifest(workdir, lambda d: d.__setitem__("revoked", [
        {"serial": serial, "name": "etcd01", "not_after": "2030-01-01T00:00:00Z",
         "revoked_at": "2026-01-01T00:00:00Z", "reason": "revoked in the spec"}]))
    assert "a certificate in use" in _refused_unchanged(workdir, "error: manifest.json: revoked.0: ")
    _edit_manifest(workdir, lambda d: d.pop("revoked"))
    assert build(workdir)[0] == 0


@pytest.mark.parametrize("crl", [b"garbage", "other key"])
def test_a_crl_not_signed_by_the_cluster_ca_is_refused(workdir: Path, tmp_path: Path, crl: object) -> None:
    """Garbage or another key's CRL in place of pki/crl.der hides what was revoked: the build stops instead of
    signing a new one from the manifest alone."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    assert build(workdir)[0] == 0
    if crl == "other key":
        other = tmp_path / "other.key"
        other.write_bytes(subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                                          "ec_paramgen_curve:P-256"], capture_output=True, check=True).stdout)
        _resign_crl(workdir, [], other)
    else:
        (workdir / "out/demo/pki/crl.der").write_bytes(b"garbage")
    _refused_unchanged(workdir, "error: pki/crl.der: not a CRL signed by this cluster's CA")


def test_backdating_a_revoked_certificate_before_its_revocation_is_refused(workdir: Path) -> None:
    """A revoked entry that expired before it was revoked is no record this tool wrote (a certificate is revoked
    only while valid): refused, not dropped from the CRL as expired."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    set_spec(workdir, "  - {name: reader}\n", "  - {name: reader, revoked: true}\n")
    assert build(workdir)[0] == 0

    def backdate(document: dict[str, Any]) -> None:
        document["revoked"][0]["not_after"] = "2020-01-01T00:00:00Z"
        for entry in document["issued"]:
            if entry["name"] == "reader":
                entry["not_after"] = "2020-01-01T00:00:00Z"
    _edit_manifest(workdir, backdate)
    assert "is not after its revoked_at" in _refused_unchanged(workdir, "error: manifest.json: revoked.0.not_after: ")


@pytest.mark.parametrize(("entry", "field"), [
    ("not a list", "issued"),
    ([{"serial": "1a", "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-02-30T00:00:00Z"}],
     "issued.0.not_after"),
    ([{"serial": "0", "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}],
     "issued.0.serial"),
    ([{"serial": "f" * 40, "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}],
     "issued.0.serial"),
    ([{"serial": "0abc", "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}],
     "issued.0.serial"),
    ([{"serial": "abc", "name": "ca", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}],
     "issued.0.name"),
    ([{"serial": "abc", "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}] * 2,
     "issued"),
    ([{"serial": "zz", "name": "reader", "public_key_sha256": "0" * 64, "not_after": "2030-01-01T00:00:00Z"}],
     "issued.0.serial"),
    ([{"serial": "1a", "name": "Reader\nerror: forged", "public_key_sha256": "0" * 64,
       "not_after": "2030-01-01T00:00:00Z"}], "issued.0.name"),
    ([{"serial": "1a", "name": "reader", "public_key_sha256": "0" * 64}], "issued.0"),
])
def test_a_malformed_history_is_an_error_naming_its_field(workdir: Path, entry: object, field: str) -> None:
    assert build(workdir)[0] == 0
    document = _manifest(workdir)
    document["issued"] = entry
    (workdir / "out/demo/manifest.json").write_text(json.dumps(document))
    code, _, err = build(workdir)
    assert code == 1 and err.startswith(f"error: manifest.json: {field}: "), err
    assert not any(line.startswith("error: forged") for line in err.splitlines()), err
    assert run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))[0] == 1
