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
from typing import BinaryIO

import jinja2
from cryptography import x509

from . import etcd, fastpath, fs, hostkeys, manifest, rotation, sealed
from .errors import MaterialError, OutputError
from .etcd import Bundle
from .iso import SeedEntry, iso_digest, write_iso
from .manifest import HEX64, FileEntry, Manifest
from .pki import CA_NAME, CaInputs, KeyRecords, PkiState, build_pki, cert_fingerprint
from .render import (
    NODE_FILES,
    RESTORE_ON_SEED,
    SEED_ISO,
    NodePem,
    client_file,
    render_client,
    render_etcdctl_env,
    render_node,
)
from .rotation import Phase, Rotation
from .spec import CASource, Spec

# Kept beside the generated tree so that `git add output/<cluster>` can never pick up a secret.
GITIGNORE = f"""\
# Secrets: private keys, and the files that embed them. Review user-data.redacted instead.
*.key
*/user-data
*/seed.iso
# Temporary files of a run that was killed; the next run removes them.
{fs.TEMP_PREFIX}*
# What the last run that changed nothing found, so that the next one can skip its work.
{fastpath.NAME}
"""
JOURNAL = "pki/pending.json"  # the new keys of a run in progress; gone when the run completes
_JOURNAL_NAME = re.compile(r"[a-z0-9-]{1,63}(\.ssh)?")  # a leaf or CA, or a node's host key


class FileStatus(StrEnum):
    """What a build does, or would do, to one file."""

    CREATE = "create"
    UPDATE = "update"
    MODE = "mode"  # permissions only
    UNCHANGED = "unchanged"
    DELETE = "delete"


# Files a build deletes once it no longer writes them: a finished CA rotation's old CA and bundle
# (and the sealed copy of a key it deletes). Nothing else is ever deleted by a build.
DELETABLE = frozenset({f"pki/{rotation.NEXT}.crt", f"pki/{rotation.NEXT}.key", rotation.BUNDLE, "pki/ca.key"})


@dataclass(frozen=True)
class Snapshot:
    """The etcd snapshot a restore carries on every seed."""

    sha256: str
    data: bytes


@dataclass(frozen=True)
class Inputs:
    """Everything a build reads: the bundle, an imported CA, and the output tree as it is."""

    bundle: Bundle
    imported: tuple[bytes, bytes] | None
    pki_files: Mapping[str, bytes]
    previous: Manifest
    pending: Mapping[str, str]
    disk: Mapping[str, fs.OnDisk]
    snapshot: Snapshot | None = None
    imported_next: tuple[bytes, bytes] | None = None
    rotation: Rotation = field(default_factory=Rotation)
    sealed_index: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # pki/sealed.json


@dataclass(frozen=True)
class PlannedFile:
    """One file of output/<cluster>/: what it will hold, and what the build does to it."""

    path: str
    mode: int
    sha256: str
    size: int
    status: FileStatus
    make: Callable[[], bytes] | Callable[[BinaryIO], None]
    public_key_sha256: str | None = None
    epoch: int | None = None
    streamed: bool = False  # make writes into a file (a seed ISO) instead of returning bytes


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
    deletes: list[str] = field(default_factory=list)  # paths under output/<cluster>/, from DELETABLE
    # Sealed copies that follow their key to a new name (pki/ca-next.key.age -> pki/ca.key.age at the end
    # of a CA rotation), as key file names under pki/.
    sealed_moves: list[tuple[str, str]] = field(default_factory=list)
    step: str | None = None  # the rotation step taken, for the journal

    @property
    def changed(self) -> list[PlannedFile]:
        return [f for f in self.files if f.status is not FileStatus.UNCHANGED]


@dataclass(frozen=True)
class Sources:
    """The inputs that live outside the output tree: the etcd tarball, an imported CA, a snapshot."""

    bundle: Bundle
    imported: tuple[bytes, bytes] | None
    snapshot: Snapshot | None = None
    imported_next: tuple[bytes, bytes] | None = None


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


