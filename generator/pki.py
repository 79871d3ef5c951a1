"""PKI: Spec + existing material -> CA, node and admin certificates as PEM bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import keygen
from .errors import MaterialError
from .rotation import NEXT, Phase, Rotation
from .spec import ROOT_USER, KeyType, Node, Pki, Spec

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Certificates start an hour in the past so that a node whose clock runs a
# little behind at first boot (no NTP yet) still accepts its peers.
BACKDATE = dt.timedelta(hours=1)
ADMIN_CN = ROOT_USER  # etcd maps a client cert's CN to a user
ADMIN = "admin"  # the admin client's name: pki/admin.crt, pki/admin.key (spec.RESERVED_NAMES holds it)
CA_NAME = "ca"  # pki/ca.crt, pki/ca.key: written only when the CA is created
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
    validity_days: int | None = None  # None: pki.validity_days

    @property
    def subject(self) -> x509.Name:
        """CN, and O when given (Kubernetes reads O as the client's group)."""
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)]
        if self.organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization))
        return x509.Name(attributes)

    def days(self, pki: Pki) -> int:
        return self.validity_days or pki.validity_days


class Change(StrEnum):
    """What a run did to one credential."""

    CREATED = "created"
    IMPORTED = "imported"
    REUSED = "reused"
    ISSUED = "issued"
    REISSUED = "reissued"
    NEW_KEY = "new key"
    ROTATED = "replaced by the new CA"


@dataclass(frozen=True)
class PkiEvent:
    """One line of what happened: `etcd02: reissued (SANs are ...)`."""

    name: str
    change: Change
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.change}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class KeyRecords:
    """The public keys (sha256 of the DER SubjectPublicKeyInfo) that earlier runs recorded, by leaf name.

    `recorded` comes from manifest.json; `pending` from the journal that a run writes
    just before it puts new keys in place, so that a run killed half-way can be
    continued. `legacy` marks a manifest from before keys were recorded: a key is then
    trusted when its file's sha256 is the one that manifest lists.
    """

    recorded: Mapping[str, str] = field(default_factory=dict)
    pending: Mapping[str, str] = field(default_factory=dict)
    legacy_file_sha256: Mapping[str, str] = field(default_factory=dict)
    legacy: bool = False
    ca_recorded: bool = False  # the manifest lists a CA certificate


@dataclass
class PkiState:
    """Everything issued or reused in one run, plus what happened to each item.

    `ca` is pki/ca.crt; during phases 1 and 2 of a CA rotation `next_ca` is pki/ca-next.crt, trusted
    beside it, and from phase 2 on it signs the leaves.
    """

    ca: CA
    ca_imported: bool
    leaves: dict[str, Credential]
    identities: dict[str, Identity]
    events: list[PkiEvent] = field(default_factory=list)
    next_ca: CA | None = None
    next_imported: bool = False
    phase: Phase = Phase.NONE

    @property
    def signer(self) -> CA:
        """The CA that issues leaves now."""
        return self.next_ca if self.next_ca is not None and self.phase is Phase.ISSUE else self.ca

    @property
    def trusted(self) -> list[CA]:
        """The CAs every node and client trusts now: the old one first."""
        return [self.ca] + ([self.next_ca] if self.next_ca is not None else [])

    @property
    def trust_pem(self) -> bytes:
        return b"".join(ca.cert_pem for ca in self.trusted)

    @property
    def nodes(self) -> dict[str, Credential]:
        return {name: c for name, c in self.leaves.items() if self.identities[name].kind is LeafKind.NODE}

    @property
    def admin(self) -> Credential:
        return self.leaves[ADMIN]

    def public_keys(self) -> dict[str, str]:
        """sha256 of every key's public half, by name ("ca" too unless imported)."""
        keys = {name: public_key_sha256(c.key) for name, c in self.leaves.items()}
        if not self.ca_imported:
            keys[CA_NAME] = public_key_sha256(self.ca.key)
        if self.next_ca is not None and not self.next_imported:
            keys[NEXT] = public_key_sha256(self.next_ca.key)
        return keys


