"""Verify: check an output tree against its spec, its CA, the manifest and CIS §2.

`verify_tree` is pure (no clock, no disk); `check` reads the tree under a shared lock and runs
cloud-init's schema check beside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from . import certs, decisions, etcd, external, fs, hostkeys, layout, manifest, provenance, rotation, sealed
from .certs import PrivateKey, cert_fingerprint, check_leaf, load_key, public_der, public_key_sha256, signs
from .errors import GeneratorError, MaterialError, OutputError
from .etcd import Bundle
from .fs import OnDisk
from .inputs import Snapshot, cluster_root, load_bundle, now, read_spec
from .iso import VOLUME_LABEL, iso_digest, read_iso, volume_label
from .layout import CA_NAME, JOURNAL, NODE_FILES, RESTORE_ON_SEED, SECRET_DIR_MODE, is_secret
from .manifest import Manifest, WrittenWith
from .outputs import CaPem, HostPem, KeyPem, LeafPem, Material, OutputFile, output_files, seed_entries
from .paths import PATHS
from .pki import leaf_table
from .render import make_environment
from .rotation import Phase, Rotation
from .spec import Spec

# CIS Kubernetes Benchmark section 2 (etcd): each setting and the value it requires.
CIS_REQUIRED = {
    "ETCD_CLIENT_CERT_AUTH": "true",       # 2.2
    "ETCD_PEER_CLIENT_CERT_AUTH": "true",  # 2.5
}
CIS_SET = ("ETCD_CERT_FILE", "ETCD_KEY_FILE",            # 2.1
           "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE")  # 2.4
CIS_NOT_TRUE = ("ETCD_AUTO_TLS", "ETCD_PEER_AUTO_TLS")   # 2.3, 2.6


@dataclass(frozen=True)
class Finding:
    """One problem: the file it is about, what is wrong, and whether it fails the check."""

    path: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Tree:
    """An output tree as read from disk: small files' bytes, every file's digest and mode, directory modes."""

    files: Mapping[str, bytes]
    disk: Mapping[str, OnDisk]
    dirs: Mapping[str, int]
    odd: Sequence[str] = ()
    read_large: Callable[[str], bytes] | None = None  # reads an ISO when it is needed
    git_tracked: Sequence[str] | None = None


@dataclass(frozen=True)
class Report:
    """What `check` found in one cluster's tree."""

    root: Path
    findings: list[Finding]
    files: int  # how many files were checked

    @property
    def errors(self) -> int:
        return sum(f.error for f in self.findings)


def check(spec_path: Path, out: Path, warn_days: int, fail_days: int) -> Report:
    """Verify out/<cluster>/ against the spec at spec_path, reading the tree under a shared lock.

    Raises:
        MaterialError: no tree to verify, or thresholds that contradict each other.
    """
    spec, _ = read_spec(spec_path)
    root = cluster_root(out, spec)
    if not root.is_dir():
        raise MaterialError(f"{root}: no output to verify; run a build first")
    if fail_days > warn_days:
        raise MaterialError("--fail-days must not exceed --warn-days")
    try:
        bundle = load_bundle(spec)
    except MaterialError:
        bundle = None  # a reviewer's checkout may lack the tarball: ISOs are then checked file by file
    with fs.locked(root, exclusive=False), ThreadPoolExecutor(1) as pool:
        disk, dirs, odd = fs.scan(root)
        # cloud-init's schema check runs in a process of its own, beside the rest of verify.
        names = sorted(p for p in disk if p.endswith("/user-data"))
        schema = pool.submit(external.cloud_init_schema, [root / name for name in names])
        small = [p for p in disk if layout.built_node(p) is None]
        tree = Tree(files=fs.read_files(root, small), disk=disk, dirs=dirs, odd=odd,
                    read_large=lambda rel: fs.read_regular(root / rel, fs.LIMITS["bundle"] * 2, rel) or b"",
                    git_tracked=external.git_tracked(root))
        found = verify_tree(spec, tree, now(), warn_days, fail_days, make_environment(), bundle,
                            provenance.installed())
        problems = schema.result()
        found += [Finding(name, problem) for name in names if (problem := problems[root / name])]
    return Report(root, found, len(disk))


