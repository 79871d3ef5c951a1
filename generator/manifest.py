"""Manifest: the sha256 of every output file, each key's public half and each certificate's facts, as stable JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from . import provenance
from .certs import cert_fingerprint, sans_of
from .errors import OutputError, printable
from .layout import CA_NAME, HEX64, MANIFEST, NEXT_CA

NAME = MANIFEST
# 2 adds each key's public_key_sha256 and each ISO's epoch; 1 is still read.
FORMAT = 2
_MODE = re.compile(r"0[0-7]{3}")
_DISK_WORD = re.compile(r"[A-Za-z0-9/:._+@-]{1,200}")  # a device path or a filesystem type, as the spec admits
_FIELD_PATH = re.compile(r"[a-z_]+(\.[a-z0-9_-]{1,64}){0,3}")  # keys, and node and client names
_FIELD_VALUE = re.compile(r"[0-9a-f]{16}|true|false")  # a short sha256, or a flag
MAX_FIELDS = 50_000


@dataclass(frozen=True)
class FileEntry:
    """What the manifest says of one file."""

    sha256: str
    size: int
    mode: int
    public_key_sha256: str | None = None  # keys: the sha256 of the DER SubjectPublicKeyInfo
    epoch: int | None = None  # ISOs: the time stamped on every date inside


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every time the manifest records


def parse_time(text: str) -> dt.datetime:
    """A time as the manifest records it (TIME_FORMAT, UTC)."""
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CertificateRecord:
    """What the manifest says of one certificate, for a reviewer: names, serial, fingerprint and dates."""

    subject: str
    issuer: str
    serial: str  # hex
    sha256_fingerprint: str
    sans: tuple[str, ...]  # DNS names, then IPv4 addresses
    not_before: str  # YYYY-MM-DDTHH:MM:SSZ
    not_after: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateRecord:
        dns, ips = sans_of(cert)
        return cls(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                   serial=f"{cert.serial_number:x}", sha256_fingerprint=cert_fingerprint(cert),
                   sans=(*sorted(dns), *(str(ip) for ip in sorted(ips))),
                   not_before=cert.not_valid_before_utc.strftime(TIME_FORMAT),
                   not_after=cert.not_valid_after_utc.strftime(TIME_FORMAT))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sans": list(self.sans)}

    @property
    def ips(self) -> list[str]:
        """The IPv4 addresses among the SANs."""
        return [s for s in self.sans if s.replace(".", "").isdigit()]


@dataclass(frozen=True)
class Revoked:
    """A certificate on the CRL: its serial (hex), whose it was, until when it was valid, when and why it was
    revoked."""

    serial: str
    name: str
    not_after: str  # YYYY-MM-DDTHH:MM:SSZ
    revoked_at: str
    reason: str


@dataclass(frozen=True)
class Issued:
    """A leaf certificate a build issued, kept until it expires: revoking its name, a new key or a removal
    reaches every certificate of the key, not only the newest one."""

    serial: str  # hex
    name: str
    public_key_sha256: str
    not_after: str  # YYYY-MM-DDTHH:MM:SSZ


_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SERIAL = re.compile(r"[1-9a-f][0-9a-f]{0,39}")  # one spelling per serial: no leading zero
MAX_ISSUED = 100_000  # years of renewals of hundreds of names; more is not a history this tool wrote


def _is_stamp(text: str) -> bool:
    if not _STAMP.fullmatch(text):
        return False
    try:
        parse_time(text)
    except ValueError:  # 2030-02-30
        return False
    return True


def _is_serial(text: str) -> bool:
    """A serial a certificate may carry: positive, at most 159 bits (RFC 5280 4.1.2.2), in lower-case hex."""
    return bool(_SERIAL.fullmatch(text)) and int(text, 16) < 1 << 159


def _is_leaf(text: str) -> bool:
    return bool(_LEAF.fullmatch(text)) and text not in (CA_NAME, NEXT_CA)


def _checked(row: Any, where: str, fields: Mapping[str, Callable[[str], bool]]) -> dict[str, str]:
    """A row of string fields, each passing its check; OutputError naming the first that does not."""
    if not isinstance(row, dict) or set(row) != set(fields):
        raise OutputError(f"{where}: must be an object of {', '.join(fields)}")
    for name, ok in fields.items():
        if not (isinstance(row[name], str) and ok(row[name])):
            raise OutputError(f"{where}.{name}: {printable(str(row[name]))[:80]!r} is not a valid "
                              f"{name.replace('_', ' ')}")
    return row
_LEAF = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a node's or a client's name
_TEXT = re.compile(r"[ -~]{1,200}")  # printable ASCII: a name and a reason, read back from the tree


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}")


@dataclass(frozen=True)
class WrittenWith:
    """What last wrote the tree's files: the spec's sha256, and etcd-seed's, Python's and each library's version.

    The build records it only when it writes a file other than the manifest, so a library update that
    changes no byte leaves a committed manifest as it was."""

    spec_sha256: str
    versions: Mapping[str, str]

    @classmethod
    def now(cls, spec_sha256: str) -> WrittenWith:
        """This process: the etcd-seed, Python and libraries that run now."""
        return cls(spec_sha256, provenance.installed())

    def changes(self, now: WrittenWith) -> list[str]:
        """`name old -> new` for each version that differs from `now`'s, in a stable order."""
        names = sorted(set(self.versions) | set(now.versions))
        return [f"{name} {self.versions.get(name, 'none')} -> {now.versions.get(name, 'none')}"
                for name in names if self.versions.get(name) != now.versions.get(name)]

    def to_json(self) -> dict[str, Any]:
        return {"spec_sha256": self.spec_sha256, "versions": dict(sorted(self.versions.items()))}


