"""PKI: the policy. Spec + existing material -> the CAs and every leaf: what is reused, reissued or refused.

The x509 and key primitives live in certs.py; this module decides which to call.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography import x509

from . import certs, layout
from .certs import CA, CLIENT_ONLY, SERVER_AND_CLIENT, Credential, Identity, LeafKind, PrivateKey, public_key_sha256
from .errors import MaterialError
from .layout import ADMIN, CA_NAME
from .layout import NEXT_CA as NEXT
from .rotation import Phase, Rotation
from .spec import ROOT_USER, Node, Pki, Spec

ADMIN_CN = ROOT_USER  # etcd maps a client cert's CN to a user


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

    `ca` is the CA's certificate (layout.CA_NAME); during phases 1 and 2 of a CA rotation `next_ca` is the next
    CA's (layout.NEXT_CA), trusted beside it, and from phase 2 on it signs the leaves.
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
                    ips=(node.ip,), usages=SERVER_AND_CLIENT, validity_days=spec.pki.validity_days)


def leaf_table(spec: Spec) -> dict[str, Identity]:
    """Every leaf certificate the build issues, by name: each node, then the admin client.

    The PKI, the output files, the manifest and verify all iterate this table. The
    spec refuses node names in layout.RESERVED_NAMES, so no two rows can share a name.
    """
    table = {node.name: node_identity(spec, node) for node in spec.nodes}
    assert ADMIN not in table and CA_NAME not in table  # noqa: S101 - layout.RESERVED_NAMES
    table[ADMIN] = Identity(kind=LeafKind.CLIENT, common_name=ADMIN_CN, dns_names=(), ips=(), usages=CLIENT_ONLY,
                            validity_days=spec.pki.validity_days)
    for client in spec.clients:  # the spec refuses a client name that is taken
        table[client.name] = Identity(kind=LeafKind.CLIENT, common_name=client.cn, dns_names=(), ips=(),
                                      usages=CLIENT_ONLY, organization=client.o, validity_days=client.validity_days)
    return table


def create_ca(spec: Spec, now: dt.datetime, key: PrivateKey | None = None, unit: str | None = None) -> CA:
    """Issue the cluster's self-signed CA, valid for pki.ca_validity_days.

    `unit` (an OU) tells a rotation's new CA from the old one by name, not only by key.
    """
    # X.509's upper bound for an O is 64 characters (RFC 5280 ub-organization-name).
    return certs.create_ca(f"{spec.name} etcd CA", spec.domain if len(spec.domain) <= 64 else None, unit,
                           spec.pki.ca_validity_days, key or certs.generate_key(spec.pki.key_type.value), now)


def renew_at(cert: x509.Certificate, pki: Pki) -> dt.datetime:
    """When a certificate is due for renewal: pki.renew_before_days before it expires."""
    return cert.not_valid_after_utc - dt.timedelta(days=pki.renew_before_days)


def _load_key(pem: bytes, source: str) -> PrivateKey:
    try:
        return certs.load_key(pem)
    except ValueError as exc:
        raise MaterialError(f"{source}: {exc}; refusing to replace it",
                            hint="move the file away to issue a new key") from None


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
    newest = next_ca or ca  # during a rotation the old CA may be close to its end: that is why it is rotated
    if renew_at(newest.cert, spec.pki) <= now:
        source = ("pki.ca_next.cert" if state.next_imported else layout.cert_file(NEXT)) if next_ca is not None \
            else "pki.ca.cert" if ca_imported else layout.cert_file(CA_NAME)
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


_PAIR_NEXT = layout.pki_path(f"{NEXT}.*")  # the next CA's certificate and key


def _resolve_cas(spec: Spec, existing: Mapping[str, bytes], cas: CaInputs, now: dt.datetime, records: KeyRecords,
                 events: list[PkiEvent]) -> tuple[CA, bool, CA | None]:
    """The cluster's CA, whether it is imported, and the rotation's next CA during phases 1 and 2."""
    have_next = f"{NEXT}.crt" in existing or f"{NEXT}.key" in existing
    if cas.finishing:  # the next CA takes the old one's place; the old one is dropped
        generated = f"{NEXT}.key" in existing
        if cas.imported_next is not None:
            raise MaterialError("pki.ca_next: 'rotate-ca finish' makes the next CA the cluster's CA; point pki.ca "
                                "at the files pki.ca_next names, then remove pki.ca_next")
        if generated and cas.imported is not None:
            raise MaterialError(f"pki.ca: the next CA was made by this tool ({layout.key_file(NEXT)}); remove "
                                "pki.ca, which names the old CA")
        if not generated and cas.imported is None:
            raise MaterialError(f"pki.ca: must name the imported next CA ({layout.cert_file(NEXT)}) for 'rotate-ca "
                                "finish'")
        nxt = _load_next(spec, existing, cas, now, records)
        events.append(PkiEvent(CA_NAME, Change.ROTATED, "rotation phase 3: the old CA is dropped"))
        return nxt, not generated, None
    if cas.phase in (Phase.NONE, Phase.TRUST_NEW):
        if have_next:
            raise MaterialError(f"{layout.cert_file(NEXT)}: present, but no CA rotation is in progress; refusing "
                                "to guess what it is", hint=f"move {_PAIR_NEXT} away, or restore {layout.ROTATION}")
        if cas.imported_next is not None:
            raise MaterialError("pki.ca_next: names the CA a rotation moves to, but none is in progress; start "
                                "one with 'rotate-ca begin', or remove pki.ca_next")
    try:
        ca = _resolve_ca(spec, existing, cas.imported, now, records, events)
    except MaterialError as exc:
        if cas.rotation.phase is not Phase.ISSUE:
            raise
        # finish writes the new CA's key over the CA's key file first: a finish cut short leaves that key there.
        raise MaterialError(exc.messages, hint="if a 'rotate-ca finish' was interrupted, run it again") from None
    if cas.phase in (Phase.NONE, Phase.TRUST_NEW):
        return ca, cas.imported is not None, None
    if not cas.beginning and certs.cert_fingerprint(ca.cert) != cas.rotation.old_ca:
        raise MaterialError(f"{layout.cert_file(CA_NAME)}: is not the CA {layout.ROTATION} names as the old CA")
    if cas.beginning:
        if have_next:
            raise MaterialError(f"{layout.cert_file(NEXT)}: already exists; refusing to replace it with a new CA",
                                hint=f"move {_PAIR_NEXT} away first")
        if cas.imported_next is not None:
            nxt = certs.load_ca(*cas.imported_next, now, "pki.ca_next")
            if certs.public_der(nxt.key) == certs.public_der(ca.key):
                raise MaterialError("pki.ca_next: holds the same key as the current CA; a rotation needs a new key")
            events.append(PkiEvent(NEXT, Change.IMPORTED, "rotation phase 1: trusted beside the old CA"))
        else:
            nxt = create_ca(spec, now, unit=f"from {now:%Y-%m-%d %H:%M:%S}")
            events.append(PkiEvent(NEXT, Change.CREATED, "rotation phase 1: trusted beside the old CA"))
        return ca, cas.imported is not None, nxt
    return ca, cas.imported is not None, _load_next(spec, existing, cas, now, records)


def _load_next(spec: Spec, existing: Mapping[str, bytes], cas: CaInputs, now: dt.datetime,
               records: KeyRecords) -> CA:
    """The rotation's next CA as an earlier build of this rotation left it in the keys directory."""
    cert_pem, key_pem = existing.get(f"{NEXT}.crt"), existing.get(f"{NEXT}.key")
    if cert_pem is None:
        raise MaterialError(f"{layout.cert_file(NEXT)}: missing during a CA rotation (phase {cas.rotation.phase:d})",
                            hint=f"restore it (and {layout.sealed_file(layout.key_file(NEXT))} with unseal) from the "
                            "cluster's repository")
    if key_pem is not None:
        if cas.imported_next is not None and not cas.finishing:
            raise MaterialError(f"pki.ca_next: the rotation's next CA was made by this tool "
                                f"({layout.key_file(NEXT)}); remove pki.ca_next")
        nxt = certs.load_ca(cert_pem, key_pem, now, layout.cert_file(NEXT), own=True)
        _check_recorded(NEXT, nxt.key, key_pem, records, layout.key_file(NEXT))
    else:
        source = cas.imported_next if not cas.finishing else cas.imported
        if source is None:
            raise MaterialError(f"pki.ca_next: the rotation's next CA was imported ({layout.cert_file(NEXT)} has no "
                                "key here); pki.ca_next must name its cert and key until 'rotate-ca finish'")
        nxt = certs.load_ca(*source, now, "pki.ca_next" if not cas.finishing else "pki.ca")
        if not _same_ca(cert_pem, nxt):
            raise MaterialError(f"{'pki.ca_next' if not cas.finishing else 'pki.ca'}: differs from the next CA "
                                f"already in {layout.cert_file(NEXT)}; refusing to replace it")
    if certs.cert_fingerprint(nxt.cert) != cas.rotation.new_ca:
        raise MaterialError(f"{layout.cert_file(NEXT)}: is not the CA {layout.ROTATION} names as the new CA")
    return nxt


