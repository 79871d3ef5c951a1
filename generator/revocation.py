"""Revocation: which certificates the cluster no longer accepts, and the CRL (pki/crl.der) that lists them.

A leaf certificate is revoked when its identity is marked `revoked: true` or leaves the spec, or when the
build gives it a new key (a replaced node, --rekey) while the old certificate is still valid. Renewal and
CA rotation keep the key, so they revoke nothing. The list lives in manifest.json; an entry is dropped
once its certificate has expired.

What etcd does with the file, checked on etcd 3.5.16 (tests/etcd/test_revocation.py): it reads the CRL
again on every new TLS connection, so a new one needs no restart; it does not check the CRL's signature
or issuer, so one file can list the certificates of both CAs during a rotation; and a missing or
unreadable file refuses every client. https://etcd.io/docs/v3.5/op-guide/configuration/#security
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from . import certs, layout
from .certs import CA
from .manifest import TIME_FORMAT, Manifest, Revoked, parse_time
from .spec import Spec

REVOKED = "revoked in the spec"
LEFT = "left the spec"
NEW_KEY = "replaced by a new key"


def revocations(spec: Spec, previous: Manifest, current: Mapping[str, str], now: dt.datetime) -> tuple[Revoked, ...]:
    """Every certificate the CRL lists after this build: the previous list without expired entries, and
    each certificate of the previous build that is revoked now.

    Args:
        spec: the validated cluster definition.
        previous: the manifest of the previous build.
        current: the public key sha256 of every leaf this build issues (and of its CAs), by name.
        now: the build's time.
    """
    kept = {r.serial: r for r in previous.revoked if parse_time(r.not_after) > now}
    for path, record in sorted(previous.certificates.items()):
        name = path.removeprefix(f"{layout.PKI}/").removesuffix(".crt")
        if name in (layout.CA_NAME, layout.NEXT_CA) or record.serial in kept or not record.not_after \
                or parse_time(record.not_after) <= now:
            continue
        old_key = previous.files.get(layout.key_file(name))
        if name in spec.revoked:
            reason = REVOKED
        elif name not in current:
            reason = LEFT
        elif old_key is not None and old_key.public_key_sha256 not in (None, current[name]):
            reason = NEW_KEY
        else:
            continue
        kept[record.serial] = Revoked(serial=record.serial, name=name, not_after=record.not_after,
                                      revoked_at=now.strftime(TIME_FORMAT), reason=reason)
    return tuple(sorted(kept.values(), key=lambda r: int(r.serial, 16)))


@dataclass(frozen=True)
class CrlFile:
    """pki/crl.der as this build writes it, and whether it was issued now (else reused as it was)."""

    der: bytes
    issued: bool
    next_update: dt.datetime


def crl(existing: bytes | None, revoked: tuple[Revoked, ...], signer: CA, now: dt.datetime, days: int,
        renew_before_days: int, renew: bool = False) -> CrlFile:
    """Reuse pki/crl.der while it is the signer's, lists exactly `revoked` and is not due; else issue a new one,
    valid for `days`, numbered one past the old."""
    old = certs.read_crl(existing, signer.cert) if existing is not None else None
    wanted = frozenset(int(r.serial, 16) for r in revoked)
    if old is not None and existing is not None and not renew and old.serials == wanted \
            and old.next_update is not None and old.next_update - dt.timedelta(days=renew_before_days) > now:
        return CrlFile(existing, issued=False, next_update=old.next_update)
    entries = [(int(r.serial, 16), parse_time(r.revoked_at)) for r in revoked]
    return CrlFile(certs.issue_crl(signer, entries, (old.number + 1) if old else 1, now, days), issued=True,
                   next_update=now + dt.timedelta(days=days))