@dataclass(frozen=True)
class Manifest:
    """A manifest read back. `format` 0 means there was none."""

    format: int = 0
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    certificates: Mapping[str, CertificateRecord] = field(default_factory=dict)
    bundle_sha256: str | None = None
    etcd_version: str | None = None
    replaced: Mapping[str, str] = field(default_factory=dict)  # node -> public key its replacement got
    restore_sha256: str | None = None
    revoked: tuple[Revoked, ...] = ()  # what the CRL (layout.CRL) lists
    auth_enabled: bool | None = None  # None: left to the cluster (built before auth was managed)
    written_with: WrittenWith | None = None  # None in a tree written before it was recorded
    issued: tuple[Issued, ...] = ()  # every unexpired leaf certificate issued; empty before it was kept
    # Each built node's data disk (device, filesystem), None for one on its root disk; None before it was kept.
    data_disks: Mapping[str, tuple[str, str] | None] | None = None
    # Each spec field's value as a short sha256 (fields.digests); None before it was kept.
    fields: Mapping[str, str] | None = None


def render_manifest(cluster: str, etcd_version: str, bundle: Mapping[str, Any], files: Mapping[str, FileEntry],
                    certs: Mapping[str, x509.Certificate], replaced: Mapping[str, str] | None = None,
                    restore: Mapping[str, Any] | None = None, revoked: tuple[Revoked, ...] = (),
                    auth_enabled: bool | None = None, written_with: WrittenWith | None = None,
                    issued: tuple[Issued, ...] = (),
                    data_disks: Mapping[str, tuple[str, str] | None] | None = None,
                    fields: Mapping[str, str] | None = None) -> bytes:
    """The manifest for one cluster: every file's sha256 and mode, and each certificate's facts.

    Args:
        cluster: the cluster's name.
        etcd_version: the release the seeds install.
        bundle: name, sha256 and source of the etcd tarball.
        files: every file but the manifest itself.
        certs: the leaf (or CA) certificate of each .crt file, by path.
        replaced: for each node marked replace, the public key sha256 its replacement was given.
        restore: sha256 and size of the snapshot the seeds restore from.
        revoked: the certificates the CRL lists.
        auth_enabled: whether the seeds turn etcd's authentication on.
        written_with: the spec and the versions that wrote the files.
        issued: every unexpired leaf certificate the builds of this tree issued.
        data_disks: each node's data disk (device, filesystem), or None for the root disk.
        fields: each spec field's value digest, by its path with list items named.
    """
    table = {}
    for path, entry in files.items():
        row: dict[str, Any] = {"sha256": entry.sha256, "size": entry.size, "mode": f"{entry.mode:04o}"}
        if entry.public_key_sha256 is not None:
            row["public_key_sha256"] = entry.public_key_sha256
        if entry.epoch is not None:
            row["epoch"] = entry.epoch
        table[path] = row
    document = {
        "format": FORMAT,
        "cluster": cluster,
        "etcd_version": etcd_version,
        "bundle": dict(bundle),
        "files": table,
        "certificates": {path: CertificateRecord.of(cert).to_json() for path, cert in sorted(certs.items())},
    }
    if replaced:
        document["replaced"] = dict(replaced)
    if restore:
        document["restore"] = dict(restore)
    if revoked:
        document["revoked"] = [dataclasses.asdict(r) for r in revoked]
    if auth_enabled is not None:
        document["auth"] = {"enabled": auth_enabled}
    if written_with is not None:
        document["written_with"] = written_with.to_json()
    if issued:
        document["issued"] = [dataclasses.asdict(i) for i in issued]
    if data_disks is not None:
        document["data_disks"] = {name: None if disk is None else {"device": disk[0], "fs": disk[1]}
                                  for name, disk in sorted(data_disks.items())}
    if fields is not None:
        document["fields"] = dict(sorted(fields.items()))
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes | None, source: str = NAME) -> Manifest:
    """A manifest read back and checked field by field; an empty one when there is none yet.

    Raises:
        OutputError: with the dotted path of the first malformed field.
    """
    if data is None:
        return Manifest()
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise OutputError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OutputError(f"{source}: must be a JSON object")
    fmt = document.get("format")
    if fmt not in (1, FORMAT):
        raise OutputError(f"{source}: format: {fmt!r} is not a manifest format this tool reads (1 or {FORMAT})")
    files = document.get("files")
    if not isinstance(files, dict):
        raise OutputError(f"{source}: files: must be an object")
    entries = {}
    for path, row in files.items():
        entries[path] = _entry(row, f"{source}: files.{path}")
    certificates = document.get("certificates", {})
    if not isinstance(certificates, dict):
        raise OutputError(f"{source}: certificates: must be an object")
    records = {path: _certificate(row, f"{source}: certificates.{path}") for path, row in certificates.items()}
    bundle = document.get("bundle", {})
    bundle_sha = bundle.get("sha256") if isinstance(bundle, dict) else None
    if bundle_sha is not None and not (isinstance(bundle_sha, str) and HEX64.fullmatch(bundle_sha)):
        raise OutputError(f"{source}: bundle.sha256: must be 64 hex digits")
    version = document.get("etcd_version")
    replaced = document.get("replaced", {})
    if not isinstance(replaced, dict) or not all(isinstance(k, str) and isinstance(v, str) and HEX64.fullmatch(v)
                                                 for k, v in replaced.items()):
        raise OutputError(f"{source}: replaced: must map node names to 64 hex digits")
    restore = document.get("restore")
    restore_sha = restore.get("sha256") if isinstance(restore, dict) else None
    if restore is not None and not (isinstance(restore_sha, str) and HEX64.fullmatch(restore_sha)):
        raise OutputError(f"{source}: restore.sha256: must be 64 hex digits")
    revoked = document.get("revoked", [])
    if not isinstance(revoked, list):
        raise OutputError(f"{source}: revoked: must be a list")
    auth = document.get("auth", {})
    auth_enabled = auth.get("enabled") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not isinstance(auth_enabled, bool | None):
        raise OutputError(f"{source}: auth.enabled: must be true or false")
    return Manifest(format=fmt, files=entries, certificates=records, bundle_sha256=bundle_sha,
                    etcd_version=version if isinstance(version, str) else None, replaced=replaced,
                    restore_sha256=restore_sha, auth_enabled=auth_enabled,
                    written_with=_written_with(document.get("written_with"), f"{source}: written_with"),
                    issued=_issued(document.get("issued", []), f"{source}: issued"),
                    data_disks=_data_disks(document.get("data_disks"), f"{source}: data_disks"),
                    fields=_fields(document.get("fields"), f"{source}: fields"),
                    revoked=_revoked_list(revoked, f"{source}: revoked"))