def parse_env(text: str) -> dict[str, str]:
    """The variables of an EnvironmentFile (KEY=value lines; # comments)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"')
    return values


def verify_tree(spec: Spec, tree: Tree, now: dt.datetime, warn_days: int, fail_days: int,
                env: jinja2.Environment, bundle: Bundle | None,
                installed: Mapping[str, str] | None = None) -> list[Finding]:
    """Every problem in output/<cluster>/, as findings.

    In an operator's tree (any secret present) a missing secret is an error; in a
    reviewer's checkout, which never had secrets, each is a warning and every public
    file is still compared, byte for byte, with what the spec renders.

    Args:
        spec: the cluster definition the tree should match.
        tree: the files, digests and modes under output/<cluster>/.
        now: the time the expiry thresholds count from.
        warn_days: a certificate closer than this to expiry is a warning.
        fail_days: closer than this (or expired) is an error.
        env: the templates, to render what the spec asks for.
        bundle: the etcd tarball as loaded, when it is at hand (to rebuild ISOs exactly).
        installed: the versions of etcd-seed, Python and the libraries that run now, to compare with the
            manifest's written_with.
    """
    found: list[Finding] = []
    previous = _check_manifest(tree, found)
    if previous is not None and previous.written_with is not None and installed is not None:
        updates = previous.written_with.changes(WrittenWith(previous.written_with.spec_sha256, installed))
        if updates:
            found.append(Finding(manifest.NAME, "the tree was last written with other versions than the ones "
                                 f"installed ({', '.join(updates)}): a byte difference below may come from that; "
                                 "`plan` says which files a build would change", error=False))
    _check_layout(tree, previous, found)
    _check_sealed(tree, previous, found)
    _check_git(tree, found)
    ca = _check_ca(tree, layout.cert_file(CA_NAME), layout.key_file(CA_NAME), previous, now, warn_days, fail_days,
                   found)
    if ca is None or previous is None:
        return found
    state = _check_rotation(tree, previous, ca, now, warn_days, fail_days, found)
    if state is None:
        return found
    rotating, trusted = state
    signer = trusted[-1] if rotating.phase is Phase.ISSUE else trusted[0]
    if spec.etcd.restore is not None and previous.restore_sha256 is None:
        found.append(Finding(manifest.NAME, "records no restore snapshot, but the spec has etcd.restore"))
        return found
    # As the build that wrote this tree decided (manifest.json records auth.enabled and the snapshot).
    decided = decisions.decide(spec, True, previous.auth_enabled, previous.restore_sha256)
    keys = _check_leaves(spec, tree, previous, trusted, signer, rotating, now, warn_days, fail_days, found)
    _check_crl(tree, previous, signer, now, found)
    _check_distinct(tree, keys, found)
    hosts = _check_host_keys(spec, tree, previous, found)
    if bundle is not None and previous.bundle_sha256 not in (None, bundle.sha256):
        found.append(Finding(manifest.NAME, f"bundle.sha256 is {previous.bundle_sha256}, but {bundle.name} "
                             f"has {bundle.sha256}"))
    material = _material(spec, tree, previous, trusted, hosts)
    epochs = {node.name: entry.epoch for node in spec.nodes
              if (entry := previous.files.get(layout.seed_file(node.name))) and entry.epoch is not None}
    tarball: Bundle | str = bundle if bundle is not None else \
        spec.etcd.sha256 or previous.bundle_sha256 or ""
    try:
        outputs = output_files(spec, decided, material, env, tarball, None, None, epochs)
    except GeneratorError as exc:
        found.append(Finding(f"{spec.nodes[0].name}/", f"cannot render what the spec asks for: {exc}"))
        return found
    by_path = {output.path: output for output in outputs}
    for output in outputs:
        if output.content is not None:
            _compare(tree, output.path, output.content, found)
    for node in spec.nodes:
        _check_node(spec, node.name, tree, previous, by_path, bundle, found)
    return found


def _check_crl(tree: Tree, previous: Manifest, signer: x509.Certificate, now: dt.datetime,
               found: list[Finding]) -> None:
    """The CRL: signed by the CA that issues leaves, listing exactly the manifest's revoked serials, and current.
    Every member refuses every client while its CRL is unreadable."""
    crl = certs.read_crl(tree.files.get(layout.CRL, b""), signer)
    if crl is None:
        found.append(Finding(layout.CRL, f"missing, or not a DER CRL signed by {signer.subject.rfc4514_string()}"))
        return
    listed = {int(r.serial, 16) for r in previous.revoked}
    if crl.serials != listed:
        extra, missing = sorted(crl.serials - listed), sorted(listed - crl.serials)
        found.append(Finding(layout.CRL, "does not list what manifest.json's revoked lists: "
                             + "; ".join(part for part in (
                                 f"extra {', '.join(f'{s:x}' for s in extra)}" if extra else "",
                                 f"missing {', '.join(f'{s:x}' for s in missing)}" if missing else "") if part)))
    if crl.next_update is not None and crl.next_update <= now:
        found.append(Finding(layout.CRL, f"its nextUpdate ({crl.next_update:%Y-%m-%d}) has passed; a build "
                             "issues a new one"))


def _check_leaves(spec: Spec, tree: Tree, previous: Manifest, trusted: list[x509.Certificate],
                  signer: x509.Certificate, rotating: Rotation, now: dt.datetime, warn_days: int, fail_days: int,
                  found: list[Finding]) -> dict[str, PrivateKey]:
    """Every leaf of the leaf table: issued by the CA that issues now, as the spec asks; the keys at hand."""
    keys = {}
    for name, identity in leaf_table(spec).items():
        cert_path = layout.cert_file(name)
        key = _load_key(tree.files, layout.key_file(name), previous, found)
        if key is not None:
            keys[name] = key
        try:
            chain = x509.load_pem_x509_certificates(tree.files[cert_path])
        except (KeyError, ValueError):
            found.append(Finding(cert_path, "missing or not a PEM certificate"))
            continue
        issuer = next((c for c in trusted if _issued_by(chain[0], c)), signer)
        if issuer is not signer:
            found.append(Finding(cert_path, f"is issued by the old CA, but CA rotation phase {rotating.phase:d} "
                                 "issues from the new one; run a build"))
        for problem in check_leaf(chain[0], key, issuer, identity, spec.pki.key_type.value, now):
            found.append(Finding(cert_path, problem))
        if chain[1:] != [issuer]:
            found.append(Finding(cert_path, "must hold the leaf followed by the CA certificate"))
        _expiry(cert_path, chain[0], now, warn_days, fail_days, found)
    return keys


def _key_pem(tree: Tree, previous: Manifest, path: str) -> KeyPem | None:
    """A key file as the tree has it: its PEM, or in a reviewer's checkout only what the manifest records."""
    pem, entry = tree.files.get(path), previous.files.get(path)
    if pem is not None:
        return KeyPem.of(pem, entry.public_key_sha256 if entry else None)
    return KeyPem(None, entry.sha256, entry.public_key_sha256) if entry else None


