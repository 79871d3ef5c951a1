"""Build: the use case. Inputs are read once, a plan is made in memory, and only then is the plan applied.

`run` is the one entry point for build, plan and rotate-ca (and the benchmark): it reads the
spec and the inputs, takes the lock, recovers a killed run, plans, applies, and records the fast
path. It returns what to print; only the CLI prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import jinja2
from cryptography import x509

from . import (
    certs,
    decisions,
    fastpath,
    fields,
    fs,
    hostkeys,
    journal,
    keygen,
    layout,
    manifest,
    notes,
    revocation,
    rotation,
    sealed,
)
from . import node as node_facts
from .decisions import Decisions
from .errors import GeneratorError, MaterialError, OutputError, printable
from .etcd import Bundle, Version
from .inputs import (
    Snapshot,
    Sources,
    cluster_root,
    input_files,
    load_sources,
    now,
    read_manifest,
    read_spec_source,
    source_date_epoch,
)
from .iso import iso_digest, write_iso
from .layout import CA_NAME, DELETABLE, JOURNAL
from .manifest import FileEntry, Issued, Manifest, Revoked, WrittenWith
from .outputs import CaPem, HostPem, KeyPem, LeafPem, Material, OutputFile, output_files
from .pki import CaInputs, Change, KeyRecords, PkiState, build_pki
from .plan import BuildPlan, FileStatus, PlannedFile
from .render import make_environment
from .rotation import Phase, Rotation
from .spec import Node, Spec


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
    sealed_index: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # layout.SEALED_INDEX
    spec_sha256: str = ""  # of the spec's text, for the manifest's written_with


@dataclass(frozen=True)
class Options:
    """What the operator asked of this run beyond the spec."""

    rekey: frozenset[str] = frozenset()  # leaf names whose keys are replaced
    renew: bool = False  # reissue every leaf certificate now, keeping the keys
    allow_downgrade: bool = False  # accept one minor version down, to roll back an unfinished upgrade
    rotate: str | None = None  # a CA rotation step (begin, issue, finish); see rotation.py

    @property
    def recordable(self) -> bool:
        """Whether the fast path may answer or record this run: no flag that asks for work."""
        return not (self.rekey or self.renew or self.allow_downgrade or self.rotate)


@dataclass(frozen=True)
class BuildResult:
    """What a run did, and what to print: the CLI writes `out` and `err` as they are."""

    plan: BuildPlan
    root: Path
    out: str
    err: str
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage, for the benchmark


def run(spec_path: Path, out: Path, options: Options, clock: dt.datetime | None = None,
        epoch: str | None = None) -> BuildResult:
    """Build the cluster that spec_path defines under out/<cluster>/: plan, apply, record the fast path.

    Args:
        spec_path: cluster.yaml.
        out: the output root.
        options: --rekey, --renew, --allow-downgrade, a rotate-ca step.
        clock: the time certificates are issued at (default: now).
        epoch: SOURCE_DATE_EPOCH as the environment gives it.

    Raises:
        GeneratorError: any problem with the spec, the inputs, the output tree or the plan.
    """
    return _read_and_run(spec_path, out, options, True, clock, epoch)


def plan(spec_path: Path, out: Path, options: Options, epoch: str | None = None) -> BuildResult:
    """What `run` would do, under a shared lock: nothing is written. Raises as `run` does."""
    return _read_and_run(spec_path, out, options, False, None, epoch)


def _read_and_run(spec_path: Path, out: Path, options: Options, write: bool, clock: dt.datetime | None,
                  epoch: str | None) -> BuildResult:
    spec, spec_warnings, spec_sha256 = read_spec_source(spec_path)
    try:
        return _run(spec, spec_path, out, options, write, clock, epoch, spec_warnings, spec_sha256)
    except GeneratorError as exc:
        exc.warnings = spec_warnings + exc.warnings
        raise


def _run(spec: Spec, spec_path: Path, out: Path, options: Options, write: bool, clock: dt.datetime | None,
         epoch: str | None, spec_warnings: list[str], spec_sha256: str) -> BuildResult:
    warned = "".join(f"warning: {printable(w)}\n" for w in spec_warnings)
    root = cluster_root(out, spec)
    pinned = source_date_epoch(epoch)
    issued_at = clock or now()
    timings: dict[str, float] = {}
    if not write:
        with fs.locked(root, exclusive=False) if root.is_dir() else contextlib.nullcontext():
            plan = plan_build(spec, load_inputs(spec, root, spec_sha256), make_environment(), issued_at, pinned,
                              options, timings)
        text, errors = notes.plan_report(plan, str(root))
        return BuildResult(plan, root, text, warned + errors, timings)
    # The keys this build will likely make are made in other processes while it reads and
    # checks its inputs; a guess that is off costs a key too many or one made later.
    names = [CA_NAME, layout.ADMIN, *(node.name for node in spec.nodes), *(client.name for client in spec.clients)]
    missing = [n for n in names if not (root / layout.key_file(n)).exists()]
    with keygen.keys_made_ahead(spec.pki.key_type.value, len(missing) + len(options.rekey)):
        # Every input problem is reported before any directory is made.
        previous = read_manifest(root)
        sources = load_sources(spec, previous.bundle_sha256)
        created = fs.make_dirs(root, {})
        with fs.locked(root, exclusive=True):
            try:
                fastpath.forget(root)
                resumed, step = journal.recover(root)
                if resumed:
                    previous = read_manifest(root)  # the recovered run renamed its manifest into place
                    if step is not None and step == options.rotate:  # its step is taken: this run builds on it
                        options = Options(options.rekey, options.renew, options.allow_downgrade, None)
                plan = plan_build(spec, load_inputs(spec, root, spec_sha256, sources, previous), make_environment(),
                                  issued_at, pinned, options, timings)
                started = time.perf_counter()
                removed = journal.apply(root, plan)
                timings["write"] = time.perf_counter() - started
            except BaseException:
                fs.remove_empty(created)  # only while holding the lock: another run may be about to use them
                raise
            text, errors = notes.build_report(plan, str(root), removed, plan.written)
            text, errors = (notes.recovered(step) if resumed else "") + text, warned + errors
            if not removed and plan.written == 0 and options.recordable:
                plan_text, plan_errors = notes.plan_report(plan, str(root))
                fastpath.record(root, fastpath.command_args(out), spec_path, input_files(spec), plan.renew_at,
                                {"build": fastpath.Replay(text, errors),
                                 "plan": fastpath.Replay(plan_text, warned + plan_errors)})
    return BuildResult(plan, root, text, errors, timings)


def load_inputs(spec: Spec, root: Path, spec_sha256: str, sources: Sources | None = None,
                previous: Manifest | None = None) -> Inputs:
    """Read the sources and the manifest (unless given) and the cluster's output tree as it is now.

    Raises:
        MaterialError, OutputError: naming the field or file.
    """
    previous = previous or read_manifest(root)
    sources = sources or load_sources(spec, previous.bundle_sha256)
    listed = previous.files.get(layout.ROTATION)
    current = rotation.parse(fs.read_optional(root / layout.ROTATION, layout.ROTATION),
                             listed.sha256 if listed else None)
    return Inputs(bundle=sources.bundle, imported=sources.imported, pki_files=fs.load_pki_dir(root / layout.PKI),
                  previous=previous, pending=journal.pending_keys(fs.read_optional(root / JOURNAL, JOURNAL)),
                  disk=fs.scan(root)[0], snapshot=sources.snapshot, imported_next=sources.imported_next,
                  rotation=current, sealed_index=sealed.read_index(root / layout.PKI), spec_sha256=spec_sha256)


def key_records(previous: Manifest, pending: Mapping[str, str]) -> KeyRecords:
    """What the previous manifest (and an interrupted run's journal) say each key is."""
    recorded, file_sha = {}, {}
    for path, entry in previous.files.items():
        name = layout.key_name(path)
        if name is not None:
            file_sha[name] = entry.sha256
            if entry.public_key_sha256 is not None:
                recorded[name] = entry.public_key_sha256
    return KeyRecords(recorded=recorded, pending=dict(pending), legacy_file_sha256=file_sha,
                      legacy=previous.format == 1, ca_recorded=layout.cert_file(CA_NAME) in previous.files)


def plan_build(spec: Spec, inputs: Inputs, env: jinja2.Environment, now: dt.datetime, epoch: int | None,
               options: Options = Options(), timings: dict[str, float] | None = None) -> BuildPlan:
    """Decide every file of output/<cluster>/ and what to do to each, without writing.

    The story: preflight (version change, epoch, restore), the PKI and host keys, the output
    files, each file's status against the disk, the manifest, then the notes for the operator.

    Args:
        spec: the validated cluster definition.
        inputs: from load_inputs.
        env: from render.make_environment().
        now: the time certificates are issued at.
        epoch: pins ISO dates; None uses each node certificate's notBefore.
        options: what the operator asked beyond the spec.
        timings: filled with each stage's seconds, when given.

    Raises:
        GeneratorError: any problem with the PKI, the templates or the ISO, or a version change etcd refuses.
    """
    timings = {} if timings is None else timings
    started = time.perf_counter()
    decided, change = _preflight(spec, inputs, epoch, options)
    records = key_records(inputs.previous, inputs.pending)
    replacing = _replacing(spec, inputs.previous, records)
    _check_data_disks(spec, inputs.previous, replacing)
    phase = rotation.target(inputs.rotation, options.rotate)
    pki = build_pki(spec, inputs.pki_files, inputs.imported, now, records, options.rekey, options.renew, replacing,
                    CaInputs(inputs.imported, inputs.imported_next, inputs.rotation, phase))
    host_keys = hostkeys.host_keys(spec, inputs.pki_files, records, replacing, pki.events)
    state = _rotation_state(inputs.rotation, phase, pki)
    public_keys = pki.public_keys()
    existing_crl = inputs.pki_files.get(layout.CRL_NAME)
    contradictions = revocation.contradictions(inputs.previous)
    if contradictions:
        raise OutputError(f"{manifest.NAME}: {contradictions[0]}; restore manifest.json from git")
    lost = revocation.lost(existing_crl, pki.trusted, inputs.previous)
    if lost:
        raise OutputError(f"{manifest.NAME}: revoked: lacks {', '.join(lost)}, which {layout.CRL} lists; a build "
                          "would sign a CRL that takes them back: restore manifest.json's revoked list (git log -p "
                          "shows it)")
    revoked = revocation.revocations(spec, inputs.previous, public_keys, now)
    issued = revocation.history(inputs.previous, pki.leaves, public_keys, now)
    crl = revocation.crl(existing_crl, revoked, pki.signer, now,
                         spec.pki.validity_days, spec.pki.renew_before_days, options.renew)
    timings["pki"] = time.perf_counter() - started

    started = time.perf_counter()
    material = _material(pki, public_keys, host_keys, state, crl.der)
    not_before = {node.name: int(pki.leaves[node.name].cert.not_valid_before_utc.timestamp()) for node in spec.nodes}
    outputs = output_files(spec, decided, material, env, inputs.bundle, inputs.snapshot, epoch, not_before)
    files = [_plan_file(output, inputs.disk.get(output.path)) for output in outputs]
    timings["outputs"] = time.perf_counter() - started

    planned = {f.path for f in files}
    sealed_moves, sealed_warnings = _sealed_moves(pki, inputs)
    moved = {layout.sealed_path(source) for source, _ in sealed_moves}
    deletes = sorted(p for p in DELETABLE - planned if p in inputs.disk)
    deletes += [copy for p in sorted(DELETABLE - planned) if layout.is_key(p)
                and (copy := layout.sealed_file(p)) in inputs.disk and copy not in moved]
    new_keys = {layout.key_name(f.path) or "": f.public_key_sha256 for f in files
                if f.public_key_sha256 and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    written_with, library_note = _written_with(inputs, files, deletes, pki, revoked, options)
    manifest_bytes = _manifest(spec, decided, inputs, files, pki, public_keys, revoked, written_with, issued)
    current = inputs.disk.get(layout.MANIFEST)
    manifest_status = FileStatus.CREATE if current is None else FileStatus.UNCHANGED \
        if current.sha256 == hashlib.sha256(manifest_bytes).hexdigest() and current.mode == layout.PUBLIC_MODE \
        else FileStatus.UPDATE

    built = previous_nodes(inputs.previous)
    new_seeds = {node for f in files
                 if (node := layout.built_node(f.path)) and f.status in (FileStatus.CREATE, FileStatus.UPDATE)}
    # Only members of a running cluster (built before) are rolled; a joining or replaced node boots afresh.
    afresh = replacing | {n.name for n in spec.nodes if n.join and n.name not in built}
    # A node with a new key goes first: the others' new seeds revoke its old certificate, peer and client.
    rekeyed = {r.name for r in revoked if r.reason == revocation.NEW_KEY and r not in inputs.previous.revoked}
    reseed = sorted((node.name for node in spec.nodes
                     if node.name in built and node.name not in afresh and node.name in new_seeds),
                    key=lambda name: name not in rekeyed)
    said = notes.membership(spec, decided, inputs.previous, built, replacing)
    said += notes.revocation(revoked, inputs.previous.revoked)
    said += notes.auth(spec, decided.auth, inputs.previous)
    said += [change] if change else []
    said += [library_note] if library_note else []
    said += [notes.rolling_order(reseed)] if reseed else []
    rotation_note = notes.rotation(phase, phase is not inputs.rotation.phase)
    said += [rotation_note] if rotation_note else []
    warnings = [f"nodes.{i}.replace: {node.name} was replaced by an earlier build (its new key is in place); "
                "remove 'replace: true' from the spec" for i, node in enumerate(spec.nodes)
                if node.replace and node.name not in replacing]
    floor = notes.upgrade_floor(_previous_version(inputs.previous), spec.etcd.release)
    return BuildPlan(spec=spec, decided=decided, pki=pki, files=files, manifest_bytes=manifest_bytes,
                     manifest_status=manifest_status, new_keys=new_keys, notes=said,
                     warnings=warnings + sealed_warnings + ([floor] if floor else []), reseed=reseed,
                     deletes=deletes, sealed_moves=sealed_moves, step=options.rotate, crl_next_update=crl.next_update,
                     field_changes=([] if inputs.previous.fields is None
                                    else fields.changes(inputs.previous.fields, spec.field_digests)))


def _previous_version(previous: Manifest) -> Version | None:
    return Version.parse(previous.etcd_version) if previous.etcd_version else None


def _preflight(spec: Spec, inputs: Inputs, epoch: int | None, options: Options) -> tuple[Decisions, str]:
    """What is refused before anything is issued; what the build settles that the spec leaves open, and the note
    on the version change."""
    before = _previous_version(inputs.previous)
    change, refusal = notes.version_change(spec.etcd.release.change_from(before, options.allow_downgrade), before,
                                           spec.etcd.release)
    if refusal:
        raise MaterialError(f"etcd.version: {refusal}")
    if epoch is not None and not 0 <= epoch <= manifest.MAX_EPOCH:
        raise MaterialError(f"SOURCE_DATE_EPOCH: {epoch} is outside 0..{manifest.MAX_EPOCH}, the range an "
                            "ISO 9660 date can hold")
    # load_sources reads the snapshot with a spec that has etcd.restore.
    snapshot = inputs.snapshot.sha256 if inputs.snapshot is not None else None
    return decisions.decide(spec, inputs.previous.format != 0, inputs.previous.auth_enabled, snapshot), change


def _material(pki: PkiState, public: Mapping[str, str], host_keys: Mapping[str, hostkeys.HostKey], state: Rotation,
              crl: bytes) -> Material:
    """What the build writes, as the outputs read it; `public` is pki.public_keys()."""
    def ca(name: str, value: certs.CA, imported: bool) -> CaPem:
        return CaPem(value.cert_pem, None if imported else KeyPem.of(value.key_pem, public[name]))

    return Material(
        ca=ca(CA_NAME, pki.ca, pki.ca_imported),
        next_ca=ca(layout.NEXT_CA, pki.next_ca, pki.next_imported) if pki.next_ca is not None else None,
        leaves={name: LeafPem(c.chain_pem, KeyPem.of(c.key_pem, public[name])) for name, c in pki.leaves.items()},
        hosts={name: HostPem(KeyPem.of(host.private_pem, host.public_sha256), host.public_line)
               for name, host in host_keys.items()},
        rotation_json=rotation.render(state) if state.phase is not Phase.NONE else None, crl=crl)


def _written_with(inputs: Inputs, files: list[PlannedFile], deletes: list[str], pki: PkiState,
                  revoked: tuple[Revoked, ...], options: Options) -> tuple[WrittenWith | None, str | None]:
    """What the manifest records as having written the tree, and the note on a library update.

    A build that writes no file keeps the record it found: the manifest stays byte for byte as
    committed when a new library writes the same bytes."""
    now = WrittenWith.now(inputs.spec_sha256)
    before = inputs.previous.written_with
    written = [f.path for f in files if f.status in (FileStatus.CREATE, FileStatus.UPDATE)]
    if not written and not deletes:
        return before, None
    updates = before.changes(now) if before is not None else []
    if not [u for u in updates if not u.startswith(("etcd-seed ", "python "))]:
        return now, None
    # Nothing else that shapes a byte moved: the same spec, etcd-seed, bundle, snapshot, keys, certificates and
    # CRL, and each file to update is on disk as the last build wrote it, with the same ISO dates.
    previous = inputs.previous
    recorded = {path: record.serial for path, record in previous.certificates.items()}
    only = (before is not None and before.spec_sha256 == now.spec_sha256
            and before.versions.get("etcd-seed") == now.versions.get("etcd-seed")
            and previous.bundle_sha256 == inputs.bundle.sha256 and not deletes and not options.rotate
            and previous.restore_sha256 == (inputs.snapshot.sha256 if inputs.snapshot else None)
            and revoked == previous.revoked and layout.CRL not in written
            and all(event.change is Change.REUSED for event in pki.events)
            and {p: f"{c.serial_number:x}" for p, c in certificates(pki).items()} == recorded
            and all(f.status is FileStatus.UPDATE and (entry := previous.files.get(f.path)) is not None
                    and inputs.disk[f.path].sha256 == entry.sha256 and f.epoch == entry.epoch
                    for f in files if f.path in written))
    return now, notes.library_update(updates, only)


def _manifest(spec: Spec, decided: Decisions, inputs: Inputs, files: list[PlannedFile], pki: PkiState,
              public_keys: Mapping[str, str], revoked: tuple[Revoked, ...], written_with: WrittenWith | None,
              issued: tuple[Issued, ...]) -> bytes:
    return manifest.render_manifest(
        spec.name, spec.etcd.version,
        {"name": inputs.bundle.name, "sha256": inputs.bundle.sha256,
         "source": spec.etcd.url or (spec.etcd.bundle.name if spec.etcd.bundle else None)},
        {f.path: FileEntry(f.sha256, f.size, f.mode, f.public_key_sha256, f.epoch) for f in files},
        certificates(pki),
        replaced={n.name: public_keys[n.name] for n in spec.nodes if n.replace},
        restore={"sha256": inputs.snapshot.sha256, "size": len(inputs.snapshot.data)} if inputs.snapshot else None,
        revoked=revoked, auth_enabled=decided.auth.enabled, written_with=written_with, issued=issued,
        data_disks={n.name: _disk_of(spec, n) for n in spec.nodes}, fields=spec.field_digests)


def _plan_file(output: OutputFile, current: fs.OnDisk | None) -> PlannedFile:
    # Every file is made and compared with what is on disk, ISOs included: a seed that
    # was changed by hand (an extra vendor-data, another label) is rebuilt, whatever the
    # manifest says. An ISO is only hashed here, never held; it is written straight to disk.
    make: Callable[[], bytes] | Callable[[BinaryIO], None]
    if output.iso is not None:
        assert output.epoch is not None  # noqa: S101 - every ISO row has one
        sha, size = iso_digest(output.iso, output.epoch)
        make = partial(write_iso, output.iso, output.epoch)
    else:
        assert output.content is not None  # noqa: S101 - the build holds every key it writes
        data = output.content
        sha, size, make = hashlib.sha256(data).hexdigest(), len(data), fs.const(data)
    if current is None:
        status = FileStatus.CREATE
    elif current.sha256 != sha:
        status = FileStatus.UPDATE
    else:
        status = FileStatus.UNCHANGED if current.mode == output.mode else FileStatus.MODE
    return PlannedFile(output.path, output.mode, sha, size, status, make, output.public_key_sha256, output.epoch,
                       output.iso is not None)


def _sealed_moves(pki: PkiState, inputs: Inputs) -> tuple[list[tuple[str, str]], list[str]]:
    """When rotate-ca finish makes the next CA's key the CA key, its sealed copy becomes the CA key's (a second
    operator's unseal must get the CA key in use); a sealed CA key that is not the one in use is named."""
    if pki.ca_imported or not inputs.sealed_index:
        return [], []
    want = hashlib.sha256(pki.ca.key_pem).hexdigest()
    index = inputs.sealed_index
    sealed_as = {name: entry.get("key_sha256") for name, entry in index.items()}
    source, target = journal.SEALED_MOVE
    if sealed_as.get(target) == want:
        return [], []
    if sealed_as.get(source) == want and layout.sealed_path(source) in inputs.disk:
        return [(source, target)], []
    ca_copy = layout.sealed_path(target)
    if ca_copy in inputs.disk:
        return [], [f"{ca_copy}: holds a CA key other than the one in use (sealed before a CA "
                    "rotation?); run seal again so that unseal restores the CA key in use"]
    return [], []


def _rotation_state(current: Rotation, phase: Phase, pki: PkiState) -> Rotation:
    """The rotation state (layout.ROTATION) after this build: what it was, or the step just taken."""
    if phase is current.phase:
        return current
    if phase is Phase.TRUST_BOTH:
        assert pki.next_ca is not None  # noqa: S101 - build_pki made or imported it
        return Rotation(phase, certs.cert_fingerprint(pki.ca.cert), certs.cert_fingerprint(pki.next_ca.cert))
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
    # A member the last build made without join (the manifest's fields say so) is in the cluster already:
    # join would have it add itself a second time.
    problems += [f"nodes.{i}.join: {node.name} is a member of the built cluster already; join: true is for a "
                 "member added to a running one (a lost member takes replace: true)"
                 for i, node in enumerate(spec.nodes)
                 if node.join and (previous.fields or {}).get(f"nodes.{node.name}.join") == "false"]
    if problems:
        raise MaterialError(problems)
    return frozenset(n.name for n in spec.nodes if n.replace and (
        previous.replaced.get(n.name) is None or previous.replaced.get(n.name) != records.recorded.get(n.name)))


def _disk_of(spec: Spec, node: Node) -> tuple[str, str] | None:
    disk = node_facts.data_disk(spec, node)
    return (disk.device, disk.fs) if disk else None


def _check_data_disks(spec: Spec, previous: Manifest, replacing: frozenset[str]) -> None:
    """A built member stays on the disk that holds its data: its install step refuses to move it (the seed would
    never apply), so the build refuses first. A node replaced in this build starts afresh on whatever disk.

    Raises:
        MaterialError: a built node whose data disk or its filesystem the spec changes.
    """
    if previous.data_disks is None:  # a tree built before the disks were recorded: they are from now on
        return
    changes: dict[tuple[str, str, str], list[str]] = {}  # (field, was, now) -> nodes: one line per change
    for i, node in enumerate(spec.nodes):
        if node.name not in previous.data_disks or node.name in replacing:
            continue
        before, after = previous.data_disks[node.name], _disk_of(spec, node)
        if after == before:
            continue
        own = f"nodes.{i}" if node.data_device or node.data_fs else "etcd"
        field = f"{own}.data_device" if (before and before[0]) != (after and after[0]) else f"{own}.data_fs"
        was = f"{before[0]} ({before[1]})" if before else "its root disk"
        now = f"{after[0]} ({after[1]})" if after else "its root disk"
        changes.setdefault((field, was, now), []).append(node.name)
    problems = [f"{field}: the data of {', '.join(names)} is on {was}, and this spec puts it on {now}; a member is "
                "never moved between disks (its install step refuses, so the seed would never apply): keep "
                f"{was} (nodes[].data_device and .data_fs set one node's disk), or rebuild each node on the new "
                "disk with replace: true, one node at a time" for (field, was, now), names in changes.items()]
    if problems:
        raise MaterialError(problems)


def previous_nodes(previous: Manifest) -> set[str]:
    """The nodes the previous build wrote a seed for."""
    return {node for path in previous.files if (node := layout.built_node(path))}


def certificates(pki: PkiState) -> dict[str, x509.Certificate]:
    """Each .crt file's leaf (or CA) certificate, by path, for the manifest."""
    cas = {layout.cert_file(CA_NAME): pki.ca.cert}
    if pki.next_ca is not None:
        cas[layout.cert_file(layout.NEXT_CA)] = pki.next_ca.cert
    return {**cas, **{layout.cert_file(name): c.cert for name, c in pki.leaves.items()}}