def _data_disks(table: Any, where: str) -> dict[str, tuple[str, str] | None] | None:
    if table is None:
        return None
    if not isinstance(table, dict) or len(table) > 1000:
        raise OutputError(f"{where}: must map at most 1000 node names to a disk or null")
    disks: dict[str, tuple[str, str] | None] = {}
    for name, row in table.items():
        if row is None:
            disks[name] = None
            continue
        if not (isinstance(row, dict) and set(row) == {"device", "fs"}
                and all(isinstance(v, str) and _DISK_WORD.fullmatch(v) for v in row.values())):
            raise OutputError(f"{where}.{printable(str(name))}: must be null or an object of device, fs")
        disks[name] = (row["device"], row["fs"])
    return disks


def _fields(table: Any, where: str) -> dict[str, str] | None:
    if table is None:
        return None
    if not (isinstance(table, dict) and len(table) <= MAX_FIELDS
            and all(isinstance(k, str) and _FIELD_PATH.fullmatch(k) and isinstance(v, str) and _FIELD_VALUE.fullmatch(v)
                    for k, v in table.items())):
        raise OutputError(f"{where}: must map at most {MAX_FIELDS} field paths to 16 hex digits, true or false")
    if "cluster.name" not in table:  # every build records it
        raise OutputError(f"{where}: has no cluster.name; not a record a build wrote")
    return dict(table)