def _material(spec: Spec, tree: Tree, previous: Manifest, trusted: list[x509.Certificate],
              hosts: Mapping[str, HostPem]) -> Material:
    """The material the tree holds, as the outputs read it: what verify renders and compares against."""
    def ca(name: str, cert: x509.Certificate) -> CaPem:
        return CaPem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(tree, previous, layout.key_file(name)))

    leaves = {}
    for name in leaf_table(spec):
        chain, key = tree.files.get(layout.cert_file(name)), _key_pem(tree, previous, layout.key_file(name))
        if chain is not None and key is not None:
            leaves[name] = LeafPem(chain, key)
    return Material(ca=ca(CA_NAME, trusted[0]), next_ca=ca(layout.NEXT_CA, trusted[1]) if len(trusted) > 1 else None,
                    leaves=leaves, hosts=hosts, rotation_json=tree.files.get(layout.ROTATION),
                    crl=tree.files.get(layout.CRL, b""))


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_rotation(tree: Tree, previous: Manifest, ca: x509.Certificate, now: dt.datetime, warn_days: int,
                    fail_days: int, found: list[Finding]) -> tuple[Rotation, list[x509.Certificate]] | None:
    """The rotation's phase (named in a warning while it is in progress) and the CAs trusted in it."""
    listed = previous.files.get(layout.ROTATION)
    try:
        state = rotation.parse(tree.files.get(layout.ROTATION), listed.sha256 if listed else None)
    except GeneratorError as exc:
        found.append(Finding(layout.ROTATION, exc.messages[0].split(": ", 1)[-1]))
        return None
    fingerprint = cert_fingerprint(ca)
    ca_path, next_path = layout.cert_file(CA_NAME), layout.cert_file(layout.NEXT_CA)
    if not state.in_progress:
        if state.phase is Phase.TRUST_NEW and fingerprint != state.new_ca:
            found.append(Finding(ca_path, f"is not the CA {layout.ROTATION} names as the new CA"))
        return state, [ca]
    found.append(Finding(layout.ROTATION, f"CA rotation in phase {state.phase:d} of 3 "
                         f"({rotation.describe(state.phase)})"
                         "; finish it before the old CA expires", error=False))
    nxt = _check_ca(tree, next_path, layout.key_file(layout.NEXT_CA), previous, now, warn_days, fail_days, found)
    if nxt is None:
        return None
    if fingerprint != state.old_ca:
        found.append(Finding(ca_path, f"is not the CA {layout.ROTATION} names as the old CA"))
    if cert_fingerprint(nxt) != state.new_ca:
        found.append(Finding(next_path, f"is not the CA {layout.ROTATION} names as the new CA"))
    return state, [ca, nxt]


