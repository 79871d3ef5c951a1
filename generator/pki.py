"""PKI: Spec + existing material -> CA, node and admin certificates as PEM bytes."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import MaterialError
from .spec import Node, Spec

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Certificates start an hour in the past so that a node whose clock runs a
# little behind at first boot (no NTP yet) still accepts its peers.
BACKDATE = dt.timedelta(hours=1)
ADMIN_CN = "root"  # etcd maps a client cert's CN to a user; "root" is its superuser once auth is on
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
CLIENT_ONLY = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True)
class CA:
    """A CA certificate and the key that signs with it."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class Credential:
    """A leaf certificate with its key; `chain_pem` is the leaf followed by the CA, as etcd.crt."""

    cert: x509.Certificate
    key: PrivateKey
    chain_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)


@dataclass(frozen=True)
class Identity:
    """What a leaf certificate must say: its CN, SANs and extended key usages."""

    common_name: str
    dns_names: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address, ...]
    usages: tuple[x509.ObjectIdentifier, ...]


@dataclass
class PkiState:
    """Everything issued or reused in one run, plus what happened to each item."""

    ca: CA
    ca_imported: bool
    nodes: dict[str, Credential]
    admin: Credential
    events: list[str] = field(default_factory=list)


def node_identity(spec: Spec, node: Node) -> Identity:
    """The identity of a node's peer/server certificate: its short name, FQDN and IP."""
    return Identity(common_name=node.name, dns_names=(node.name, node.fqdn), ips=(node.ip,),
                    usages=SERVER_AND_CLIENT)


ADMIN_IDENTITY = Identity(common_name=ADMIN_CN, dns_names=(), ips=(), usages=CLIENT_ONLY)


def generate_key(key_type: str) -> PrivateKey:
    """Make a new private key of a spec key type (rsa2048 … ecdsa-p384)."""
    if key_type.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    curve = {"ecdsa-p256": ec.SECP256R1(), "ecdsa-p384": ec.SECP384R1()}[key_type]
    return ec.generate_private_key(curve)


