"""Build: the use case. Inputs are read, a plan is made in memory, and only then is the plan applied."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path

import jinja2
from cryptography import x509

from . import etcd, fs, manifest
from .errors import MaterialError, OutputError
from .etcd import Bundle
from .iso import SeedEntry, build_iso
from .manifest import HEX64, FileEntry, Manifest
from .pki import CA_NAME, KeyRecords, PkiState, build_pki
from .render import NODE_FILES, SEED_ISO, NodePem, render_etcdctl_env, render_node
from .spec import Spec

# Kept beside the generated tree so that `git add output/<cluster>` can never pick up a secret.
GITIGNORE = f"""\
# Secrets: private keys, and the files that embed them. Review user-data.redacted instead.
*.key
*/user-data
*/seed.iso
# Temporary files of a run that was killed; the next run removes them.
{fs.TEMP_PREFIX}*
"""
JOURNAL = "pki/pending.json"  # the new keys of a run in progress; gone when the run completes
_JOURNAL_NAME = re.compile(r"[a-z0-9-]{1,63}")


class FileStatus(StrEnum):
    """What a build does, or would do, to one file."""

    CREATE = "create"
    UPDATE = "update"
    MODE = "mode"  # permissions only
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Inputs:
    """Everything a build reads: the bundle, an imported CA, and the output tree as it is."""

    bundle: Bundle
    imported: tuple[bytes, bytes] | None
    pki_files: Mapping[str, bytes]
    previous: Manifest
    pending: Mapping[str, str]
    disk: Mapping[str, fs.OnDisk]


@dataclass(frozen=True)
class PlannedFile:
    """One file of output/<cluster>/: what it will hold, and what the build does to it."""

    path: str
    mode: int
    sha256: str
    size: int
    status: FileStatus
    make: Callable[[], bytes]
    public_key_sha256: str | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build would write, computed in memory: nothing has touched the disk yet."""

    spec: Spec
    pki: PkiState
    files: list[PlannedFile]
    manifest_bytes: bytes
    manifest_status: FileStatus
    new_keys: dict[str, str] = field(default_factory=dict)  # name -> public key sha256, for the journal
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reseed: list[str] = field(default_factory=list)  # nodes whose seed changed, in rolling order

    @property
    def changed(self) -> list[PlannedFile]:
        return [f for f in self.files if f.status is not FileStatus.UNCHANGED]


@dataclass(frozen=True)
class Sources:
    """The inputs that live outside the output tree: the etcd tarball and an imported CA."""

    bundle: Bundle
    imported: tuple[bytes, bytes] | None


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
    try:
        imported = _load_imported_ca(spec)
    except MaterialError as exc:
        problems += exc.messages
    if problems or bundle is None:
        raise MaterialError(problems, hint="; ".join(hints) or None)
    return Sources(bundle, imported)


def load_inputs(spec: Spec, root: Path, sources: Sources | None = None) -> Inputs:
    """Read the sources (unless given) and the cluster's output tree as it is now.

    Raises:
        MaterialError, OutputError: naming the field or file.
    """
    previous = manifest.parse_manifest(fs.read_optional(root / manifest.NAME, manifest.NAME))
    sources = sources or load_sources(spec, previous.bundle_sha256)
    return Inputs(bundle=sources.bundle, imported=sources.imported, pki_files=fs.load_pki_dir(root / "pki"),
                  previous=previous, pending=parse_journal(fs.read_optional(root / JOURNAL, JOURNAL)),
                  disk=fs.scan(root)[0])


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
    problem = None if digest == checked else etcd.check_release_tarball(data, cfg.version)
    if problem:
        raise MaterialError(f"etcd.bundle: {cfg.bundle} {problem}")
    return Bundle(name=cfg.tarball_name, sha256=digest, data=data)


def _load_imported_ca(spec: Spec) -> tuple[bytes, bytes] | None:
    if spec.pki.ca is None:
        return None
    cert = fs.read_regular(spec.pki.ca.cert, fs.LIMITS["pem"], "pki.ca.cert")
    key = fs.read_regular(spec.pki.ca.key, fs.LIMITS["pem"], "pki.ca.key")
    assert cert is not None and key is not None  # noqa: S101 - missing_ok is off
    return cert, key


def parse_journal(data: bytes | None) -> dict[str, str]:
    """The keys an interrupted run was putting in place, by name."""
    if data is None:
        return {}
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise OutputError(f"{JOURNAL}: not valid JSON; an interrupted run left it damaged",
                          hint=f"check pki/ by hand, then remove {JOURNAL}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, dict) or not all(
            isinstance(k, str) and _JOURNAL_NAME.fullmatch(k) and isinstance(v, str) and HEX64.fullmatch(v)
            for k, v in keys.items()):
        raise OutputError(f"{JOURNAL}: keys: must map names to 64 hex digits",
                          hint=f"check pki/ by hand, then remove {JOURNAL}")
    return dict(keys)