def node_identity(spec: Spec, node: Node) -> Identity:
    """The identity of a node's peer/server certificate: its short name, FQDN and IP."""
    return Identity(kind=LeafKind.NODE, common_name=node.name, dns_names=(node.name, node.fqdn),
                    ips=(node.ip,), usages=SERVER_AND_CLIENT)


ADMIN_IDENTITY = Identity(kind=LeafKind.CLIENT, common_name=ADMIN_CN, dns_names=(), ips=(), usages=CLIENT_ONLY)


def leaf_table(spec: Spec) -> dict[str, Identity]:
    """Every leaf certificate the build issues, by name: each node, then the admin client.

    The PKI, the output files, the manifest and verify all iterate this table. The
    spec refuses node names in RESERVED_NAMES, so no two rows can share a name.
    """
    table = {node.name: node_identity(spec, node) for node in spec.nodes}
    assert ADMIN not in table and CA_NAME not in table  # noqa: S101 - spec.RESERVED_NAMES
    table[ADMIN] = ADMIN_IDENTITY
    for client in spec.clients:  # the spec refuses a client name that is taken
        table[client.name] = Identity(kind=LeafKind.CLIENT, common_name=client.cn, dns_names=(), ips=(),
                                      usages=CLIENT_ONLY, organization=client.o, validity_days=client.validity_days)
    return table


def generate_key(key_type: KeyType) -> PrivateKey:
    """Make a new private key of a spec key type (rsa2048 … ecdsa-p384), or take one made ahead."""
    pem = keygen.take(key_type.value)
    if pem is not None:
        key = serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
        assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)  # noqa: S101 - we made it
        return key
    if key_type.value.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type.value[3:]))
    curve = {KeyType.ECDSA_P256: ec.SECP256R1(), KeyType.ECDSA_P384: ec.SECP384R1()}[key_type]
    return ec.generate_private_key(curve)


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


def create_ca(spec: Spec, now: dt.datetime, key: PrivateKey | None = None, unit: str | None = None) -> CA:
    """Issue a self-signed CA for the cluster, valid for pki.ca_validity_days.

    `unit` (an OU) tells a rotation's new CA from the old one by name, not only by key.
    """
    key = key or generate_key(spec.pki.key_type)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"{spec.name} etcd CA")]
    if len(spec.domain) <= 64:  # X.509's upper bound for an O (RFC 5280 ub-organization-name)
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.domain))
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
    return _credential(cert, key, ca)


@dataclass(frozen=True)
class CaInputs:
    """What decides the CAs of a build: imported PEMs (pki.ca, pki.ca_next) and the rotation's state and step."""

    imported: tuple[bytes, bytes] | None = None
    imported_next: tuple[bytes, bytes] | None = None
    rotation: Rotation = field(default_factory=Rotation)
    phase: Phase = Phase.NONE  # the phase this build writes

    @property
    def finishing(self) -> bool:
        return self.phase is Phase.TRUST_NEW and self.rotation.phase is Phase.ISSUE

    @property
    def beginning(self) -> bool:
        return self.phase is Phase.TRUST_BOTH and self.rotation.phase is not Phase.TRUST_BOTH