def _written_with(row: Any, where: str) -> WrittenWith | None:
    if row is None:
        return None
    if not isinstance(row, dict) or set(row) != {"spec_sha256", "versions"}:
        raise OutputError(f"{where}: must be an object of spec_sha256, versions")
    if not (isinstance(row["spec_sha256"], str) and HEX64.fullmatch(row["spec_sha256"])):
        raise OutputError(f"{where}.spec_sha256: must be 64 hex digits")
    versions = row["versions"]
    if not isinstance(versions, dict) or len(versions) > 32:
        raise OutputError(f"{where}.versions: must map at most 32 names to versions")
    for name, version in versions.items():
        if not (_NAME.fullmatch(name) and isinstance(version, str) and _VERSION.fullmatch(version)):
            raise OutputError(f"{where}.versions: {printable(name)!r}: must map a package name to a version")
    return WrittenWith(row["spec_sha256"], dict(versions))


def _issued(rows: Any, where: str) -> tuple[Issued, ...]:
    if not isinstance(rows, list) or len(rows) > MAX_ISSUED:
        raise OutputError(f"{where}: must be a list of at most {MAX_ISSUED} certificates")
    fields = {"serial": _is_serial, "name": _is_leaf, "public_key_sha256": _hex64, "not_after": _is_stamp}
    found = [Issued(**_checked(row, f"{where}.{i}", fields)) for i, row in enumerate(rows)]
    serials = [i.serial for i in found]
    if len(set(serials)) != len(serials):
        raise OutputError(f"{where}: lists a serial twice")
    return tuple(found)


def _revoked(row: Any, where: str) -> Revoked:
    fields: dict[str, Callable[[str], bool]] = {f.name: _text for f in dataclasses.fields(Revoked)}
    fields |= {"serial": _is_serial, "not_after": _is_stamp, "revoked_at": _is_stamp}
    revoked = Revoked(**_checked(row, where, fields))
    if parse_time(revoked.not_after) <= parse_time(revoked.revoked_at):
        raise OutputError(f"{where}.not_after: {revoked.not_after} is not after its revoked_at "
                          f"{revoked.revoked_at}: a certificate is revoked only while it is valid")
    return revoked


def _revoked_list(rows: list[Any], where: str) -> tuple[Revoked, ...]:
    found = tuple(_revoked(row, f"{where}.{i}") for i, row in enumerate(rows))
    if len({r.serial for r in found}) != len(found):
        raise OutputError(f"{where}: lists a serial twice")
    return found


def _hex64(text: str) -> bool:
    return bool(HEX64.fullmatch(text))


def _text(text: str) -> bool:
    return bool(_TEXT.fullmatch(text))


def _entry(row: Any, where: str) -> FileEntry:
    if not isinstance(row, dict):
        raise OutputError(f"{where}: must be an object")
    sha, size, mode = row.get("sha256"), row.get("size"), row.get("mode")
    if not (isinstance(sha, str) and HEX64.fullmatch(sha)):
        raise OutputError(f"{where}.sha256: must be 64 hex digits")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OutputError(f"{where}.size: must be a whole number")
    if not (isinstance(mode, str) and _MODE.fullmatch(mode)):
        raise OutputError(f"{where}.mode: must be an octal mode such as 0644")
    public = row.get("public_key_sha256")
    if public is not None and not (isinstance(public, str) and HEX64.fullmatch(public)):
        raise OutputError(f"{where}.public_key_sha256: must be 64 hex digits")
    epoch = row.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH):
        raise OutputError(f"{where}.epoch: must be a whole number of seconds from 0 to {MAX_EPOCH}")
    return FileEntry(sha256=sha, size=size, mode=int(mode, 8), public_key_sha256=public, epoch=epoch)


def _certificate(row: Any, where: str) -> CertificateRecord:
    # An early manifest may lack a field (format 1 had no fingerprint); it reads as empty.
    fields = [f.name for f in dataclasses.fields(CertificateRecord)]
    if not isinstance(row, dict) or not set(row) <= set(fields):
        raise OutputError(f"{where}: must be an object of {', '.join(fields)}")
    values: dict[str, Any] = {name: "" for name in fields}
    for name, value in row.items():
        if name == "sans":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise OutputError(f"{where}.sans: must be a list of names")
        elif not isinstance(value, str):
            raise OutputError(f"{where}.{name}: must be a string")
        values[name] = value
    return CertificateRecord(**{**values, "sans": tuple(values["sans"] or ())})


# An ISO 9660 directory record stores the year as one byte counted from 1900 (ECMA-119 9.1.5),
# so 2155-12-31T23:59:59Z is the last time an ISO can hold.
MAX_EPOCH = 5869583999
