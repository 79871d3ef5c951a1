"""PKI: what each certificate says, that it chains to the CA, and when it is reused or issued again."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from generator.certs import key_type_of, leaf_problems, load_ca, public_key_sha256
from generator.errors import MaterialError
from generator.pki import KeyRecords, PkiState, build_pki, create_ca
from generator.spec import Spec
from tests.helpers.specs import NO_RECORDS, NOW, parse, records, spec_yaml

E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def assert_is_ca(cert: x509.Certificate) -> None:
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert cert.issuer == cert.subject


def assert_is_leaf(cert: x509.Certificate, ca: x509.Certificate, usages: set[x509.ObjectIdentifier]) -> None:
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = ext(cert, x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == usages
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    ski = ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    cert.verify_directly_issued_by(ca)


def test_every_leaf_passes_the_check_that_reuses_it(pki3: PkiState) -> None:
    """The reuse check accepts what the build signs, with SANs (nodes) and without (clients): cryptography 51
    refuses the empty SAN list the check once built as a placeholder, and every re-run failed on it."""
    assert {bool(i.dns_names or i.ips) for i in pki3.identities.values()} == {True, False}
    for name, leaf in pki3.leaves.items():
        assert leaf_problems(leaf.cert, pki3.ca.cert, pki3.identities[name], key_type_of(leaf.cert), NOW) == [], name


def test_ca_is_a_ca(pki3: PkiState) -> None:
    """The generated CA is self-signed, critical CA:TRUE, and may sign certificates."""
    assert_is_ca(pki3.ca.cert)
    assert pki3.ca.cert.not_valid_after_utc - NOW == dt.timedelta(days=3650)


def test_node_certificates(spec3: Spec, pki3: PkiState) -> None:
    """Each node: CN its short name, SANs exactly its name, FQDN and IP, server+client auth."""
    for node in spec3.nodes:
        cert = pki3.nodes[node.name].cert
        assert_is_leaf(cert, pki3.ca.cert, {EKU.SERVER_AUTH, EKU.CLIENT_AUTH})
        assert ext(cert, x509.KeyUsage).value.key_encipherment
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node.name
        san = ext(cert, x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([node.name, node.fqdn])
        assert san.get_values_for_type(x509.IPAddress) == [node.ip]
        assert cert.not_valid_after_utc - NOW == dt.timedelta(days=365)


def test_node_chain_is_leaf_then_ca(pki3: PkiState) -> None:
    """etcd.crt holds the leaf followed by the CA, as in the manual guide."""
    for credential in pki3.nodes.values():
        chain = x509.load_pem_x509_certificates(credential.chain_pem)
        assert chain == [credential.cert, pki3.ca.cert]


def test_admin_certificate_is_client_only(pki3: PkiState) -> None:
    """The admin certificate can authenticate a client and nothing else."""
    cert = pki3.admin.cert
    assert_is_leaf(cert, pki3.ca.cert, {EKU.CLIENT_AUTH})
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)


def test_ecdsa_keys(tmp_path: Path) -> None:
    """ecdsa-p256 gives P-256 keys, and no keyEncipherment, which means nothing for ECDSA."""
    spec = parse(spec_yaml(key_type="ecdsa-p256"))
    state = build_pki(spec, {}, None, NOW, NO_RECORDS)
    for credential in [*state.nodes.values(), state.admin]:
        assert isinstance(credential.key, ec.EllipticCurvePrivateKey)
        assert credential.key.curve.name == "secp256r1"
        assert not ext(credential.cert, x509.KeyUsage).value.key_encipherment
        credential.cert.verify_directly_issued_by(state.ca.cert)


def _files(state: PkiState) -> dict[str, bytes]:
    files = {"ca.crt": state.ca.cert_pem, "ca.key": state.ca.key_pem,
             "admin.crt": state.admin.chain_pem, "admin.key": state.admin.key_pem}
    for name, credential in state.nodes.items():
        files[f"{name}.crt"], files[f"{name}.key"] = credential.chain_pem, credential.key_pem
    return files


@pytest.mark.parametrize("name", ["etcd01", "etcd02", "etcd03", "admin"])
def test_openssl_verifies_every_leaf(pki3: PkiState, tmp_path: Path, name: str) -> None:
    """A real `openssl verify` accepts each leaf against the CA, with its purpose."""
    files = _files(pki3)
    (tmp_path / "ca.crt").write_bytes(files["ca.crt"])
    (tmp_path / "leaf.crt").write_bytes(files[f"{name}.crt"].split(b"-----END CERTIFICATE-----")[0]
                                        + b"-----END CERTIFICATE-----\n")
    purposes = ["sslclient"] + ([] if name == "admin" else ["sslserver"])
    for purpose in purposes:
        result = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile",
                                 str(tmp_path / "ca.crt"), str(tmp_path / "leaf.crt")],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr
    if name == "admin":
        result = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile",
                                 str(tmp_path / "ca.crt"), str(tmp_path / "leaf.crt")],
                                capture_output=True, text=True, check=False)
        assert result.returncode != 0, "the admin certificate must not serve TLS"


def test_openssl_rejects_a_leaf_from_another_ca(pki3: PkiState, spec3: Spec, tmp_path: Path) -> None:
    """The same check fails against a different CA, so the verification above means something."""
    (tmp_path / "other.crt").write_bytes(create_ca(spec3, NOW).cert_pem)
    (tmp_path / "leaf.crt").write_bytes(pki3.nodes["etcd01"].cert_pem)
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "other.crt"),
                             str(tmp_path / "leaf.crt")], capture_output=True, text=True, check=False)
    assert result.returncode != 0


def test_rerun_reuses_everything(spec3: Spec, pki3: PkiState) -> None:
    """A second run over the first run's files issues nothing and keeps every byte."""
    again = build_pki(spec3, _files(pki3), None, NOW + dt.timedelta(days=1), records(pki3))
    assert _files(again) == _files(pki3)
    assert [str(e) for e in again.events] == ["ca: reused"] + [f"{n}: reused" for n in ("etcd01", "etcd02", "etcd03",
                                                                                         "admin")]