def build_pki(spec: Spec, existing: Mapping[str, bytes], imported: tuple[bytes, bytes] | None,
              now: dt.datetime, records: KeyRecords, rekey: frozenset[str] = frozenset(),
              renew: bool = False, replace: frozenset[str] = frozenset(),
              cas: CaInputs | None = None) -> PkiState:
    """Reuse what is still right, issue what is missing or out of date, and refuse what is suspect.

    Args:
        spec: the validated cluster definition.
        existing: files already in output/<cluster>/pki, by name (ca.crt, etcd01.key, ...).
        imported: the (cert, key) PEMs named by pki.ca, when the CA is imported.
        now: the current time; the core never reads the clock.
        records: the public keys earlier runs recorded; a key on disk must be one of them.
        rekey: leaf names whose keys the operator asked to replace.
        renew: reissue every leaf certificate now (keeping its key), however long it has left.
        replace: nodes being replaced after a loss: their old keys count as exposed.
        cas: the rotation's state and step, and an imported next CA; `imported` is used when omitted.

    Returns:
        The CA and every credential, with a list of events (issued, renewed, reused).

    Raises:
        MaterialError: the CA is unusable or would be replaced, or a key is not the one recorded,
            is shared, or is missing while recorded.
    """
    events: list[PkiEvent] = []
    table = leaf_table(spec)
    unknown = sorted(rekey - set(table))
    if unknown:
        raise MaterialError(f"--rekey: {', '.join(unknown)} is not a node or '{ADMIN}'")
    problems: list[str] = []
    cas = cas or CaInputs(imported=imported)
    ca, ca_imported, next_ca = _resolve_cas(spec, existing, cas, now, records, events)
    state = PkiState(ca=ca, ca_imported=ca_imported, leaves={}, identities=table, events=events,
                     next_ca=next_ca, next_imported=cas.imported_next is not None, phase=cas.phase)
    horizon = now + dt.timedelta(days=spec.pki.renew_before_days)
    newest = next_ca or ca  # during a rotation the old CA may be close to its end: that is why it is rotated
    if newest.cert.not_valid_after_utc <= horizon:
        source = ("pki.ca_next.cert" if state.next_imported else f"pki/{NEXT}.crt") if next_ca is not None \
            else "pki.ca.cert" if ca_imported else "pki/ca.crt"
        raise MaterialError(
            f"{source}: the CA expires on "
            f"{newest.cert.not_valid_after_utc:%Y-%m-%d}, within pki.renew_before_days "
            f"({spec.pki.renew_before_days}); every leaf would be reissued on every run",
            hint="rotate to a CA with a longer life ('rotate-ca begin'), or lower pki.renew_before_days")
    keys = {name: _leaf_key(spec.pki, name, existing, records,
                            "replace" if name in replace else "--rekey" if name in rekey else None, problems, events)
            for name in table}
    _check_distinct_keys(state.trusted, keys, problems)
    if problems:
        raise MaterialError(problems, hint=("to replace a key on purpose, build with --rekey NAME; to restore "
                                            "keys from sealed copies, run unseal"))
    state.leaves = {name: _leaf(spec.pki, state.signer, name, identity, keys[name], existing, now, events, renew)
                    for name, identity in table.items()}
    return state