def _resolve_ca(spec: Spec, existing: Mapping[str, bytes], imported: tuple[bytes, bytes] | None,
                now: dt.datetime, records: KeyRecords, events: list[PkiEvent]) -> CA:
    have_cert, have_key = "ca.crt" in existing, "ca.key" in existing
    if imported is not None:
        ca = certs.load_ca(imported[0], imported[1], now, "pki.ca")
        if have_cert and existing["ca.crt"] != ca.cert_pem and _same_ca(existing["ca.crt"], ca):
            return ca  # same certificate, different PEM layout: nothing to replace
        if have_cert and existing["ca.crt"] != ca.cert_pem:
            raise MaterialError(
                f"pki.ca.cert: differs from the CA already in {layout.cert_file(CA_NAME)}; refusing to replace it",
                hint=f"every node certificate would change; move the old {layout.PKI}/ directory away first")
        events.append(PkiEvent(CA_NAME, Change.IMPORTED, "" if not have_cert else "unchanged"))
        return ca
    if have_key and not have_cert and CA_NAME in records.pending:
        # An earlier run was killed after it wrote ca.key and before ca.crt: finish it.
        key = _load_key(existing["ca.key"], layout.key_file(CA_NAME))
        _check_recorded(CA_NAME, key, existing["ca.key"], records, layout.key_file(CA_NAME))
        events.append(PkiEvent(CA_NAME, Change.CREATED, "its certificate, for the key an interrupted run wrote"))
        return create_ca(spec, now, key)
    if have_cert != have_key:
        missing = layout.key_file(CA_NAME) if have_cert else layout.cert_file(CA_NAME)
        raise MaterialError(f"{missing}: missing while its pair exists; refusing to create a "
                            "new CA over the old one",
                            hint=f"restore the file, or move {layout.PKI}/ away to start a new CA")
    if have_cert:
        ca = certs.load_ca(existing["ca.crt"], existing["ca.key"], now, layout.cert_file(CA_NAME), own=True)
        _check_recorded(CA_NAME, ca.key, existing["ca.key"], records, layout.key_file(CA_NAME))
        events.append(PkiEvent(CA_NAME, Change.REUSED))
        return ca
    if records.ca_recorded:
        raise MaterialError(f"{layout.cert_file(CA_NAME)}, {layout.key_file(CA_NAME)}: missing, but manifest.json "
                            "records a CA; refusing to create a new one", hint=f"restore {layout.PKI}/ (unseal), or "
                            "move manifest.json away to start over with a new CA")
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
                            "did not write", hint=f"a copied {layout.PKI}/ needs the manifest.json it came with")
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
    source = layout.key_file(name)
    pem = existing.get(f"{name}.key")
    if rekey:
        events.append(PkiEvent(name, Change.NEW_KEY, rekey))
        return certs.generate_key(pki.key_type.value)
    if pem is None:
        if name in records.recorded:
            problems.append(f"{source}: missing, but manifest.json records its key; refusing to issue "
                            "a new key silently")
        return certs.generate_key(pki.key_type.value)
    key = _load_key(pem, source)
    try:
        _check_recorded(name, key, pem, records, source)
    except MaterialError as exc:
        problems.extend(exc.messages)
        return key
    if certs.key_type_of(key) != pki.key_type.value:
        events.append(PkiEvent(name, Change.NEW_KEY, f"{certs.key_type_of(key)} -> {pki.key_type.value}"))
        return certs.generate_key(pki.key_type.value)
    return key


