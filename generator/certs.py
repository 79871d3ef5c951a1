"""Certs: x509 and key primitives (make, issue, load, check, fingerprint); no knowledge of a spec or a policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import keygen
from .errors import MaterialError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Certificates start an hour in the past so that a node whose clock runs a
# little behind at first boot (no NTP yet) still accepts its peers.
BACKDATE = dt.timedelta(hours=1)
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)
_CURVES = {"ecdsa-p256": ec.SECP256R1, "ecdsa-p384": ec.SECP384R1}


@dataclass(frozen=True)
class _Pem:
    """A certificate and its key, with both as PEM."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


@dataclass(frozen=True)
class CA(_Pem):
    """A CA certificate and the key that signs with it."""


@dataclass(frozen=True)
class Credential(_Pem):
    """A leaf certificate with its key; `chain_pem` is the leaf followed by the CA, as etcd.crt."""

    chain_pem: bytes


class LeafKind(StrEnum):
    """What a leaf certificate is for."""

    NODE = "node"  # peer and server: serverAuth + clientAuth, with the node's SANs
    CLIENT = "client"  # clientAuth only


@dataclass(frozen=True)
class Identity:
    """What a leaf certificate must say: its kind, CN, SANs and extended key usages."""

    kind: LeafKind
    common_name: str
    dns_names: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address, ...]
    usages: tuple[x509.ObjectIdentifier, ...]
    organization: str | None = None
    validity_days: int = 0  # the leaf table fills in pki.validity_days for a leaf that sets none

    @property
    def subject(self) -> x509.Name:
        """CN, and O when given (Kubernetes reads O as the client's group)."""
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)]
        if self.organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization))
        return x509.Name(attributes)


def generate_key(key_type: str) -> PrivateKey:
    """Make a new private key of a key type (rsa2048 … ecdsa-p384), or take one made ahead."""
    pem = keygen.take(key_type)
    if pem is not None:
        return load_key(pem)
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    return ec.generate_private_key(_CURVES[key_type]())


def key_type_of(key: PrivateKey | x509.Certificate) -> str:
    """The spec key type of a key or a certificate's key, e.g. 'rsa2048'."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa{public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(public.curve.name, public.curve.name)
    return type(public).__name__


def public_key_sha256(holder: PrivateKey | x509.Certificate) -> str:
    """The sha256 of a key's DER SubjectPublicKeyInfo, as manifest.json records it."""
    return hashlib.sha256(public_der(holder)).hexdigest()


def public_der(holder: PrivateKey | x509.Certificate) -> bytes:
    """The DER public key of a private key or a certificate, to tell whether the two belong together."""
    return holder.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_fingerprint(cert: x509.Certificate) -> str:
    """The sha256 of a certificate's DER, as the manifest and the rotation state record it."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def create_ca(common_name: str, organization: str | None, unit: str | None, days: int, key: PrivateKey,
              now: dt.datetime) -> CA:
    """Issue a self-signed CA, valid for `days`; `unit` (an OU) tells one CA from another by name."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    name = x509.Name(attributes)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, key=key), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert=cert, key=key)