def key_records(previous: Manifest, pending: Mapping[str, str]) -> KeyRecords:
    """What the previous manifest (and an interrupted run's journal) say each key is."""
    recorded, file_sha = {}, {}
    for path, entry in previous.files.items():
        if path.startswith("pki/") and path.endswith(".key") and path.count("/") == 1:
            name = path[len("pki/"):-len(".key")]
            file_sha[name] = entry.sha256
            if entry.public_key_sha256 is not None:
                recorded[name] = entry.public_key_sha256
    return KeyRecords(recorded=recorded, pending=dict(pending), legacy_file_sha256=file_sha,
                      legacy=previous.format == 1, ca_recorded="pki/ca.crt" in previous.files)


def plan_build(spec: Spec, inputs: Inputs, env: jinja2.Environment, now: dt.datetime, epoch: int | None,
               rekey: frozenset[str] = frozenset(), renew: bool = False, allow_downgrade: bool = False) -> BuildPlan:
    """Decide every file of output/<cluster>/ and what to do to each, without writing.

    Args:
        spec: the validated cluster definition.
        inputs: from load_inputs.
        env: from render.make_environment().
        now: the time certificates are issued at.
        epoch: pins ISO dates; None uses each node certificate's notBefore.
        rekey: leaf names whose keys the operator asked to replace.
        renew: reissue every leaf certificate now, keeping the keys.
        allow_downgrade: accept one minor version down, to roll back an unfinished upgrade.

    Raises:
        GeneratorError: any problem with the PKI, the templates or the ISO, or a version change etcd refuses.
    """
    previous_version = inputs.previous.etcd_version
    change, refusal = etcd.version_change(previous_version, spec.etcd.version, allow_downgrade)
    if refusal:
        raise MaterialError(f"etcd.version: {refusal}")
    if epoch is not None and not 0 <= epoch <= manifest.MAX_EPOCH:
        raise MaterialError(f"SOURCE_DATE_EPOCH: {epoch} is outside 0..{manifest.MAX_EPOCH}, the range an "
                            "ISO 9660 date can hold")
    pki = build_pki(spec, inputs.pki_files, inputs.imported, now, key_records(inputs.previous, inputs.pending),
                    rekey, renew)
    public_keys = pki.public_keys()
    rows: list[tuple[str, int, Callable[[], bytes], str | None, int | None]] = [
        (".gitignore", fs.PUBLIC_MODE, _const(GITIGNORE.encode()), None, None)]
    if not pki.ca_imported:
        rows.append(("pki/ca.key", fs.SECRET_MODE, _const(pki.ca.key_pem), public_keys[CA_NAME], None))
    rows.append(("pki/ca.crt", fs.PUBLIC_MODE, _const(pki.ca.cert_pem), None, None))
    for name, credential in pki.leaves.items():
        rows.append((f"pki/{name}.key", fs.SECRET_MODE, _const(credential.key_pem), public_keys[name], None))
        rows.append((f"pki/{name}.crt", fs.PUBLIC_MODE, _const(credential.chain_pem), None, None))
    rows.append(("pki/etcdctl.env", fs.PUBLIC_MODE, _const(render_etcdctl_env(env, spec).encode()), None, None))
    for node in spec.nodes:
        credential = pki.leaves[node.name]
        seed = render_node(env, spec, node, NodePem(pki.ca.cert_pem, credential.chain_pem, credential.key_pem),
                           inputs.bundle.sha256)
        iso_epoch = epoch if epoch is not None else int(credential.cert.not_valid_before_utc.timestamp())
        for node_file in NODE_FILES:
            mode = fs.SECRET_MODE if node_file.secret else fs.PUBLIC_MODE
            if node_file.name == SEED_ISO:
                entries = seed_entries(seed.texts, inputs.bundle)
                rows.append((f"{node.name}/{SEED_ISO}", mode, partial(build_iso, entries, iso_epoch), None, iso_epoch))
            else:
                rows.append((f"{node.name}/{node_file.name}", mode,
                             _const(seed.texts[node_file.name].encode()), None, None))
    files = [_plan_file(path, mode, make, inputs.disk.get(path), public, iso_epoch)
             for path, mode, make, public, iso_epoch in rows]
    new_keys = {f.path.removeprefix("pki/").removesuffix(".key"): f.public_key_sha256 for f in files
                if f.public_key_sha256 and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    manifest_bytes = manifest.render_manifest(
        spec.name, spec.etcd.version,
        {"name": inputs.bundle.name, "sha256": inputs.bundle.sha256,
         "source": spec.etcd.url or (spec.etcd.bundle.name if spec.etcd.bundle else None)},
        {f.path: FileEntry(f.sha256, f.size, f.mode, f.public_key_sha256, f.epoch) for f in files},
        certificates(pki))
    current = inputs.disk.get(manifest.NAME)
    manifest_status = FileStatus.CREATE if current is None else FileStatus.UNCHANGED \
        if current.sha256 == hashlib.sha256(manifest_bytes).hexdigest() and current.mode == fs.PUBLIC_MODE \
        else FileStatus.UPDATE
    notes = [f"{node.name} joins a running cluster: before it boots, run (as above) etcdctl member add "
             f"{node.name} --peer-urls={etcd.peer_url(node)}" for node in spec.nodes if node.join]
    new_seeds = {f.path.split("/")[0] for f in files
                 if f.path.endswith(f"/{SEED_ISO}") and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    # Only a running cluster (one built before) is rolled; a joining node boots for the first time.
    reseed = [node.name for node in spec.nodes
              if inputs.previous.files and not node.join and node.name in new_seeds]
    if change:
        notes.append(change)
    if reseed:
        notes.append(rolling_order(reseed))
    floor = etcd.upgrade_floor_warning(previous_version, spec.etcd.version)
    return BuildPlan(spec=spec, pki=pki, files=files, manifest_bytes=manifest_bytes,
                     manifest_status=manifest_status, new_keys=new_keys,
                     notes=notes, warnings=[floor] if floor else [], reseed=reseed)


def rolling_order(names: list[str]) -> str:
    """What the operator does with changed seeds of a running cluster, one node at a time."""
    steps = "; ".join(f"{i}. {name}" for i, name in enumerate(names, 1))
    return (f"roll the changed seeds one node at a time: attach the node's new seed.iso and reboot it, then "
            f"wait until 'etcdctl endpoint health' reports that member healthy before the next ({steps}); "
            "take the leader last ('etcdctl endpoint status -w table' shows IS LEADER)")


def certificates(pki: PkiState) -> dict[str, x509.Certificate]:
    """Each .crt file's leaf (or CA) certificate, by path, for the manifest."""
    return {"pki/ca.crt": pki.ca.cert, **{f"pki/{name}.crt": c.cert for name, c in pki.leaves.items()}}


def seed_entries(texts: Mapping[str, str], bundle: Bundle) -> list[SeedEntry]:
    """What goes on a node's seed ISO, in the NODE_FILES order, then the tarball."""
    entries = [SeedEntry(f.name, texts[f.name].encode()) for f in NODE_FILES if f.on_iso]
    if bundle.data is not None:
        entries.append(SeedEntry(bundle.name, bundle.data))
    return entries


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _plan_file(path: str, mode: int, make: Callable[[], bytes], current: fs.OnDisk | None,
               public_key_sha256: str | None, epoch: int | None) -> PlannedFile:
    # Every file is made and compared with what is on disk, ISOs included: a seed that
    # was changed by hand (an extra vendor-data, another label) is rebuilt, whatever the
    # manifest says. An ISO's bytes are dropped here and made again only if written.
    data = make()
    sha = hashlib.sha256(data).hexdigest()
    if current is None:
        status = FileStatus.CREATE
    elif current.sha256 != sha:
        status = FileStatus.UPDATE
    else:
        status = FileStatus.UNCHANGED if current.mode == mode else FileStatus.MODE
    kept = make if path.endswith(SEED_ISO) else _const(data)
    return PlannedFile(path, mode, sha, len(data), status, kept, public_key_sha256, epoch)


def _write_order(path: str) -> int:
    # Keys before certificates, the CA key first: a run killed in between leaves a key
    # without its certificate, which the next run completes, never the other way round.
    if path == "pki/ca.key":
        return 0
    if path.endswith(".key"):
        return 1
    return 2 if path.startswith("pki/") else 3


def apply_plan(root: Path, plan: BuildPlan) -> list[str]:
    """Write what the plan changes under root, which the caller holds locked.

    Returns:
        Stale temporary files of an earlier, killed run that were removed.
    """
    removed = fs.remove_stale_temps(root)
    fs.make_dirs(root, {"pki": fs.SECRET_DIR_MODE,
                        **{node.name: fs.PUBLIC_DIR_MODE for node in plan.spec.nodes}})
    writes = [fs.Write(f.path, f.mode, f.make)
              for f in sorted(plan.changed, key=lambda f: _write_order(f.path))
              if f.status is not FileStatus.MODE]
    for f in plan.changed:
        if f.status is FileStatus.MODE:
            fs.chmod(root / f.path, f.mode)
    if plan.manifest_status is not FileStatus.UNCHANGED:
        writes.append(fs.Write(manifest.NAME, fs.PUBLIC_MODE, _const(plan.manifest_bytes)))
    journal = None
    if plan.new_keys:
        journal_bytes = (json.dumps({"keys": plan.new_keys}, indent=2, sort_keys=True) + "\n").encode()
        journal = fs.Write(JOURNAL, fs.PUBLIC_MODE, _const(journal_bytes))
    fs.stage_and_commit(root, writes, journal)
    fs.remove(root / JOURNAL)
    return removed