def _check_distinct_keys(cas: list[CA], keys: Mapping[str, PrivateKey], problems: list[str]) -> None:
    """No leaf may carry a CA's key, and no two leaves may share a key."""
    seen = {certs.public_der(ca.key): f"a CA ({layout.key_file(CA_NAME)} or {layout.key_file(NEXT)})" for ca in cas}
    for name, key in keys.items():
        der = certs.public_der(key)
        if der in seen:
            problems.append(f"{layout.key_file(name)}: is the same key as {seen[der]}; refusing to use it")
        else:
            seen[der] = layout.key_file(name)


def _leaf(pki: Pki, ca: CA, name: str, identity: Identity, key: PrivateKey, existing: Mapping[str, bytes],
          now: dt.datetime, events: list[PkiEvent], renew: bool) -> Credential:
    cert = certs.first_cert(existing.get(f"{name}.crt"))
    if cert is not None:
        reason = "--renew" if renew else _reissue_reason(pki, ca, cert, key, identity, now)
        if reason == "is not signed by the CA" and cert.issuer != ca.cert.subject:
            reason = "issued from the new CA"
        if reason is None:
            events.append(PkiEvent(name, Change.REUSED))
            return certs.credential(cert, key, ca)
        events.append(PkiEvent(name, Change.REISSUED, reason))
    else:
        events.append(PkiEvent(name, Change.ISSUED))
    return certs.issue_leaf(ca, identity, key, now, identity.validity_days)


def _reissue_reason(pki: Pki, ca: CA, cert: x509.Certificate, key: PrivateKey,
                    identity: Identity, now: dt.datetime) -> str | None:
    problems = certs.check_leaf(cert, key, ca.cert, identity, pki.key_type.value, now)
    if problems:
        return problems[0]
    if renew_at(cert, pki) <= now:
        return f"expires in {max((cert.not_valid_after_utc - now).days, 0)} days"
    return None


