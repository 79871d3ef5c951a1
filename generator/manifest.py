"""Manifest: the sha256 of every output file and what each certificate says, as stable JSON."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import OutputError
from .fs import Bundle, FileState
from .pki import sans_of
from .spec import Spec

NAME = "manifest.json"
FORMAT = 1


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    """What a reviewer checks in a certificate, in plain words and hex."""
    dns, ips = sans_of(cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "sha256_fingerprint": hashlib.sha256(der).hexdigest(),
        "sans": sorted(dns) + [str(ip) for ip in sorted(ips)],
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def render_manifest(spec: Spec, states: list[FileState], certs: Mapping[str, x509.Certificate],
                    bundle: Bundle) -> bytes:
    """The manifest for one cluster: every file's sha256 and mode, and each certificate's facts.

    Args:
        spec: the cluster.
        states: every file but the manifest itself, each with its sha256.
        certs: the leaf (or CA) certificate of each .crt file, by path.
        bundle: the etcd tarball the seeds carry (or that nodes download), as checked.
    """
    files = {}
    for state in states:
        entry: dict[str, Any] = {"sha256": state.sha256, "size": state.size, "mode": f"{state.mode:04o}"}
        if state.inputs is not None:
            entry["inputs"] = state.inputs
        files[state.path] = entry
    document = {
        "format": FORMAT,
        "cluster": spec.name,
        "etcd_version": spec.etcd.version,
        "bundle": {"name": bundle.name, "sha256": bundle.sha256,
                   "source": spec.etcd.url or (spec.etcd.bundle.name if spec.etcd.bundle else None)},
        "files": files,
        "certificates": {path: describe_certificate(cert) for path, cert in sorted(certs.items())},
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes | None, source: str = NAME) -> dict[str, Any]:
    """A manifest read back; an empty one when there is none yet."""
    if data is None:
        return {"files": {}, "certificates": {}}
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise OutputError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("files"), dict):
        raise OutputError(f"{source}: has no 'files' table")
    return document