def load_inputs(spec: Spec, root: Path, sources: Sources | None = None) -> Inputs:
    """Read the sources (unless given) and the cluster's output tree as it is now.

    Raises:
        MaterialError, OutputError: naming the field or file.
    """
    previous = manifest.parse_manifest(fs.read_optional(root / manifest.NAME, manifest.NAME))
    sources = sources or load_sources(spec, previous.bundle_sha256)
    listed = previous.files.get(rotation.NAME)
    current = rotation.parse(fs.read_optional(root / rotation.NAME, rotation.NAME), listed.sha256 if listed else None)
    return Inputs(bundle=sources.bundle, imported=sources.imported, pki_files=fs.load_pki_dir(root / "pki"),
                  previous=previous, pending=parse_journal(fs.read_optional(root / JOURNAL, JOURNAL)),
                  disk=fs.scan(root)[0], snapshot=sources.snapshot, imported_next=sources.imported_next,
                  rotation=current, sealed_index=sealed.read_index(root / "pki"))


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


def _load_imported_ca(source: CASource | None, field: str) -> tuple[bytes, bytes] | None:
    if source is None:
        return None
    cert = fs.read_regular(source.cert, fs.LIMITS["pem"], f"{field}.cert")
    key = fs.read_regular(source.key, fs.LIMITS["pem"], f"{field}.key")
    assert cert is not None and key is not None  # noqa: S101 - missing_ok is off
    return cert, key


def _journal_document(data: bytes | None) -> dict[str, object] | None:
    if data is None:
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise OutputError(f"{JOURNAL}: not valid JSON; an interrupted run left it damaged",
                          hint=f"check pki/ by hand, then remove {JOURNAL}") from None
    if not isinstance(document, dict):
        raise OutputError(f"{JOURNAL}: must be a JSON object", hint=f"check pki/ by hand, then remove {JOURNAL}")
    return document