def load_ca(cert_pem: bytes, key_pem: bytes, now: dt.datetime, source: str, own: bool = False) -> CA:
    """Load an existing CA and check that it can sign: a CA, its key, not expired.

    `own` marks a CA this tool wrote itself: its RSA key's slow consistency check is skipped.

    Raises:
        MaterialError: naming `source` (a spec path or file) and every problem found.
    """
    problems: list[str] = []
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise MaterialError(f"{source}: the CA certificate is not a PEM certificate") from None
    try:
        key = load_key(key_pem, check=not own)
    except ValueError as exc:
        raise MaterialError(f"{source}: the CA key {exc}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(f"{source}: the certificate is not a CA (basicConstraints CA:TRUE missing)")
    try:
        may_sign = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        may_sign = False
    if is_ca and not may_sign:
        problems.append(f"{source}: the CA may not sign certificates (keyUsage keyCertSign missing)")
    if public_der(key) != public_der(cert):
        problems.append(f"{source}: the CA certificate and key do not match")
    if cert.not_valid_after_utc <= now:
        problems.append(f"{source}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if problems:
        raise MaterialError(problems)
    return CA(cert=cert, key=key)


def issue_leaf(ca: CA, identity: Identity, key: PrivateKey, now: dt.datetime,
               days: int) -> Credential:
    """Sign a leaf certificate for an identity; its life ends no later than the CA's."""
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in identity.dns_names]
    sans += [x509.IPAddress(ip) for ip in identity.ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(identity.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, key=key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(identity.usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return credential(cert, key, ca)


def leaf_problems(cert: x509.Certificate, ca_cert: x509.Certificate, identity: Identity, key_type: str,
                  now: dt.datetime) -> list[str]:
    """Every way a leaf certificate differs from what issue_leaf would sign today; empty when none.

    Checks the signature, issuer, subject, key type, lifetime, and the exact set of
    extensions with their values and criticality, so that a certificate the CA signed
    with anything extra (an IPv6 or URI SAN, a critical extension) is not taken as ours.
    """
    problems = []
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        problems.append("is not signed by the CA")
    if cert.version is not x509.Version.v3 or not isinstance(cert.signature_hash_algorithm, hashes.SHA256):
        problems.append("is not an X.509 v3 certificate signed with SHA-256")
    expected_subject = identity.subject
    if cert.subject != expected_subject:
        problems.append(f"subject is {cert.subject.rfc4514_string()!r}, expected "
                        f"{expected_subject.rfc4514_string()!r}")
    if key_type_of(cert) != key_type:
        problems.append(f"key is {key_type_of(cert)}, the spec asks for {key_type}")
    sans = _general_names(cert)
    want_sans = sorted([f"DNS:{n}" for n in identity.dns_names] + [f"IP:{ip}" for ip in identity.ips])
    if sans != want_sans:
        problems.append(f"SANs are {sans}, expected {want_sans}")
    problems += _extension_problems(cert, ca_cert, identity)
    if cert.not_valid_before_utc > now:
        problems.append(f"is not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}, in the future")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc - BACKDATE
    clamped = cert.not_valid_after_utc == ca_cert.not_valid_after_utc
    if cert.not_valid_after_utc > ca_cert.not_valid_after_utc:
        problems.append("outlives the CA")
    elif lifetime != dt.timedelta(days=identity.validity_days) and not clamped:
        problems.append(f"validity is {lifetime.days} days, the spec asks for {identity.validity_days}")
    return problems


def _extension_problems(cert: x509.Certificate, ca_cert: x509.Certificate, identity: Identity) -> list[str]:
    # A value of None: present with that criticality, its value compared elsewhere.
    want: dict[x509.ObjectIdentifier, tuple[bool, x509.ExtensionType | None]] = {
        x509.BasicConstraints.oid: (True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.KeyUsage.oid: (True, _key_usage(ca=False, key=cert.public_key())),
        x509.ExtendedKeyUsage.oid: (False, x509.ExtendedKeyUsage(list(identity.usages))),
        x509.SubjectKeyIdentifier.oid: (False, x509.SubjectKeyIdentifier.from_public_key(
            cert.public_key())),
    }
    if identity.dns_names or identity.ips:
        want[x509.SubjectAlternativeName.oid] = (False, None)  # compared by _general_names
    problems = []
    have = {e.oid: e for e in cert.extensions}
    for oid in sorted(set(have) - set(want) - {x509.AuthorityKeyIdentifier.oid}, key=lambda o: o.dotted_string):
        problems.append(f"has an unexpected {'critical ' if have[oid].critical else ''}extension "
                        f"{getattr(oid, '_name', oid.dotted_string)}")
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key()).digest
    aki = have.get(x509.AuthorityKeyIdentifier.oid)
    if aki is None or aki.critical or not isinstance(aki.value, x509.AuthorityKeyIdentifier) \
            or aki.value.key_identifier != ca_ski:
        problems.append("authorityKeyIdentifier does not name the CA's key")
    for oid, (critical, value) in want.items():
        ext = have.get(oid)
        name = getattr(oid, "_name", oid.dotted_string)
        if ext is None:
            problems.append(f"lacks {name}")
        elif ext.critical != critical:
            problems.append(f"{name} must {'' if critical else 'not '}be critical")
        elif oid == x509.ExtendedKeyUsage.oid:
            usages = set(ext.value)
            if usages != set(identity.usages) or len(list(ext.value)) != len(usages):
                problems.append(f"extended key usages are {_usage_names(usages)}, expected "
                                f"{_usage_names(identity.usages)}")
        elif value is not None and ext.value != value:
            problems.append(f"{name} is {ext.value}, expected {value}")
    return problems


def check_leaf(cert: x509.Certificate, key: PrivateKey | None, ca_cert: x509.Certificate, identity: Identity,
               key_type: str, now: dt.datetime) -> list[str]:
    """leaf_problems, and whether the certificate matches its key (when the key is at hand)."""
    problems = leaf_problems(cert, ca_cert, identity, key_type, now)
    if key is not None and public_der(key) != public_der(cert):
        problems.insert(0, "does not match its key")
    return problems


def _general_names(cert: x509.Certificate) -> list[str]:
    """Every subjectAltName entry, of any type, as TYPE:value, sorted."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = []
    for name in san:
        if isinstance(name, x509.DNSName):
            out.append(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.append(f"IP:{name.value}")
        else:
            out.append(f"{type(name).__name__}:{getattr(name, 'value', name)}")
    return sorted(out)


def _usage_names(usages: Iterable[x509.ObjectIdentifier]) -> list[str]:
    names = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
    return sorted(names.get(u, u.dotted_string) for u in usages)


def sans_of(cert: x509.Certificate) -> tuple[list[str], list[ipaddress.IPv4Address]]:
    """The DNS names and IPv4 addresses in a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress)
           if isinstance(ip, ipaddress.IPv4Address)]
    return san.get_values_for_type(x509.DNSName), ips


def credential(cert: x509.Certificate, key: PrivateKey, ca: CA) -> Credential:
    return Credential(cert=cert, key=key,
                      chain_pem=cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)


def load_key(pem: bytes, check: bool = False) -> PrivateKey:
    """An unencrypted PEM RSA or ECDSA private key.

    RSA's consistency check (tens of ms a key, it tests primality) runs only when `check` asks for
    it (a key from outside the tool): a key that does not fit its certificate is caught by comparing
    public keys, and `signs` proves in about 1 ms that a key works.

    Raises:
        ValueError: not an unencrypted PEM key, or neither RSA nor ECDSA (the message says which).
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=not check)
    except (ValueError, TypeError):
        raise ValueError("cannot be read as an unencrypted PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("must be an RSA or ECDSA key")
    return key


def signs(key: PrivateKey) -> bool:
    """Whether the key's signature verifies under its own public key."""
    message = b"etcd-seed verify"
    try:
        if isinstance(key, rsa.RSAPrivateKey):
            key.public_key().verify(key.sign(message, padding.PKCS1v15(), hashes.SHA256()), message,
                                    padding.PKCS1v15(), hashes.SHA256())
        else:
            key.public_key().verify(key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def first_cert(pem: bytes | None) -> x509.Certificate | None:
    if pem is None:
        return None
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        return None  # an unreadable certificate is public and simply issued again


def _key_usage(ca: bool, key: PrivateKey | object) -> x509.KeyUsage:
    # keyEncipherment only means something for RSA key transport (RFC 5480 s.3 for ECDSA).
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Crl:
    """A certificate revocation list as read back: what it lists, until when, and its number."""

    serials: frozenset[int]
    next_update: dt.datetime | None
    number: int


def issue_crl(ca: CA, revoked: Iterable[tuple[int, dt.datetime]], number: int, now: dt.datetime,
              days: int) -> bytes:
    """A CRL signed by `ca`, listing each (serial, revocation date), as DER: etcd 3.6 reads DER only
    (Go's x509.ParseRevocationList), 3.4 and 3.5 read DER or PEM."""
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - BACKDATE)
               .next_update(now + dt.timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                              critical=False))
    for serial, when in sorted(revoked):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def read_crl(der: bytes, issuer: x509.Certificate) -> Crl | None:
    """A DER CRL that `issuer` signed, or None when it is not one (not DER, another issuer, a bad signature)."""
    try:
        crl = x509.load_der_x509_crl(der)
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return None
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, TypeError, x509.ExtensionNotFound):
        return None
    return Crl(serials=frozenset(r.serial_number for r in crl),
               next_update=crl.next_update_utc, number=number)
