"""Revocation: which certificates the cluster no longer accepts, and the CRL (layout.CRL) that lists them.

A leaf certificate is revoked when its identity is marked `revoked: true` or leaves the spec, or when the
build gives it a new key (a replaced node, --rekey) while the old certificate is still valid. Renewal and
CA rotation keep the key, so they revoke nothing; but they leave older certificates of that key valid,
under the old CA too during a rotation, so manifest.json keeps every leaf certificate the builds issued
(`issued`) until it expires, and a revocation reaches each of them. The list lives in manifest.json; an
entry is dropped once its certificate has expired. The CRL in the tree counts as well: a build refuses a
manifest whose list lacks a serial the CRL lists, instead of signing a shorter one.

What etcd does with the file, checked on etcd 3.5.16 (tests/etcd/test_revocation.py): it reads the CRL
again on every new TLS connection, so a new one needs no restart; it does not check the CRL's signature
or issuer, so one file can list the certificates of both CAs during a rotation; and a missing or
unreadable file refuses every client. https://etcd.io/docs/v3.5/op-guide/configuration/#security
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import certs, layout
from .certs import CA, Credential
from .errors import OutputError
from .manifest import TIME_FORMAT, Issued, Manifest, Revoked, parse_time
from .spec import Spec

REVOKED = "revoked in the spec"
LEFT = "left the spec"
NEW_KEY = "replaced by a new key"


def issued_before(previous: Manifest) -> tuple[Issued, ...]:
    """Every leaf certificate the tree's builds issued: the manifest's history, and the certificates of the last
    build (a tree written before the history was kept has only those)."""
    found = {i.serial: i for i in previous.issued}
    for path, record in sorted(previous.certificates.items()):
        name = path.removeprefix(f"{layout.PKI}/").removesuffix(".crt")
        key = previous.files.get(layout.key_file(name))
        if name in (layout.CA_NAME, layout.NEXT_CA) or not record.not_after or key is None \
                or key.public_key_sha256 is None:
            continue
        found.setdefault(record.serial, Issued(record.serial, name, key.public_key_sha256, record.not_after))
    return tuple(found.values())


def contradictions(previous: Manifest) -> list[str]:
    """Where manifest.json's `issued` and `revoked` contradict the certificates it records as in the tree: a
    history entry under another name or key than the certificate of its serial, or a revoked serial that a
    certificate in use (or a CA) carries. Each would revoke, or misname, a certificate the cluster runs on."""
    in_use = {record.serial: path for path, record in previous.certificates.items()}
    found = []
    for i, entry in enumerate(previous.issued):
        path = in_use.get(entry.serial)
        key = previous.files.get(layout.key_file(entry.name))
        if path is not None and (path != layout.cert_file(entry.name)
                                 or (key is not None and key.public_key_sha256 not in (None, entry.public_key_sha256))):
            found.append(f"issued.{i}: serial {entry.serial} is {path}'s, not {entry.name}'s with that key")
    for i, revoked in enumerate(previous.revoked):
        if revoked.serial in in_use:
            found.append(f"revoked.{i}: serial {revoked.serial} is {in_use[revoked.serial]}'s, a certificate in use")
    return found


def history(previous: Manifest, leaves: Mapping[str, Credential], current: Mapping[str, str],
            now: dt.datetime) -> tuple[Issued, ...]:
    """What manifest.json's `issued` holds after this build: every unexpired leaf certificate issued so far.

    Args:
        previous: the manifest of the previous build.
        leaves: the leaf certificates this build writes, by name.
        current: the public key sha256 of each, by name.
        now: the build's time.
    """
    found = {i.serial: i for i in issued_before(previous)}
    for name, leaf in leaves.items():
        serial = f"{leaf.cert.serial_number:x}"
        found[serial] = Issued(serial, name, current[name], leaf.cert.not_valid_after_utc.strftime(TIME_FORMAT))
    return tuple(sorted((i for i in found.values() if parse_time(i.not_after) > now), key=lambda i: int(i.serial, 16)))


def revocations(spec: Spec, previous: Manifest, current: Mapping[str, str], now: dt.datetime) -> tuple[Revoked, ...]:
    """Every certificate the CRL lists after this build: the previous list without expired entries, and
    every unexpired certificate issued before that is revoked now: each one of a revoked name or of a name
    that left the spec, and each one of a key the name no longer has.

    Args:
        spec: the validated cluster definition.
        previous: the manifest of the previous build.
        current: the public key sha256 of every leaf this build issues (and of its CAs), by name.
        now: the build's time.
    """
    kept = {r.serial: r for r in previous.revoked if parse_time(r.not_after) > now}
    for entry in sorted(issued_before(previous), key=lambda i: int(i.serial, 16)):
        if entry.serial in kept or parse_time(entry.not_after) <= now:
            continue
        if entry.name in spec.revoked:
            reason = REVOKED
        elif entry.name not in current:
            reason = LEFT
        elif entry.public_key_sha256 != current[entry.name]:
            reason = NEW_KEY
        else:
            continue
        kept[entry.serial] = Revoked(serial=entry.serial, name=entry.name, not_after=entry.not_after,
                                     revoked_at=now.strftime(TIME_FORMAT), reason=reason)
    return tuple(sorted(kept.values(), key=lambda r: int(r.serial, 16)))


def lost(existing: bytes | None, trusted: Sequence[CA], previous: Manifest) -> list[str]:
    """The serials the CRL in the tree lists while manifest.json's `revoked` does not: the manifest lost them
    (an edit, a merge resolved the wrong way), and a CRL signed from it would take them back. Each as
    `serial (name)` where the history knows the name.

    Raises:
        OutputError: the tree's CRL is not one a trusted CA signed: what it lists cannot be known.
    """
    if existing is None:
        return []
    listed = next((crl.serials for ca in trusted if (crl := certs.read_crl(existing, ca.cert)) is not None), None)
    if listed is None:
        raise OutputError(f"{layout.CRL}: not a CRL signed by this cluster's CA, so what it revoked is unknown; "
                          "restore it from git (git log -p shows it)")
    names = {int(i.serial, 16): i.name for i in issued_before(previous)}
    missing = sorted(listed - {int(r.serial, 16) for r in previous.revoked})
    return [f"{serial:x}" + (f" ({names[serial]})" if serial in names else "") for serial in missing]


@dataclass(frozen=True)
class CrlFile:
    """The CRL as this build writes it, and whether it was issued now (else reused as it was)."""

    der: bytes
    issued: bool
    next_update: dt.datetime


def crl(existing: bytes | None, revoked: tuple[Revoked, ...], signer: CA, now: dt.datetime, days: int,
        renew_before_days: int, renew: bool = False) -> CrlFile:
    """Reuse the CRL while it is the signer's, lists exactly `revoked` and is not due; else issue a new one,
    valid for `days`, numbered one past the old."""
    old = certs.read_crl(existing, signer.cert) if existing is not None else None
    wanted = frozenset(int(r.serial, 16) for r in revoked)
    if old is not None and existing is not None and not renew and old.serials == wanted \
            and old.next_update is not None and old.next_update - dt.timedelta(days=renew_before_days) > now:
        return CrlFile(existing, issued=False, next_update=old.next_update)
    entries = [(int(r.serial, 16), parse_time(r.revoked_at)) for r in revoked]
    return CrlFile(certs.issue_crl(signer, entries, (old.number + 1) if old else 1, now, days), issued=True,
                   next_update=now + dt.timedelta(days=days))
