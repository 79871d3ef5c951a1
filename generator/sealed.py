"""Sealed state: private keys encrypted with age, so a team can commit everything and rebuild anywhere."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from . import external, fs, hostkeys, layout
from .certs import public_key_sha256
from .errors import MaterialError
from .inputs import cluster_root, read_manifest, read_spec
from .layout import HEX64, MANIFEST, PKI, PUBLIC_MODE, SEALED_INDEX, SECRET_DIR_MODE, SECRET_MODE
from .manifest import Manifest

INDEX = layout.SEALED_INDEX_NAME  # which key each .age file holds, and for whom it was sealed
_RECIPIENT = re.compile(r"age1[0-9a-z]{58}")


@dataclass(frozen=True)
class SealResult:
    sealed: list[str]
    unchanged: list[str]


def recorded_keys(previous: Manifest) -> dict[str, str]:
    """The key files the manifest records, by name in the keys directory, with their public key sha256 ("" if
    format 1)."""
    return {layout.key_file_name(name): entry.public_key_sha256 or ""
            for path, entry in previous.files.items() if (name := layout.key_name(path)) is not None}


def seal(pki_dir: Path, recipients: Sequence[str], previous: Manifest) -> SealResult:
    """Encrypt every key the manifest records to `recipients`, as <name>.key.age.

    age output differs on every run, so a key is sealed again only when the key
    or the recipients changed: committed .age files stay put otherwise.

    Raises:
        MaterialError: a recipient is not an age public key, a key is missing, or age failed.
    """
    bad = [r for r in recipients if not _RECIPIENT.fullmatch(r)]
    if bad or not recipients:
        raise MaterialError(f"--recipient: {bad[0] if bad else 'none given'} is not an age public key (age1...)")
    index = read_index(pki_dir)
    result = SealResult([], [])
    for name in sorted(recorded_keys(previous)):
        data = fs.read_regular(pki_dir / name, fs.LIMITS["pem"], layout.pki_path(name))
        assert data is not None  # noqa: S101 - missing_ok is off
        want = {"key_sha256": hashlib.sha256(data).hexdigest(), "recipients": sorted(recipients)}
        target = pki_dir / layout.sealed_file(name)
        if index.get(name) == want and target.is_file():
            result.unchanged.append(target.name)
            continue
        fs.write_file(target, external.age_encrypt(data, recipients, layout.pki_path(name)), PUBLIC_MODE)
        index[name] = want
        result.sealed.append(target.name)
    write_index(pki_dir, index)
    return result


def unseal(pki_dir: Path, identity: Path, previous: Manifest) -> list[str]:
    """Decrypt each recorded key's <name>.key.age with an age identity file, as <name>.key (0600).

    A decrypted key must be the one manifest.json records (its public key), not merely
    the one sealed.json names: both files sit in the tree, and either may be edited.

    Raises:
        MaterialError: decryption failed, the result is not the recorded key,
            or a different key is already there (it is never replaced).
    """
    index = read_index(pki_dir)
    keys = recorded_keys(previous)
    if not keys:
        raise MaterialError(f"{pki_dir.parent / MANIFEST}: records no keys; nothing to unseal")
    fs.make_dirs(pki_dir.parent, {PKI: SECRET_DIR_MODE})
    restored, problems = [], []
    for name, public in sorted(keys.items()):
        sealed_path, copy = pki_dir / layout.sealed_file(name), layout.sealed_path(name)
        sealed = fs.read_regular(sealed_path, fs.LIMITS["pem"], copy, missing_ok=True)
        if sealed is None:
            problems.append(f"{copy}: missing; {name} was never sealed")
            continue
        data = external.age_decrypt(sealed, identity, str(sealed_path))
        recorded = index.get(name, {}).get("key_sha256")
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            problems.append(f"{copy}: decrypts to a key other than the one {INDEX} records")
            continue
        problem = _check_public(data, public, previous.files[layout.pki_path(name)].sha256)
        if problem:
            problems.append(f"{copy}: {problem}; refusing to restore it")
            continue
        existing = fs.read_regular(pki_dir / name, fs.LIMITS["pem"], layout.pki_path(name), missing_ok=True)
        if existing is not None and existing != data:
            problems.append(f"{pki_dir / name}: exists and differs from {sealed_path.name}; refusing to replace it")
            continue
        if fs.write_file(pki_dir / name, data, SECRET_MODE):
            restored.append(name)
    if problems:
        raise MaterialError(problems)
    return restored


def _check_public(data: bytes, public: str, file_sha256: str) -> str | None:
    if not public:  # a format-1 manifest: it recorded the key file's own sha256
        return None if hashlib.sha256(data).hexdigest() == file_sha256 else "differs from the key manifest.json records"
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            got = hostkeys.HostKey.from_pem(data).public_sha256
        else:
            got = public_key_sha256(serialization.load_pem_private_key(data, password=None))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return "does not decrypt to a private key"
    if got != public:
        return "holds a key whose public key differs from the one manifest.json records"
    return None


def read_index(pki_dir: Path) -> dict[str, Mapping[str, object]]:
    """The sealed index as it is on disk ({} when there is none)."""
    return parse_index(fs.read_optional(pki_dir / INDEX, SEALED_INDEX))


def write_index(pki_dir: Path, index: Mapping[str, Mapping[str, object]]) -> None:
    fs.write_file(pki_dir / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), PUBLIC_MODE)


def parse_index(data: bytes | None) -> dict[str, Mapping[str, object]]:
    """Which key each .age file holds, by key file name.

    Raises:
        MaterialError: not the shape `seal` writes.
    """
    if data is None:
        return {}
    try:
        index = json.loads(data)
    except (ValueError, RecursionError):
        raise MaterialError(f"{SEALED_INDEX}: not valid JSON") from None
    if not isinstance(index, dict):
        raise MaterialError(f"{SEALED_INDEX}: must be a JSON object")
    for name, entry in index.items():
        where = f"{SEALED_INDEX}: {name}"
        if not layout.is_key(layout.pki_path(str(name))) or not isinstance(entry, dict):
            raise MaterialError(f"{where}: must name a key file and map to an object")
        sha, recipients = entry.get("key_sha256"), entry.get("recipients")
        if not (isinstance(sha, str) and HEX64.fullmatch(sha)):
            raise MaterialError(f"{where}.key_sha256: must be 64 hex digits")
        if not (isinstance(recipients, list) and all(isinstance(r, str) for r in recipients)):
            raise MaterialError(f"{where}.recipients: must be a list of age recipients")
    return index


def _cluster(spec_path: Path, out: Path) -> tuple[Path, Manifest]:
    """output/<cluster>/ and its manifest, which must exist: only keys it records are sealed or restored."""
    spec, _ = read_spec(spec_path)
    root = cluster_root(out, spec)
    previous = read_manifest(root)
    if not previous.files:
        raise MaterialError(f"{root / MANIFEST}: missing; run a build first (or clone the cluster's repository)")
    return root, previous


def seal_cluster(spec_path: Path, out: Path, recipients: Sequence[str]) -> tuple[Path, SealResult]:
    """`seal` for the cluster spec_path defines, under the tree's lock: the keys directory and what was sealed."""
    root, previous = _cluster(spec_path, out)
    with fs.locked(root, exclusive=True):
        return root / PKI, seal(root / PKI, recipients, previous)


def unseal_cluster(spec_path: Path, out: Path, identity: Path) -> tuple[Path, list[str]]:
    """`unseal` for the cluster spec_path defines, under the tree's lock: the keys directory and the keys
    restored."""
    root, previous = _cluster(spec_path, out)
    with fs.locked(root, exclusive=True):
        return root / PKI, unseal(root / PKI, identity, previous)