def _check_host_keys(spec: Spec, tree: Tree, previous: Manifest, found: list[Finding]) -> dict[str, HostPem]:
    """Each node's host key, as its key file (or known_hosts and the manifest, in a reviewer's checkout) has it."""
    text = tree.files.get(layout.KNOWN_HOSTS, b"").decode(errors="replace")
    lines = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and not line.startswith("#"):
            lines[fields[0].split(",")[0]] = f"{fields[1]} {fields[2]}"
    hosts = {}
    for node in spec.nodes:
        path = layout.key_file(layout.host_key_name(node.name))
        pem, entry = tree.files.get(path), previous.files.get(path)
        public = lines.get(node.name)
        if pem is not None:
            try:
                host = hostkeys.HostKey.from_pem(pem)
            except ValueError:
                found.append(Finding(path, "is not an unencrypted OpenSSH ed25519 key"))
                continue
            if entry is not None and host.public_sha256 != entry.public_key_sha256:
                found.append(Finding(path, "its public key differs from the one manifest.json records"))
            if public is not None and public != host.public_line:
                found.append(Finding(layout.KNOWN_HOSTS, f"{node.name}: is not the host key in {path}"))
            public = host.public_line
        key = _key_pem(tree, previous, path)
        if public is None or key is None:
            found.append(Finding(layout.KNOWN_HOSTS, f"{node.name}: no host key listed"))
            continue
        hosts[node.name] = HostPem(key, public)
    return hosts


def _holds_secrets(tree: Tree) -> bool:
    """An operator's tree holds secrets; a reviewer's checkout, made from git, never had any."""
    return any(is_secret(path) for path in tree.disk)


def _check_manifest(tree: Tree, found: list[Finding]) -> Manifest | None:
    if manifest.NAME not in tree.files:
        found.append(Finding(manifest.NAME, "missing; run a build"))
        return None
    try:
        document = manifest.parse_manifest(tree.files[manifest.NAME])
    except OutputError as exc:
        found.append(Finding(manifest.NAME, exc.messages[0].split(": ", 1)[-1]))
        return None
    operator = _holds_secrets(tree)
    for path, entry in sorted(document.files.items()):
        have = tree.disk.get(path)
        secret = is_secret(path)
        if have is None:
            if secret and not operator:
                found.append(Finding(path, "secret not present here (a reviewer's checkout); checks that need "
                                     "it were skipped", error=False))
            else:
                found.append(Finding(path, "secret missing from this operator's tree" if secret
                                     else "listed in the manifest but missing"))
            continue
        if have.sha256 != entry.sha256:
            found.append(Finding(path, "sha256 differs from the manifest (changed since the build)"))
        if secret and have.mode & 0o077:
            found.append(Finding(path, f"mode is {have.mode:04o}; a secret must be 0600"))
        elif have.mode != entry.mode:
            found.append(Finding(path, f"mode is {have.mode:04o}; the manifest says {entry.mode:04o}"))
    return document