def test_changed_ip_reissues_only_that_node_and_keeps_its_key(spec3: Spec, pki3: PkiState) -> None:
    """When a node's IP changes its certificate is issued again with the same key; others stay."""
    moved = parse(spec_yaml().replace("ip: 192.168.0.2", "ip: 192.168.0.22"))
    again = build_pki(moved, _files(pki3), None, NOW, records(pki3))
    assert again.nodes["etcd02"].cert != pki3.nodes["etcd02"].cert
    assert again.nodes["etcd02"].key_pem == pki3.nodes["etcd02"].key_pem
    assert ipaddress.IPv4Address("192.168.0.22") in again.nodes["etcd02"].cert.extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    for name in ("etcd01", "etcd03"):
        assert again.nodes[name].cert == pki3.nodes[name].cert
    assert "etcd02: reissued (SANs are" in " ".join(map(str, again.events))


def test_certificate_near_expiry_is_renewed(spec3: Spec, pki3: PkiState) -> None:
    """Within renew_before_days of notAfter, a run renews every leaf, keeping keys and the CA."""
    later = NOW + dt.timedelta(days=365 - 10)
    again = build_pki(spec3, _files(pki3), None, later, records(pki3))
    assert again.ca.cert == pki3.ca.cert
    for name, credential in again.nodes.items():
        assert credential.cert.not_valid_after_utc == later + dt.timedelta(days=365)
        assert credential.key_pem == pki3.nodes[name].key_pem
    assert "etcd01: reissued (expires in 10 days)" in map(str, again.events)


def test_changed_key_type_makes_new_keys(spec3: Spec, pki3: PkiState) -> None:
    """Asking for ECDSA replaces the RSA leaf keys, and says so."""
    again = build_pki(parse(spec_yaml(key_type="ecdsa-p256")), _files(pki3), None, NOW, records(pki3))
    assert isinstance(again.nodes["etcd01"].key, ec.EllipticCurvePrivateKey)
    assert "etcd01: new key (rsa2048 -> ecdsa-p256)" in map(str, again.events)


