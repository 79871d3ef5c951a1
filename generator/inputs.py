"""Inputs: what a run reads from outside the output tree (the spec, the etcd tarball, an imported CA, a
restore snapshot) and the tree's manifest, each checked before anything is made from it."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from . import etcd, fs, layout, manifest
from .errors import MaterialError
from .etcd import Bundle
from .loader import load_spec
from .manifest import Manifest
from .spec import CASource, Spec


@dataclass(frozen=True)
class Snapshot:
    """The etcd snapshot a restore carries on every seed."""

    sha256: str
    data: bytes


@dataclass(frozen=True)
class Sources:
    """The inputs that live outside the output tree: the etcd tarball, an imported CA, a snapshot."""

    bundle: Bundle
    imported: tuple[bytes, bytes] | None
    snapshot: Snapshot | None = None
    imported_next: tuple[bytes, bytes] | None = None


def read_spec(spec_path: Path) -> tuple[Spec, list[str]]:
    """The validated spec, and its warnings."""
    spec, warnings, _ = read_spec_source(spec_path)
    return spec, warnings


def read_spec_source(spec_path: Path) -> tuple[Spec, list[str], str]:
    """The validated spec, its warnings, and the sha256 of the text it was read from."""
    text = fs.read_spec_text(spec_path)
    spec, warnings = load_spec(text, base_dir=spec_path.parent, source=str(spec_path))
    return spec, warnings, hashlib.sha256(text.encode()).hexdigest()


def cluster_root(out: Path, spec: Spec) -> Path:
    """output/<cluster>/.

    Raises:
        MaterialError: --out is not a directory.
    """
    if out.exists() and not out.is_dir():
        raise MaterialError(f"--out: {out} is not a directory")
    return out / spec.name


def source_date_epoch(value: str | None) -> int | None:
    """SOURCE_DATE_EPOCH, which pins every ISO's dates, as seconds; None when unset."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", value):
        raise MaterialError(f"SOURCE_DATE_EPOCH: {value!r} is not a whole number of seconds")
    return int(value)


def now() -> dt.datetime:
    """The time certificates are issued at: this second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def input_files(spec: Spec) -> list[Path]:
    """The files besides the spec that a build reads from outside the output tree."""
    paths = [spec.etcd.bundle] if spec.etcd.bundle else []
    for source in (spec.pki.ca, spec.pki.ca_next):
        if source is not None:
            paths += [source.cert, source.key]
    if spec.etcd.restore is not None:
        paths.append(spec.etcd.restore.snapshot)
    return paths


def read_manifest(root: Path) -> Manifest:
    return manifest.parse_manifest(fs.read_optional(root / layout.MANIFEST, layout.MANIFEST))


def load_sources(spec: Spec, checked: str | None = None) -> Sources:
    """Read the bundle and any imported CA, reporting every problem of both at once.

    `checked` is the sha256 of a tarball an earlier build already listed.

    Raises:
        MaterialError: naming each field.
    """
    problems: list[str] = []
    hints: list[str] = []
    bundle = imported = None
    try:
        bundle = load_bundle(spec, checked)
    except MaterialError as exc:
        problems += exc.messages
        hints += [exc.hint] if exc.hint else []
    imported = imported_next = None
    try:
        imported = _load_imported_ca(spec.pki.ca, "pki.ca")
    except MaterialError as exc:
        problems += exc.messages
    try:
        imported_next = _load_imported_ca(spec.pki.ca_next, "pki.ca_next")
    except MaterialError as exc:
        problems += exc.messages
    snapshot = None
    try:
        snapshot = load_snapshot(spec)
    except MaterialError as exc:
        problems += exc.messages
    if problems or bundle is None:
        raise MaterialError(problems, hint="; ".join(hints) or None)
    return Sources(bundle, imported, snapshot, imported_next)


def load_snapshot(spec: Spec) -> Snapshot | None:
    """Read and check etcd.restore.snapshot: a whole etcd snapshot, as `etcdctl snapshot save` writes it.

    Raises:
        MaterialError: naming etcd.restore.snapshot.
    """
    if spec.etcd.restore is None:
        return None
    path = spec.etcd.restore.snapshot
    data = fs.read_regular(path, fs.LIMITS["snapshot"], "etcd.restore.snapshot", missing_ok=True)
    if data is None:
        raise MaterialError(f"etcd.restore.snapshot: {path} does not exist")
    problem = etcd.check_snapshot(data)
    if problem:
        raise MaterialError(f"etcd.restore.snapshot: {path} {problem}")
    return Snapshot(hashlib.sha256(data).hexdigest(), data)


def load_bundle(spec: Spec, checked: str | None = None) -> Bundle:
    """Read and check the etcd tarball: it exists, matches etcd.sha256, holds etcd and etcdctl.

    `checked` is the sha256 of a tarball whose contents an earlier build already
    checked (from its manifest); listing a tarball means decompressing all of it.
    """
    cfg = spec.etcd
    if cfg.bundle is None:
        assert cfg.sha256 is not None  # noqa: S101 - the spec requires it with url
        return Bundle(name=cfg.tarball_name, sha256=cfg.sha256, data=None)
    data = fs.read_regular(cfg.bundle, fs.LIMITS["bundle"], "etcd.bundle", missing_ok=True)
    if data is None:
        raise MaterialError(f"etcd.bundle: {cfg.bundle} does not exist",
                            hint="'make bundle' builds the example's tarball")
    digest = hashlib.sha256(data).hexdigest()
    if cfg.sha256 is not None and digest != cfg.sha256:
        raise MaterialError(f"etcd.bundle: {cfg.bundle} has sha256 {digest}, but etcd.sha256 is {cfg.sha256}")
    problem = None if digest == checked else etcd.check_release_tarball(data, spec.etcd.release)
    if problem:
        raise MaterialError(f"etcd.bundle: {cfg.bundle} {problem}")
    return Bundle(name=cfg.tarball_name, sha256=digest, data=data)


def _load_imported_ca(source: CASource | None, field: str) -> tuple[bytes, bytes] | None:
    if source is None:
        return None
    cert = fs.read_regular(source.cert, fs.LIMITS["pem"], f"{field}.cert")
    key = fs.read_regular(source.key, fs.LIMITS["pem"], f"{field}.key")
    assert cert is not None and key is not None  # noqa: S101 - missing_ok is off
    return cert, key