def _check_layout(tree: Tree, previous: Manifest | None, found: list[Finding]) -> None:
    """Directories' modes, and anything in the tree that the build did not write."""
    listed = set(previous.files) if previous else set()
    pki_mode = tree.dirs.get(layout.PKI)
    # git keeps no directory modes: only a tree that holds keys is held to 0700.
    if pki_mode is not None and pki_mode != SECRET_DIR_MODE and _holds_secrets(tree):
        found.append(Finding(f"{layout.PKI}/", f"mode is {pki_mode:04o}; the directory of the keys must be 0700"))
    for rel, mode in sorted(tree.dirs.items()):
        if mode & 0o022:
            found.append(Finding(f"{rel}/", f"mode is {mode:04o}; others could replace its files"))
    for rel in tree.odd:
        found.append(Finding(rel, "is not a regular file or directory (a link or a device); the build writes none"))
    for rel in sorted(set(tree.disk) - listed):
        if layout.is_temp(rel):
            found.append(Finding(rel, "left by a run that was killed; it may hold a key (the next build removes it)"))
        elif rel == JOURNAL:
            found.append(Finding(rel, "a build was interrupted; run it again to complete it"))
        elif layout.kept_unlisted(rel, listed):
            continue
        elif layout.in_pki(rel):
            found.append(Finding(rel, "is not a file the build wrote; nothing but the build's own files "
                                 "belongs beside the keys"))
        else:
            found.append(Finding(rel, "not in the manifest", error=False))


def _check_sealed(tree: Tree, previous: Manifest | None, found: list[Finding]) -> None:
    """Each sealed copy is of the key the manifest records under its name (checked by sha256, not decrypted):
    an unseal on another machine must restore the keys in use."""
    data = tree.files.get(layout.SEALED_INDEX)
    if data is None or previous is None:
        return
    try:
        index = sealed.parse_index(data)
    except MaterialError as exc:
        found.append(Finding(layout.SEALED_INDEX, str(exc)))
        return
    for name, entry in sorted(index.items()):
        key, path = layout.pki_path(name), layout.sealed_path(name)
        if path not in tree.disk:
            continue
        recorded = previous.files.get(key)
        if recorded is None:
            found.append(Finding(path, f"{layout.SEALED_INDEX} says it holds {key}, which {manifest.NAME} "
                                 "does not record; delete it, or run seal again"))
        elif entry.get("key_sha256") != recorded.sha256:
            found.append(Finding(path, f"holds a key other than the {key} that {manifest.NAME} records; run "
                                 "seal again so that unseal restores the key in use"))


def _check_git(tree: Tree, found: list[Finding]) -> None:
    if tree.git_tracked is None:
        return
    for rel in sorted(tree.git_tracked):
        if is_secret(rel):
            found.append(Finding(rel, "is in git's index: a secret must never be committed "
                                 "(git rm --cached it, and treat the key as exposed)"))


def _expiry(path: str, cert: x509.Certificate, now: dt.datetime, warn_days: int, fail_days: int,
            found: list[Finding]) -> None:
    left = cert.not_valid_after_utc - now
    when = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    if left <= dt.timedelta(0):
        found.append(Finding(path, f"expired on {when}"))
    elif left <= dt.timedelta(days=fail_days):
        found.append(Finding(path, f"expires on {when}, within {fail_days} days"))
    elif left <= dt.timedelta(days=warn_days):
        found.append(Finding(path, f"expires on {when}, within {warn_days} days", error=False))


def _check_ca(tree: Tree, cert_path: str, key_path: str, previous: Manifest | None, now: dt.datetime,
              warn_days: int, fail_days: int, found: list[Finding]) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(tree.files[cert_path])
    except (KeyError, ValueError):
        found.append(Finding(cert_path, "missing or not a PEM certificate"))
        return None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not constraints.ca or not usage.key_cert_sign:
            found.append(Finding(cert_path, "is not a CA that may sign certificates"))
    except x509.ExtensionNotFound:
        found.append(Finding(cert_path, "lacks basicConstraints or keyUsage; not a CA"))
    _expiry(cert_path, cert, now, warn_days, fail_days, found)
    key = _load_key(tree.files, key_path, previous, found)
    if key is not None and public_der(key) != public_der(cert):
        found.append(Finding(key_path, f"does not match {cert_path}"))
    return cert