def parse_journal(data: bytes | None) -> dict[str, str]:
    """The keys an interrupted run was putting in place, by name.

    Raises:
        OutputError: damaged, or a run whose renames only a build may complete (plan reads, never writes).
    """
    document = _journal_document(data)
    if document is None:
        return {}
    if "renames" in document:
        raise OutputError(f"{JOURNAL}: a build was interrupted; run it (or the same rotate-ca step) again to "
                          "complete it")
    keys = document.get("keys")
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
               rekey: frozenset[str] = frozenset(), renew: bool = False, allow_downgrade: bool = False,
               rotate: str | None = None) -> BuildPlan:
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
        rotate: a CA rotation step (begin, issue, finish) to take; see rotation.py.

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
    if spec.etcd.restore is not None:
        assert inputs.snapshot is not None  # noqa: S101 - load_sources reads it with the spec
        spec = spec.with_snapshot(inputs.snapshot.sha256)
    records = key_records(inputs.previous, inputs.pending)
    replacing = _replacing(spec, inputs.previous, records)
    phase = rotation.target(inputs.rotation, rotate)
    pki = build_pki(spec, inputs.pki_files, inputs.imported, now, records, rekey, renew, replacing,
                    CaInputs(inputs.imported, inputs.imported_next, inputs.rotation, phase))
    host_keys = hostkeys.host_keys(spec, inputs.pki_files, records, replacing, pki.events)
    state = _rotation_state(inputs.rotation, phase, pki)
    public_keys = pki.public_keys()
    rows: list[tuple[str, int, Callable[[], bytes] | list[SeedEntry], str | None, int | None]] = [
        (".gitignore", fs.PUBLIC_MODE, _const(GITIGNORE.encode()), None, None)]
    if not pki.ca_imported:
        rows.append(("pki/ca.key", fs.SECRET_MODE, _const(pki.ca.key_pem), public_keys[CA_NAME], None))
    rows.append(("pki/ca.crt", fs.PUBLIC_MODE, _const(pki.ca.cert_pem), None, None))
    ca_file = "ca.crt"
    if pki.next_ca is not None:
        if not pki.next_imported:
            rows.append((f"pki/{rotation.NEXT}.key", fs.SECRET_MODE, _const(pki.next_ca.key_pem),
                         public_keys[rotation.NEXT], None))
        rows.append((f"pki/{rotation.NEXT}.crt", fs.PUBLIC_MODE, _const(pki.next_ca.cert_pem), None, None))
        rows.append((rotation.BUNDLE, fs.PUBLIC_MODE, _const(pki.trust_pem), None, None))
        ca_file = rotation.BUNDLE.removeprefix("pki/")
    if state.phase is not Phase.NONE:
        rows.append((rotation.NAME, fs.PUBLIC_MODE, _const(rotation.render(state)), None, None))
    for name, credential in pki.leaves.items():
        rows.append((f"pki/{name}.key", fs.SECRET_MODE, _const(credential.key_pem), public_keys[name], None))
        rows.append((f"pki/{name}.crt", fs.PUBLIC_MODE, _const(credential.chain_pem), None, None))
    for node in spec.nodes:
        host = host_keys[node.name]
        rows.append((f"pki/{hostkeys.record_name(node.name)}.key", fs.SECRET_MODE, _const(host.private_pem),
                     host.public_sha256, None))
    rows.append(("pki/etcdctl.env", fs.PUBLIC_MODE, _const(render_etcdctl_env(env, spec, ca_file).encode()), None,
                 None))
    for client in spec.clients:
        rows.append((client_file(client), fs.PUBLIC_MODE, _const(render_client(env, spec, client, ca_file).encode()),
                     None, None))
    known = hostkeys.known_hosts(spec, {name: host.public_line for name, host in host_keys.items()})
    rows.append((hostkeys.KNOWN_HOSTS, fs.PUBLIC_MODE, _const(known.encode()), None, None))
    for node in spec.nodes:
        credential, host = pki.leaves[node.name], host_keys[node.name]
        seed = render_node(env, spec, node, NodePem(pki.trust_pem, credential.chain_pem, credential.key_pem,
                                                    host.private_pem, host.public_line), inputs.bundle.sha256)
        iso_epoch = epoch if epoch is not None else int(credential.cert.not_valid_before_utc.timestamp())
        for node_file in NODE_FILES:
            mode = fs.SECRET_MODE if node_file.secret else fs.PUBLIC_MODE
            if node_file.name == SEED_ISO:
                entries = seed_entries(seed.texts, inputs.bundle, inputs.snapshot)
                rows.append((f"{node.name}/{SEED_ISO}", mode, entries, None, iso_epoch))
            else:
                rows.append((f"{node.name}/{node_file.name}", mode,
                             _const(seed.texts[node_file.name].encode()), None, None))
    files = [_plan_file(path, mode, make, inputs.disk.get(path), public, iso_epoch)
             for path, mode, make, public, iso_epoch in rows]
    planned = {f.path for f in files}
    sealed_moves, sealed_warnings = _sealed_moves(pki, inputs)
    moved = {f"pki/{source}.age" for source, _ in sealed_moves}
    deletes = sorted(p for p in DELETABLE - planned if p in inputs.disk)
    deletes += [f"{p}.age" for p in sorted(DELETABLE - planned) if p.endswith(".key") and f"{p}.age" in inputs.disk
                and f"{p}.age" not in moved]
    new_keys = {f.path.removeprefix("pki/").removesuffix(".key"): f.public_key_sha256 for f in files
                if f.public_key_sha256 and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    manifest_bytes = manifest.render_manifest(
        spec.name, spec.etcd.version,
        {"name": inputs.bundle.name, "sha256": inputs.bundle.sha256,
         "source": spec.etcd.url or (spec.etcd.bundle.name if spec.etcd.bundle else None)},
        {f.path: FileEntry(f.sha256, f.size, f.mode, f.public_key_sha256, f.epoch) for f in files},
        certificates(pki),
        replaced={n.name: public_keys[n.name] for n in spec.nodes if n.replace},
        restore={"sha256": inputs.snapshot.sha256, "size": len(inputs.snapshot.data)} if inputs.snapshot else None)
    current = inputs.disk.get(manifest.NAME)
    manifest_status = FileStatus.CREATE if current is None else FileStatus.UNCHANGED \
        if current.sha256 == hashlib.sha256(manifest_bytes).hexdigest() and current.mode == fs.PUBLIC_MODE \
        else FileStatus.UPDATE
    notes = membership_notes(spec, inputs.previous, replacing)
    new_seeds = {f.path.split("/")[0] for f in files
                 if f.path.endswith(f"/{SEED_ISO}") and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    # Only members of a running cluster (built before) are rolled; a joining or replaced node boots afresh.
    built = previous_nodes(inputs.previous)
    afresh = replacing | {n.name for n in spec.nodes if n.join and n.name not in built}
    reseed = [node.name for node in spec.nodes
              if node.name in built and node.name not in afresh and node.name in new_seeds]
    warnings = [f"nodes.{i}.replace: {node.name} was replaced by an earlier build (its new key is in place); "
                "remove 'replace: true' from the spec" for i, node in enumerate(spec.nodes)
                if node.replace and node.name not in replacing]
    if change:
        notes.append(change)
    if reseed:
        notes.append(rolling_order(reseed))
    rotation_note = rotation.note(phase, phase is not inputs.rotation.phase)
    if rotation_note:
        notes.append(rotation_note)
    floor = etcd.upgrade_floor_warning(previous_version, spec.etcd.version)
    return BuildPlan(spec=spec, pki=pki, files=files, manifest_bytes=manifest_bytes,
                     manifest_status=manifest_status, new_keys=new_keys,
                     notes=notes, warnings=warnings + sealed_warnings + ([floor] if floor else []), reseed=reseed,
                     deletes=deletes, sealed_moves=sealed_moves, step=rotate)


def _sealed_moves(pki: PkiState, inputs: Inputs) -> tuple[list[tuple[str, str]], list[str]]:
    """When rotate-ca finish makes the next CA's key pki/ca.key, its sealed copy becomes pki/ca.key.age (a second
    operator's unseal must get the CA key in use); a sealed CA key that is not the one in use is named."""
    if pki.ca_imported or not inputs.sealed_index:
        return [], []
    want = hashlib.sha256(pki.ca.key_pem).hexdigest()
    index = inputs.sealed_index
    sealed_as = {name: entry.get("key_sha256") for name, entry in index.items()}
    if sealed_as.get(f"{CA_NAME}.key") == want:
        return [], []
    source = f"{rotation.NEXT}.key"
    if sealed_as.get(source) == want and f"pki/{source}.age" in inputs.disk:
        return [(source, f"{CA_NAME}.key")], []
    if f"pki/{CA_NAME}.key.age" in inputs.disk:
        return [], [f"pki/{CA_NAME}.key.age: holds a CA key other than the one in use (sealed before a CA "
                    "rotation?); run seal again so that unseal restores the CA key in use"]
    return [], []


def _rotation_state(current: Rotation, phase: Phase, pki: PkiState) -> Rotation:
    """pki/rotation.json after this build: what it was, or the step just taken."""
    if phase is current.phase:
        return current
    if phase is Phase.TRUST_BOTH:
        assert pki.next_ca is not None  # noqa: S101 - build_pki made or imported it
        return Rotation(phase, cert_fingerprint(pki.ca.cert), cert_fingerprint(pki.next_ca.cert))
    return Rotation(phase, current.old_ca, current.new_ca)


def _replacing(spec: Spec, previous: Manifest, records: KeyRecords) -> frozenset[str]:
    """The nodes marked replace that this build replaces: those whose replacement key is not in place yet.

    The manifest records the key each replacement was given, so the marker is consumed once:
    a later build with `replace: true` still set keeps that key and warns.

    Raises:
        MaterialError: a node marked replace that no earlier build made.
    """
    built = previous_nodes(previous)
    problems = [f"nodes.{i}.replace: {node.name} is not in the earlier build of this cluster; a new member "
                "takes join: true instead"
                for i, node in enumerate(spec.nodes) if node.replace and node.name not in built]
    # A new node without join would start with ETCD_INITIAL_CLUSTER_STATE=new and the cluster's token: a
    # few of them beside a running cluster can bootstrap a second cluster of the same name. A restore
    # builds a new cluster, whose members all start that way.
    if built and spec.etcd.restore is None:
        problems += [f"nodes.{i}.join: {node.name} is new to the built cluster ({', '.join(sorted(built))}); a member "
                     "added to a running cluster needs join: true, so that it adds itself instead of starting a "
                     "cluster of its own" for i, node in enumerate(spec.nodes)
                     if node.name not in built and not node.joins]
    if problems:
        raise MaterialError(problems)
    return frozenset(n.name for n in spec.nodes if n.replace and (
        previous.replaced.get(n.name) is None or previous.replaced.get(n.name) != records.recorded.get(n.name)))


def previous_nodes(previous: Manifest) -> set[str]:
    """The nodes the previous build wrote a seed for."""
    return {path.split("/")[0] for path in previous.files if path.endswith(f"/{SEED_ISO}")}


def membership_notes(spec: Spec, previous: Manifest, replacing: frozenset[str]) -> list[str]:
    """What the operator does, or may do by hand, for members that join, are replaced or leave."""
    admin = "from pki/, run: set -a && . ./etcdctl.env && set +a &&"
    built = previous_nodes(previous)
    notes = []
    for node in spec.nodes:
        manual = (f"by hand instead, {admin} etcdctl member add {node.name} --peer-urls={etcd.peer_url(node)} "
                  f"--learner, and once it has caught up, etcdctl member promote <its ID>")
        if node.replace and node.name in replacing:
            notes.append(f"{node.name} is replaced with a new key: boot it from its new seed on an empty disk; it "
                         f"removes its stale member entry while the others keep quorum, joins as a learner and "
                         f"promotes itself (journalctl -u etcd -u etcd-seed-promote shows each step); {manual}")
        elif node.join and node.name not in built:
            notes.append(f"{node.name} joins the running cluster by itself: boot it from its seed; it adds itself "
                         f"as a learner and promotes itself once it has caught up; {manual}")
        old = _previous_ips(previous, node.name)
        if node.name in built and node.name not in replacing and old and str(node.ip) not in old:
            notes.append(f"{node.name}'s address changed from {', '.join(old)} to {node.ip}: etcd keeps a member's "
                         "peer URL in the cluster's membership, not in its seed, and a member that already holds "
                         "data does not register again; before you roll its new seed, "
                         f"{admin} etcdctl member update \"$(etcdctl member list | awk -F', ' "
                         f"'$3 == \"{node.name}\" {{print $1}}')\" --peer-urls={etcd.peer_url(node)} ; or mark it "
                         "replace: true to boot it afresh on an empty disk")
    for name in sorted(built - {n.name for n in spec.nodes}):
        notes.append(f"{name} left the spec: take it out of the cluster before you power it off; {admin} "
                     f"etcdctl member remove \"$(etcdctl member list | awk -F', ' '$3 == \"{name}\" {{print $1}}')\" "
                     f"; then delete {name}/, pki/{name}.key, pki/{name}.crt and pki/{name}.ssh.key from the output")
    clients = {c.name for c in spec.clients}
    for path in sorted(p for p in previous.files if p.startswith("clients/")):
        name = path.removeprefix("clients/").split(".", 1)[0]
        if name not in clients:
            expiry = previous.certificates.get(f"pki/{name}.crt", {}).get("not_after", "its notAfter")
            notes.append(f"client {name} left the spec: its certificate pki/{name}.crt stays valid until it "
                         f"expires ({expiry}), and anyone holding its key can still use the cluster until then; "
                         f"rotate the CA (rotate-ca) to cut it off sooner; delete {path}, pki/{name}.key and "
                         f"pki/{name}.crt from the output")
    if spec.etcd.restore is not None:
        notes.append("restore: boot every member on an empty disk from its new seed; each restores the snapshot "
                     "once, then the members form a new cluster (new token and cluster ID); power off every old "
                     "member first, and remove etcd.restore from the spec once the cluster is up")
    return notes


def _previous_ips(previous: Manifest, name: str) -> list[str]:
    """The IPv4 addresses the previous build's certificate for a node named."""
    sans = previous.certificates.get(f"pki/{name}.crt", {}).get("sans", [])
    return [s for s in sans if isinstance(s, str) and s.replace(".", "").isdigit() and s != "127.0.0.1"]


def rolling_order(names: list[str]) -> str:
    """What the operator does with changed seeds of a running cluster, one node at a time."""
    steps = "; ".join(f"{i}. {name}" for i, name in enumerate(names, 1))
    return (f"roll the changed seeds one node at a time: attach the node's new seed.iso and reboot it, then "
            f"wait until 'ETCDCTL_ENDPOINTS=https://<its IP>:2379 etcdctl endpoint health' reports that member "
            f"healthy before the next ({steps}); "
            "take the leader last ('etcdctl endpoint status -w table' shows IS LEADER)")


def certificates(pki: PkiState) -> dict[str, x509.Certificate]:
    """Each .crt file's leaf (or CA) certificate, by path, for the manifest."""
    cas = {"pki/ca.crt": pki.ca.cert}
    if pki.next_ca is not None:
        cas[f"pki/{rotation.NEXT}.crt"] = pki.next_ca.cert
    return {**cas, **{f"pki/{name}.crt": c.cert for name, c in pki.leaves.items()}}


def seed_entries(texts: Mapping[str, str], bundle: Bundle, snapshot: Snapshot | None = None) -> list[SeedEntry]:
    """What goes on a node's seed ISO, in the NODE_FILES order, then the tarball and a restore's snapshot."""
    entries = [SeedEntry(f.name, texts[f.name].encode()) for f in NODE_FILES if f.on_iso]
    if bundle.data is not None:
        entries.append(SeedEntry(bundle.name, bundle.data))
    if snapshot is not None:
        entries.append(SeedEntry(RESTORE_ON_SEED, snapshot.data))
    return entries


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _plan_file(path: str, mode: int, source: Callable[[], bytes] | list[SeedEntry], current: fs.OnDisk | None,
               public_key_sha256: str | None, epoch: int | None) -> PlannedFile:
    # Every file is made and compared with what is on disk, ISOs included: a seed that
    # was changed by hand (an extra vendor-data, another label) is rebuilt, whatever the
    # manifest says. An ISO is only hashed here, never held; it is written straight to disk.
    make: Callable[[], bytes] | Callable[[BinaryIO], None]
    if isinstance(source, list):
        assert epoch is not None  # noqa: S101 - every ISO row has one
        sha, size = iso_digest(source, epoch)
        make = partial(write_iso, source, epoch)
    else:
        data = source()
        sha, size, make = hashlib.sha256(data).hexdigest(), len(data), _const(data)
    if current is None:
        status = FileStatus.CREATE
    elif current.sha256 != sha:
        status = FileStatus.UPDATE
    else:
        status = FileStatus.UNCHANGED if current.mode == mode else FileStatus.MODE
    return PlannedFile(path, mode, sha, size, status, make, public_key_sha256, epoch, isinstance(source, list))


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
    fs.make_dirs(root, {"pki": fs.SECRET_DIR_MODE, **({"clients": fs.PUBLIC_DIR_MODE} if plan.spec.clients else {}),
                        **{node.name: fs.PUBLIC_DIR_MODE for node in plan.spec.nodes}})
    writes = [fs.Write(f.path, f.mode, f.make, f.streamed)
              for f in sorted(plan.changed, key=lambda f: _write_order(f.path))
              if f.status is not FileStatus.MODE]
    for f in plan.changed:
        if f.status is FileStatus.MODE:
            fs.chmod(root / f.path, f.mode)
    if plan.manifest_status is not FileStatus.UNCHANGED:
        writes.append(fs.Write(manifest.NAME, fs.PUBLIC_MODE, _const(plan.manifest_bytes)))
    if writes or plan.deletes or plan.sealed_moves:
        record = {"keys": plan.new_keys, "deletes": plan.deletes, "sealed_moves": plan.sealed_moves,
                  "step": plan.step}
        fs.stage_and_commit(root, writes, JOURNAL, record)
        _finish(root, plan.sealed_moves, plan.deletes)
    return removed


def _finish(root: Path, sealed_moves: list[tuple[str, str]], deletes: list[str]) -> None:
    """What a run does after its renames; each step can be repeated, so a killed run is continued."""
    pki_dir = root / "pki"
    for source, target in sealed_moves:
        data = fs.read_regular(pki_dir / f"{source}.age", fs.LIMITS["pem"], f"pki/{source}.age", OutputError,
                               missing_ok=True)
        if data is not None:
            fs.write_file(pki_dir / f"{target}.age", data, fs.PUBLIC_MODE)
        index = dict(sealed.read_index(pki_dir))
        if source in index:
            index[target] = index.pop(source)
            sealed.write_index(pki_dir, index)
        fs.remove(pki_dir / f"{source}.age")
    for path in deletes:  # after the manifest that no longer lists them is in place
        fs.remove(root / path)
    fs.remove(root / JOURNAL)


_MOVES = [(f"{rotation.NEXT}.key", f"{CA_NAME}.key")]
_DELETES = DELETABLE | {f"{p}.age" for p in DELETABLE if p.endswith(".key")}


def recover(root: Path) -> tuple[bool, str | None]:
    """Complete a run that was killed among its renames, as its journal lists them.

    Returns:
        Whether there was one to complete, and the rotation step it was taking (None for a plain build).

    Raises:
        OutputError: a journal of another shape (it is a file in the output tree, so it is checked).
    """
    document = _journal_document(fs.read_optional(root / JOURNAL, JOURNAL))
    if document is None or "renames" not in document:
        return False, None  # none, or one from before renames were journalled: the plan adopts its keys
    hint = f"check the output tree by hand, then remove {JOURNAL}"
    renames, moves, deletes, step = (document.get("renames"), document.get("sealed_moves"), document.get("deletes"),
                                     document.get("step"))
    if not (isinstance(renames, list) and all(isinstance(r, list) and len(r) == 2
                                              and all(isinstance(x, str) for x in r) for r in renames)):
        raise OutputError(f"{JOURNAL}: renames: must be a list of [temporary, final] paths", hint=hint)
    if not (isinstance(moves, list) and all(isinstance(m, list) and tuple(m) in _MOVES for m in moves)):
        raise OutputError(f"{JOURNAL}: sealed_moves: must name only {_MOVES[0][0]} -> {_MOVES[0][1]}", hint=hint)
    if not (isinstance(deletes, list) and all(isinstance(d, str) and d in _DELETES for d in deletes)):
        raise OutputError(f"{JOURNAL}: deletes: may name only the rotation's files", hint=hint)
    if step is not None and step not in rotation.STEPS:
        raise OutputError(f"{JOURNAL}: step: must be one of {', '.join(rotation.STEPS)}", hint=hint)
    fs.finish_renames(root, [(a, b) for a, b in renames])
    _finish(root, [(a, b) for a, b in moves], deletes)
    return True, step