def key_type_of(key: PrivateKey) -> str:
    """The spec key type that a key is, e.g. 'rsa2048'."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"rsa{key.key_size}"
    return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(key.curve.name, key.curve.name)


def create_ca(spec: Spec, now: dt.datetime, key: PrivateKey | None = None) -> CA:
    """Issue a self-signed CA for the cluster, valid for pki.ca_validity_days."""
    key = key or generate_key(spec.pki.key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{spec.name} etcd CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.domain)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=spec.pki.ca_validity_days))
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
        key = serialization.load_pem_private_key(key_pem, password=None, unsafe_skip_rsa_key_validation=own)
    except (ValueError, TypeError) as exc:
        raise MaterialError(f"{source}: the CA key cannot be read ({exc}); "
                            "it must be an unencrypted PEM key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MaterialError(f"{source}: the CA key must be RSA or ECDSA")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(f"{source}: the certificate is not a CA (basicConstraints CA:TRUE missing)")
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
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.common_name)]))
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
    return _credential(cert, key, ca)


def build_pki(spec: Spec, existing: dict[str, bytes], imported: tuple[bytes, bytes] | None,
              now: dt.datetime) -> PkiState:
    """Reuse what is still right, issue what is missing or out of date.

    Args:
        spec: the validated cluster definition.
        existing: files already in output/<cluster>/pki, by name (ca.crt, etcd01.key, ...).
        imported: the (cert, key) PEMs named by pki.ca, when the CA is imported.
        now: the current time; the core never reads the clock.

    Returns:
        The CA and every credential, with a list of events (issued, renewed, reused).

    Raises:
        MaterialError: the CA is unusable, or would be replaced.
    """
    events: list[str] = []
    ca = _resolve_ca(spec, existing, imported, now, events)
    nodes = {node.name: _leaf(spec, ca, node.name, node_identity(spec, node), existing, now, events)
             for node in spec.nodes}
    admin = _leaf(spec, ca, "admin", ADMIN_IDENTITY, existing, now, events)
    return PkiState(ca=ca, ca_imported=imported is not None, nodes=nodes, admin=admin,
                    events=events)


def check_leaf(cert: x509.Certificate, key: PrivateKey | None, ca_cert: x509.Certificate,
               identity: Identity) -> list[str]:
    """Say what is wrong with a leaf certificate for an identity; an empty list means nothing."""
    problems = []
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        problems.append("is not signed by the CA")
    if key is not None and public_der(key) != public_der(cert):
        problems.append("does not match its key")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [identity.common_name]:
        problems.append(f"CN is {cns}, expected {identity.common_name!r}")
    dns, ips = sans_of(cert)
    if sorted(dns) != sorted(identity.dns_names) or sorted(ips) != sorted(identity.ips):
        problems.append(f"SANs are {sorted(dns) + [str(i) for i in sorted(ips)]}, expected "
                        f"{sorted(identity.dns_names) + [str(i) for i in sorted(identity.ips)]}")
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    if usages != set(identity.usages):
        problems.append(f"extended key usages are {_usage_names(usages)}, expected "
                        f"{_usage_names(identity.usages)}")
    return problems


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


def _resolve_ca(spec: Spec, existing: dict[str, bytes], imported: tuple[bytes, bytes] | None,
                now: dt.datetime, events: list[str]) -> CA:
    have_cert, have_key = "ca.crt" in existing, "ca.key" in existing
    if imported is not None:
        ca = load_ca(imported[0], imported[1], now, "pki.ca")
        if have_cert and existing["ca.crt"] != ca.cert_pem and _same_ca(existing["ca.crt"], ca):
            return ca  # same certificate, different PEM layout: nothing to replace
        if have_cert and existing["ca.crt"] != ca.cert_pem:
            raise MaterialError(
                "pki.ca.cert: differs from the CA already in pki/ca.crt; refusing to replace it",
                hint="every node certificate would change; move the old pki/ directory away first")
        events.append("ca: imported" if not have_cert else "ca: imported (unchanged)")
        return ca
    if have_cert != have_key:
        missing = "ca.key" if have_cert else "ca.crt"
        raise MaterialError(f"pki/{missing}: missing while its pair exists; refusing to create a "
                            "new CA over the old one",
                            hint="restore the file, or move pki/ away to start a new CA")
    if have_cert:
        ca = load_ca(existing["ca.crt"], existing["ca.key"], now, "pki/ca.crt", own=True)
        events.append("ca: reused")
        return ca
    events.append("ca: created")
    return create_ca(spec, now)


def _same_ca(cert_pem: bytes, ca: CA) -> bool:
    try:
        return x509.load_pem_x509_certificate(cert_pem) == ca.cert
    except ValueError:
        return False


def _leaf(spec: Spec, ca: CA, name: str, identity: Identity, existing: dict[str, bytes],
          now: dt.datetime, events: list[str]) -> Credential:
    key = _load_key(existing.get(f"{name}.key"), f"pki/{name}.key")
    if key is not None and key_type_of(key) != spec.pki.key_type:
        events.append(f"{name}: new key ({key_type_of(key)} -> {spec.pki.key_type})")
        key = None
    cert = _load_cert(existing.get(f"{name}.crt"))
    if key is not None and cert is not None:
        reason = _reissue_reason(spec, ca, cert, key, identity, now)
        if reason is None:
            events.append(f"{name}: reused")
            return _credential(cert, key, ca)
        events.append(f"{name}: reissued ({reason})")
    elif cert is not None:
        events.append(f"{name}: reissued (no key)")
    else:
        events.append(f"{name}: issued")
    return issue_leaf(ca, identity, key or generate_key(spec.pki.key_type), now,
                      spec.pki.validity_days)


def _reissue_reason(spec: Spec, ca: CA, cert: x509.Certificate, key: PrivateKey,
                    identity: Identity, now: dt.datetime) -> str | None:
    problems = check_leaf(cert, key, ca.cert, identity)
    if problems:
        return problems[0]
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(days=spec.pki.renew_before_days):
        return f"expires in {max(left.days, 0)} days"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc - BACKDATE
    clamped = cert.not_valid_after_utc == ca.cert.not_valid_after_utc
    if lifetime != dt.timedelta(days=spec.pki.validity_days) and not clamped:
        return f"validity is {lifetime.days} days, the spec asks for {spec.pki.validity_days}"
    return None


def _credential(cert: x509.Certificate, key: PrivateKey, ca: CA) -> Credential:
    return Credential(cert=cert, key=key,
                      chain_pem=cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)


def _load_key(pem: bytes | None, source: str) -> PrivateKey | None:
    if pem is None:
        return None
    try:
        # Skipping RSA's consistency check (tens of ms a key) keeps a no-op re-run fast; a key
        # that does not fit its certificate is still caught by comparing public keys.
        key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        raise MaterialError(f"{source}: cannot be read as an unencrypted PEM key; "
                            "refusing to replace it", hint="move the file away to issue a new key"
                            ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MaterialError(f"{source}: must be an RSA or ECDSA key")
    return key


def _load_cert(pem: bytes | None) -> x509.Certificate | None:
    if pem is None:
        return None
    try:
        return x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        return None  # an unreadable certificate is public and simply issued again


def _key_usage(ca: bool, key: PrivateKey) -> x509.KeyUsage:
    # keyEncipherment only means something for RSA key transport (RFC 5480 s.3 for ECDSA).
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_der(holder: PrivateKey | x509.Certificate) -> bytes:
    """The DER public key of a private key or a certificate, to tell whether the two belong together."""
    return holder.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