def _check_distinct(tree: Tree, keys: Mapping[str, PrivateKey], found: list[Finding]) -> None:
    seen: dict[bytes, str] = {}
    ca_key = tree.files.get(layout.key_file(CA_NAME))
    if ca_key is not None:
        with contextlib.suppress(ValueError):  # an unreadable CA key is reported by _check_ca
            seen[public_der(load_key(ca_key))] = CA_NAME
    for name, key in keys.items():
        der = public_der(key)
        if der in seen:
            found.append(Finding(layout.key_file(name), f"is the same key as {layout.key_file(seen[der])}"))
        seen.setdefault(der, name)


def _compare(tree: Tree, path: str, expected: bytes, found: list[Finding]) -> None:
    have = tree.files.get(path)
    if have is not None and have != expected:
        found.append(Finding(path, "differs from what the spec renders ('plan' shows the change)"))


def _check_node(spec: Spec, name: str, tree: Tree, previous: Manifest, outputs: Mapping[str, OutputFile],
                bundle: Bundle | None, found: list[Finding]) -> None:
    """A node's options.env and unit against CIS 2, its user-data's structure, and its seed's contents."""
    options_path, unit_path = layout.node_file(name, "options.env"), layout.node_file(name, "etcd.service")
    if options_path in tree.files:
        options = parse_env(tree.files[options_path].decode(errors="replace"))
        _check_options(options_path, options, spec, found)
        if unit_path in tree.files:
            _check_unit(unit_path, tree.files[unit_path].decode(errors="replace"), options, found)
    user_data_path = layout.node_file(name, "user-data")
    user_data, rendered = tree.files.get(user_data_path), outputs.get(user_data_path)
    if user_data is None or rendered is None or rendered.content is None:
        return  # a reviewer's checkout: the full user-data and the keys are secret and not committed
    _check_user_data(name, user_data, found)
    texts = {f.name: row.content.decode() for f in NODE_FILES
             if (row := outputs.get(layout.node_file(name, f.name))) is not None and row.content is not None}
    _check_iso(name, tree, previous, texts, spec.etcd.tarball_name if spec.etcd.bundle else None, bundle, found)


def _check_iso(name: str, tree: Tree, previous: Manifest, texts: Mapping[str, str], tarball: str | None,
               bundle: Bundle | None, found: list[Finding]) -> None:
    """The seed holds exactly the rendered files under the cidata label; byte for byte when it can be rebuilt."""
    path = layout.seed_file(name)
    if path not in tree.disk or tree.read_large is None:
        return
    entry = previous.files.get(path)
    rebuildable = bundle is not None and (bundle.data is not None or tarball is None) and entry is not None \
        and entry.epoch is not None
    if rebuildable and not previous.restore_sha256:
        assert bundle is not None and entry is not None and entry.epoch is not None  # noqa: S101 - as tested
        if iso_digest(seed_entries(texts, bundle), entry.epoch)[0] == tree.disk[path].sha256:
            return  # byte for byte the seed the spec builds: label, files and contents are all right
    try:
        iso = tree.read_large(path)
        on_seed = read_iso(iso)
    except GeneratorError:
        found.append(Finding(path, "cannot be read as an ISO"))
        return
    if volume_label(iso) != VOLUME_LABEL:
        found.append(Finding(path, f"its label is {volume_label(iso)!r}, not {VOLUME_LABEL!r}"))
    restore = RESTORE_ON_SEED if previous.restore_sha256 else None
    want_names = set(layout.seed_contents(tarball, restore is not None))
    if set(on_seed) != want_names:
        extra, lacking = sorted(set(on_seed) - want_names), sorted(want_names - set(on_seed))
        found.append(Finding(path, f"holds {sorted(on_seed)}; extra {extra}, missing {lacking}"))
    for file_name in layout.SEED_NODE_FILES:
        if on_seed.get(file_name) != texts[file_name].encode():
            found.append(Finding(path, f"its {file_name} differs from {layout.node_file(name, file_name)}"))
    if previous.bundle_sha256 and tarball and tarball in on_seed and \
            hashlib.sha256(on_seed[tarball]).hexdigest() != previous.bundle_sha256:
        found.append(Finding(path, f"its {tarball} is not the bundle the manifest records"))
    snapshot = None
    if restore and restore in on_seed:
        snapshot = Snapshot(hashlib.sha256(on_seed[restore]).hexdigest(), on_seed[restore])
        if snapshot.sha256 != previous.restore_sha256:
            found.append(Finding(path, f"its {restore} is not the snapshot the manifest records"))
    if rebuildable:
        assert bundle is not None and entry is not None and entry.epoch is not None  # noqa: S101 - as tested
        if iso_digest(seed_entries(texts, bundle, snapshot), entry.epoch)[0] != hashlib.sha256(iso).hexdigest():
            found.append(Finding(path, "is not byte for byte the seed the spec builds (hidden or extra content)"))