def test_ca_without_its_key_is_never_replaced(spec3: Spec, pki3: PkiState) -> None:
    """ca.crt without ca.key is an error, not a reason to make a new CA."""
    files = _files(pki3)
    del files["ca.key"]
    with pytest.raises(MaterialError, match=re.escape("pki/ca.key: missing while its pair exists")):
        build_pki(spec3, files, None, NOW, records(pki3))


def test_unreadable_key_is_never_replaced(spec3: Spec, pki3: PkiState) -> None:
    """A node key that cannot be read is reported, not overwritten."""
    files = _files(pki3)
    files["etcd02.key"] = b"garbage"
    with pytest.raises(MaterialError, match=re.escape("pki/etcd02.key: cannot be read")):
        build_pki(spec3, files, None, NOW, records(pki3))


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_imported_ca_signs_the_leaves(spec3: Spec) -> None:
    """An imported CA is used as it is: the leaves chain to it and no CA key is kept."""
    imported = create_ca(spec3, NOW)
    state = build_pki(spec3, {}, (imported.cert_pem, imported.key_pem), NOW, NO_RECORDS)
    assert state.ca_imported and state.ca.cert == imported.cert
    state.nodes["etcd01"].cert.verify_directly_issued_by(imported.cert)


def test_imported_ca_problems(spec3: Spec) -> None:
    """A CA whose key does not match, that has expired, or that is no CA is refused, all at once."""
    old = create_ca(spec3, NOW - dt.timedelta(days=4000))
    with pytest.raises(MaterialError) as info:
        load_ca(old.cert_pem, _rsa_pem(), NOW, "pki.ca")
    assert info.value.messages == [
        "pki.ca: the CA certificate and key do not match",
        f"pki.ca: the CA expired on {old.cert.not_valid_after_utc:%Y-%m-%d}",
    ]
    leaf_state = build_pki(spec3, {}, None, NOW, NO_RECORDS)
    with pytest.raises(MaterialError, match="the certificate is not a CA"):
        load_ca(leaf_state.admin.cert_pem, leaf_state.admin.key_pem, NOW, "pki.ca")


def test_imported_ca_never_replaces_another(spec3: Spec, pki3: PkiState) -> None:
    """Importing a different CA over an existing pki/ca.crt is refused."""
    other = create_ca(spec3, NOW)
    with pytest.raises(MaterialError, match=re.escape("differs from the CA already in pki/ca.crt")):
        build_pki(spec3, _files(pki3), (other.cert_pem, other.key_pem), NOW, records(pki3))


def test_leaf_never_outlives_the_ca(spec3: Spec) -> None:
    """A leaf issued late in the CA's life ends when the CA ends."""
    ca = create_ca(spec3, NOW - dt.timedelta(days=3650 - 100))
    ca_only = KeyRecords(pending={"ca": public_key_sha256(ca.key)})
    state = build_pki(spec3, {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}, None, NOW, ca_only)
    assert state.nodes["etcd01"].cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    again = build_pki(spec3, _files(state), None, NOW + dt.timedelta(days=1), records(state))
    assert [str(e) for e in again.events].count("etcd01: reused") == 1


def test_keys_made_ahead_are_distinct_and_leave_no_process() -> None:
    """Keys made in child processes are whole RSA keys, each different, also past the ones made ahead;
    no child is left once the block ends."""
    from generator import keygen
    from generator.certs import generate_key

    with keygen.keys_made_ahead("rsa2048", 3):
        keys = [generate_key("rsa2048") for _ in range(4)]  # the fourth is made here
        assert keygen.take("rsa2048") is None
    assert all(isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048 for k in keys)
    numbers = {k.private_numbers().public_numbers.n for k in keys}  # type: ignore[union-attr]
    assert len(numbers) == 4
    for key in keys:  # each one signs what its public half verifies
        assert isinstance(key, rsa.RSAPrivateKey)
        key.public_key().verify(key.sign(b"x", padding.PKCS1v15(), hashes.SHA256()), b"x", padding.PKCS1v15(),
                                hashes.SHA256())
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