def leaf_problems(cert: x509.Certificate, ca_cert: x509.Certificate, identity: Identity, pki: Pki,
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
    if key_type_of(cert) != pki.key_type.value:
        problems.append(f"key is {key_type_of(cert)}, the spec asks for {pki.key_type.value}")
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
    elif lifetime != dt.timedelta(days=identity.days(pki)) and not clamped:
        problems.append(f"validity is {lifetime.days} days, the spec asks for {identity.days(pki)}")
    return problems


def _extension_problems(cert: x509.Certificate, ca_cert: x509.Certificate, identity: Identity) -> list[str]:
    want: dict[x509.ObjectIdentifier, tuple[bool, x509.ExtensionType]] = {
        x509.BasicConstraints.oid: (True, x509.BasicConstraints(ca=False, path_length=None)),
        x509.KeyUsage.oid: (True, _key_usage(ca=False, key=cert.public_key())),
        x509.ExtendedKeyUsage.oid: (False, x509.ExtendedKeyUsage(list(identity.usages))),
        x509.SubjectKeyIdentifier.oid: (False, x509.SubjectKeyIdentifier.from_public_key(
            cert.public_key())),
    }
    if identity.dns_names or identity.ips:
        want[x509.SubjectAlternativeName.oid] = (False, x509.SubjectAlternativeName([]))  # compared by _general_names
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
        elif oid != x509.SubjectAlternativeName.oid and ext.value != value:
            problems.append(f"{name} is {ext.value}, expected {value}")
    return problems


def check_leaf(cert: x509.Certificate, key: PrivateKey | None, ca_cert: x509.Certificate, identity: Identity,
               pki: Pki, now: dt.datetime) -> list[str]:
    """leaf_problems, and whether the certificate matches its key (when the key is at hand)."""
    problems = leaf_problems(cert, ca_cert, identity, pki, now)
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


def _resolve_cas(spec: Spec, existing: Mapping[str, bytes], cas: CaInputs, now: dt.datetime, records: KeyRecords,
                 events: list[PkiEvent]) -> tuple[CA, bool, CA | None]:
    """pki/ca.crt's CA, whether it is imported, and the rotation's next CA during phases 1 and 2."""
    have_next = f"{NEXT}.crt" in existing or f"{NEXT}.key" in existing
    if cas.finishing:  # the next CA takes the old one's place; the old one is dropped
        generated = f"{NEXT}.key" in existing
        if cas.imported_next is not None:
            raise MaterialError("pki.ca_next: 'rotate-ca finish' makes the next CA the cluster's CA; point pki.ca "
                                "at the files pki.ca_next names, then remove pki.ca_next")
        if generated and cas.imported is not None:
            raise MaterialError("pki.ca: the next CA was made by this tool (pki/ca-next.key); remove pki.ca, "
                                "which names the old CA")
        if not generated and cas.imported is None:
            raise MaterialError("pki.ca: must name the imported next CA (pki/ca-next.crt) for 'rotate-ca finish'")
        nxt = _load_next(spec, existing, cas, now, records)
        events.append(PkiEvent(CA_NAME, Change.ROTATED, "rotation phase 3: the old CA is dropped"))
        return nxt, not generated, None
    if cas.phase in (Phase.NONE, Phase.TRUST_NEW):
        if have_next:
            raise MaterialError(f"pki/{NEXT}.crt: present, but no CA rotation is in progress; refusing to "
                                "guess what it is", hint=f"move pki/{NEXT}.* away, or restore pki/rotation.json")
        if cas.imported_next is not None:
            raise MaterialError("pki.ca_next: names the CA a rotation moves to, but none is in progress; start "
                                "one with 'rotate-ca begin', or remove pki.ca_next")
    try:
        ca = _resolve_ca(spec, existing, cas.imported, now, records, events)
    except MaterialError as exc:
        if cas.rotation.phase is not Phase.ISSUE:
            raise
        # finish writes the new CA's key over pki/ca.key first: a finish cut short leaves that key there.
        raise MaterialError(exc.messages, hint="if a 'rotate-ca finish' was interrupted, run it again") from None
    if cas.phase in (Phase.NONE, Phase.TRUST_NEW):
        return ca, cas.imported is not None, None
    if not cas.beginning and cert_fingerprint(ca.cert) != cas.rotation.old_ca:
        raise MaterialError("pki/ca.crt: is not the CA pki/rotation.json names as the old CA")
    if cas.beginning:
        if have_next:
            raise MaterialError(f"pki/{NEXT}.crt: already exists; refusing to replace it with a new CA",
                                hint=f"move pki/{NEXT}.* away first")
        if cas.imported_next is not None:
            nxt = load_ca(*cas.imported_next, now, "pki.ca_next")
            if public_der(nxt.key) == public_der(ca.key):
                raise MaterialError("pki.ca_next: holds the same key as the current CA; a rotation needs a new key")
            events.append(PkiEvent(NEXT, Change.IMPORTED, "rotation phase 1: trusted beside the old CA"))
        else:
            nxt = create_ca(spec, now, unit=f"from {now:%Y-%m-%d %H:%M:%S}")
            events.append(PkiEvent(NEXT, Change.CREATED, "rotation phase 1: trusted beside the old CA"))
        return ca, cas.imported is not None, nxt
    return ca, cas.imported is not None, _load_next(spec, existing, cas, now, records)


def _load_next(spec: Spec, existing: Mapping[str, bytes], cas: CaInputs, now: dt.datetime,
               records: KeyRecords) -> CA:
    """The rotation's next CA as an earlier build of this rotation left it in pki/ca-next.*."""
    cert_pem, key_pem = existing.get(f"{NEXT}.crt"), existing.get(f"{NEXT}.key")
    if cert_pem is None:
        raise MaterialError(f"pki/{NEXT}.crt: missing during a CA rotation (phase {cas.rotation.phase:d})",
                            hint="restore it (and pki/ca-next.key.age with unseal) from the cluster's repository")
    if key_pem is not None:
        if cas.imported_next is not None and not cas.finishing:
            raise MaterialError(f"pki.ca_next: the rotation's next CA was made by this tool (pki/{NEXT}.key); "
                                "remove pki.ca_next")
        nxt = load_ca(cert_pem, key_pem, now, f"pki/{NEXT}.crt", own=True)
        _check_recorded(NEXT, nxt.key, key_pem, records, f"pki/{NEXT}.key")
    else:
        source = cas.imported_next if not cas.finishing else cas.imported
        if source is None:
            raise MaterialError("pki.ca_next: the rotation's next CA was imported (pki/ca-next.crt has no key "
                                "here); pki.ca_next must name its cert and key until 'rotate-ca finish'")
        nxt = load_ca(*source, now, "pki.ca_next" if not cas.finishing else "pki.ca")
        if not _same_ca(cert_pem, nxt):
            raise MaterialError(f"{'pki.ca_next' if not cas.finishing else 'pki.ca'}: differs from the next CA "
                                f"already in pki/{NEXT}.crt; refusing to replace it")
    if cert_fingerprint(nxt.cert) != cas.rotation.new_ca:
        raise MaterialError(f"pki/{NEXT}.crt: is not the CA pki/rotation.json names as the new CA")
    return nxt


def cert_fingerprint(cert: x509.Certificate) -> str:
    """The sha256 of a certificate's DER, as manifest.json and pki/rotation.json record it."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _resolve_ca(spec: Spec, existing: Mapping[str, bytes], imported: tuple[bytes, bytes] | None,
                now: dt.datetime, records: KeyRecords, events: list[PkiEvent]) -> CA:
    have_cert, have_key = "ca.crt" in existing, "ca.key" in existing
    if imported is not None:
        ca = load_ca(imported[0], imported[1], now, "pki.ca")
        if have_cert and existing["ca.crt"] != ca.cert_pem and _same_ca(existing["ca.crt"], ca):
            return ca  # same certificate, different PEM layout: nothing to replace
        if have_cert and existing["ca.crt"] != ca.cert_pem:
            raise MaterialError(
                "pki.ca.cert: differs from the CA already in pki/ca.crt; refusing to replace it",
                hint="every node certificate would change; move the old pki/ directory away first")
        events.append(PkiEvent(CA_NAME, Change.IMPORTED, "" if not have_cert else "unchanged"))
        return ca
    if have_key and not have_cert and CA_NAME in records.pending:
        # An earlier run was killed after it wrote ca.key and before ca.crt: finish it.
        key = _load_key(existing["ca.key"], "pki/ca.key")
        _check_recorded(CA_NAME, key, existing["ca.key"], records, "pki/ca.key")
        events.append(PkiEvent(CA_NAME, Change.CREATED, "its certificate, for the key an interrupted run wrote"))
        return create_ca(spec, now, key)
    if have_cert != have_key:
        missing = "ca.key" if have_cert else "ca.crt"
        raise MaterialError(f"pki/{missing}: missing while its pair exists; refusing to create a "
                            "new CA over the old one",
                            hint="restore the file, or move pki/ away to start a new CA")
    if have_cert:
        ca = load_ca(existing["ca.crt"], existing["ca.key"], now, "pki/ca.crt", own=True)
        _check_recorded(CA_NAME, ca.key, existing["ca.key"], records, "pki/ca.key")
        events.append(PkiEvent(CA_NAME, Change.REUSED))
        return ca
    if records.ca_recorded:
        raise MaterialError("pki/ca.crt, pki/ca.key: missing, but manifest.json records a CA; refusing to "
                            "create a new one", hint="restore pki/ (unseal), or move manifest.json away to "
                            "start over with a new CA")
    events.append(PkiEvent(CA_NAME, Change.CREATED))
    return create_ca(spec, now)


def _check_recorded(name: str, key: PrivateKey, pem: bytes, records: KeyRecords, source: str) -> None:
    """Refuse a key that is not the one earlier runs recorded."""
    if records.legacy:
        recorded_file = records.legacy_file_sha256.get(name)
        if recorded_file is not None and recorded_file != hashlib.sha256(pem).hexdigest():
            raise MaterialError(f"{source}: differs from the key manifest.json records; refusing to use it")
        return
    want = records.recorded.get(name) or records.pending.get(name)
    if want is None:
        raise MaterialError(f"{source}: not recorded in manifest.json; refusing to adopt a key this tool "
                            "did not write", hint="a copied pki/ needs the manifest.json it came with")
    if public_key_sha256(key) != want:
        raise MaterialError(f"{source}: its public key differs from the one manifest.json records; "
                            "refusing to use it", hint=f"to replace it on purpose, build with --rekey {name}")


def _same_ca(cert_pem: bytes, ca: CA) -> bool:
    try:
        return x509.load_pem_x509_certificate(cert_pem) == ca.cert
    except ValueError:
        return False


def _leaf_key(pki: Pki, name: str, existing: Mapping[str, bytes], records: KeyRecords, rekey: str | None,
              problems: list[str], events: list[PkiEvent]) -> PrivateKey:
    """The key a leaf keeps, or a new one when there is none, the type changed, or `rekey` gives a reason."""
    source = f"pki/{name}.key"
    pem = existing.get(f"{name}.key")
    if rekey:
        events.append(PkiEvent(name, Change.NEW_KEY, rekey))
        return generate_key(pki.key_type)
    if pem is None:
        if name in records.recorded:
            problems.append(f"{source}: missing, but manifest.json records its key; refusing to issue "
                            "a new key silently")
        return generate_key(pki.key_type)
    key = _load_key(pem, source)
    try:
        _check_recorded(name, key, pem, records, source)
    except MaterialError as exc:
        problems.extend(exc.messages)
        return key
    if key_type_of(key) != pki.key_type.value:
        events.append(PkiEvent(name, Change.NEW_KEY, f"{key_type_of(key)} -> {pki.key_type.value}"))
        return generate_key(pki.key_type)
    return key


def _check_distinct_keys(cas: list[CA], keys: Mapping[str, PrivateKey], problems: list[str]) -> None:
    """No leaf may carry a CA's key, and no two leaves may share a key."""
    seen = {public_der(ca.key): "a CA (pki/ca.key or pki/ca-next.key)" for ca in cas}
    for name, key in keys.items():
        der = public_der(key)
        if der in seen:
            problems.append(f"pki/{name}.key: is the same key as {seen[der]}; refusing to use it")
        else:
            seen[der] = f"pki/{name}.key"


def _leaf(pki: Pki, ca: CA, name: str, identity: Identity, key: PrivateKey, existing: Mapping[str, bytes],
          now: dt.datetime, events: list[PkiEvent], renew: bool) -> Credential:
    cert = _load_cert(existing.get(f"{name}.crt"))
    if cert is not None:
        reason = "--renew" if renew else _reissue_reason(pki, ca, cert, key, identity, now)
        if reason == "is not signed by the CA" and cert.issuer != ca.cert.subject:
            reason = "issued from the new CA"
        if reason is None:
            events.append(PkiEvent(name, Change.REUSED))
            return _credential(cert, key, ca)
        events.append(PkiEvent(name, Change.REISSUED, reason))
    else:
        events.append(PkiEvent(name, Change.ISSUED))
    return issue_leaf(ca, identity, key, now, identity.days(pki))


def _reissue_reason(pki: Pki, ca: CA, cert: x509.Certificate, key: PrivateKey,
                    identity: Identity, now: dt.datetime) -> str | None:
    problems = check_leaf(cert, key, ca.cert, identity, pki, now)
    if problems:
        return problems[0]
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(days=pki.renew_before_days):
        return f"expires in {max(left.days, 0)} days"
    return None


def _credential(cert: x509.Certificate, key: PrivateKey, ca: CA) -> Credential:
    return Credential(cert=cert, key=key,
                      chain_pem=cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)


def _load_key(pem: bytes, source: str) -> PrivateKey:
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


def _key_usage(ca: bool, key: PrivateKey | object) -> x509.KeyUsage:
    # keyEncipherment only means something for RSA key transport (RFC 5480 s.3 for ECDSA).
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=not ca and isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_der(holder: PrivateKey | x509.Certificate) -> bytes:
    """The DER public key of a private key or a certificate, to tell whether the two belong together."""
    return holder.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