def _check_options(path: str, options: Mapping[str, str], spec: Spec, found: list[Finding]) -> None:
    for key in CIS_SET:
        if not options.get(key):
            found.append(Finding(path, f"{key} is not set (CIS 2.1/2.4)"))
    for key, value in CIS_REQUIRED.items():
        if options.get(key, "").lower() != value:
            found.append(Finding(path, f"{key} must be {value} (CIS 2.2/2.5)"))
    for key in CIS_NOT_TRUE:
        if options.get(key, "false").lower() == "true":
            found.append(Finding(path, f"{key} must not be true (CIS 2.3/2.6)"))
    known = spec.etcd.release.known_variables
    removed = spec.etcd.release.removed_variables
    for key in options:
        if key in removed:
            found.append(Finding(path, f"{key} was removed in etcd {spec.etcd.release.line[0]}."
                                 f"{spec.etcd.release.line[1]}"))
        elif key.startswith("ETCD_") and key not in known:
            found.append(Finding(path, f"{key} is not an etcd setting (etcd only warns and ignores it)"))
    for key in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS"):
        for url in filter(None, options.get(key, "").split(",")):
            if url.startswith("http://") and not (key == "ETCD_LISTEN_CLIENT_URLS" and url.startswith(
                    "http://127.0.0.1:") and spec.etcd.plaintext_localhost):
                found.append(Finding(path, f"{key} has plaintext {url}"))


def _check_unit(path: str, text: str, options: Mapping[str, str], found: list[Finding]) -> None:
    exec_lines = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]
    for token in " ".join(exec_lines).split():
        if token.startswith("--"):
            name = etcd.variable(token.split("=", 1)[0])
            if name in options:
                found.append(Finding(path, f"{token.split('=', 1)[0]} is also set as {name} in "
                                     "options.env; etcd refuses to start"))
    if f"EnvironmentFile={PATHS.options}" not in text.splitlines():
        found.append(Finding(path, f"does not read {PATHS.options}"))


def _check_user_data(name: str, user_data: bytes, found: list[Finding]) -> None:
    try:
        # libyaml's safe loader when PyYAML has it: the pure-Python one takes about 40 ms a node.
        document: Any = yaml.load(user_data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError:
        found.append(Finding(f"{name}/user-data", "is not valid YAML"))
        return
    if not user_data.startswith(b"#cloud-config\n") or not isinstance(document, dict):
        found.append(Finding(f"{name}/user-data", "is not a #cloud-config mapping"))
        return
    for entry in document.get("write_files", []):
        if not isinstance(entry, dict):
            found.append(Finding(f"{name}/user-data", "write_files holds an entry that is not a mapping"))
            continue
        if str(entry.get("owner", "")).startswith("etcd") and entry.get("defer") is not True:
            found.append(Finding(f"{name}/user-data", f"{entry.get('path')} is owned by etcd "
                                 "but not deferred; cloud-init writes it before the user exists"))
        if str(entry.get("path", "")).endswith(".key") and entry.get("permissions") != "0600":
            found.append(Finding(f"{name}/user-data", f"{entry.get('path')} must be 0600"))


def _load_key(files: Mapping[str, bytes], path: str, previous: Manifest | None,
              found: list[Finding]) -> PrivateKey | None:
    if path not in files:
        return None
    try:
        key = load_key(files[path])
    except ValueError as exc:
        found.append(Finding(path, str(exc)))
        return None
    if not signs(key):
        found.append(Finding(path, "is a broken key: its own public key does not verify what it signs"))
        return None
    entry = previous.files.get(path) if previous else None
    if entry is not None and entry.public_key_sha256 not in (None, public_key_sha256(key)):
        found.append(Finding(path, "its public key differs from the one manifest.json records"))
    return key
