"""Outputs: every file of output/<cluster>/ for a spec and the material at hand, with its mode and content.

The build plans from this list (each file's status against the disk) and writes it; `verify`
compares the disk against the same list, made from the material it finds in the tree. A
reviewer's checkout has no private keys: their files, and the files that embed them, are then
listed without content and compared by the manifest's digests alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import jinja2

from . import hostkeys, layout
from .decisions import Decisions
from .etcd import Bundle
from .inputs import Snapshot
from .iso import SeedEntry
from .layout import NODE_FILES, PUBLIC_MODE, RESTORE_ON_SEED, SECRET_MODE, SEED_ISO
from .render import (
    NodePem,
    NodePublic,
    client_files,
    render_client,
    render_etcdctl_env,
    render_node,
    render_public,
)
from .spec import Spec


@dataclass(frozen=True)
class KeyPem:
    """A private key file: its PEM when at hand, the file's sha256, and its public half's sha256 (the
    manifest's record of which key it is)."""

    pem: bytes | None
    sha256: str
    public_sha256: str | None = None

    @classmethod
    def of(cls, pem: bytes, public_sha256: str | None = None) -> KeyPem:
        return cls(pem, hashlib.sha256(pem).hexdigest(), public_sha256)


@dataclass(frozen=True)
class CaPem:
    """A CA's certificate, and its key unless the CA is imported (the build writes no key then)."""

    cert_pem: bytes
    key: KeyPem | None


@dataclass(frozen=True)
class LeafPem:
    """A leaf's chain file (leaf, then CA) and its key."""

    chain_pem: bytes
    key: KeyPem


@dataclass(frozen=True)
class HostPem:
    """A node's SSH host key file and its public line."""

    key: KeyPem
    public_line: str


@dataclass(frozen=True)
class Material:
    """The PEM material the tree is made of: the CAs, every leaf, every node's host key, the rotation state."""

    ca: CaPem
    next_ca: CaPem | None  # phases 1 and 2 of a CA rotation
    leaves: Mapping[str, LeafPem]
    hosts: Mapping[str, HostPem]
    rotation_json: bytes | None  # layout.ROTATION, once a rotation has begun
    crl: bytes  # layout.CRL

    @property
    def trust_pem(self) -> bytes:
        """What nodes and clients trust: the CA, and during a rotation the new CA after it."""
        return self.ca.cert_pem + (self.next_ca.cert_pem if self.next_ca else b"")

    @property
    def ca_file(self) -> str:
        """The trust file's name in the keys directory, as clients name it."""
        return layout.trust_name(self.next_ca is not None)


@dataclass(frozen=True)
class OutputFile:
    """One file of output/<cluster>/: its mode, and its bytes (or, for a seed, its ISO's entries).

    `content` and `iso` are None for a secret that is not at hand (a reviewer's checkout).
    """

    path: str
    mode: int
    content: bytes | None
    iso: tuple[SeedEntry, ...] | None = None
    epoch: int | None = None  # an ISO's pinned dates
    public_key_sha256: str | None = None  # a key file's record in the manifest


def seed_entries(texts: Mapping[str, str], bundle: Bundle, snapshot: Snapshot | None = None) -> tuple[SeedEntry, ...]:
    """What goes on a node's seed ISO, as layout.seed_contents names it: the node's seed files, then the tarball
    (unless the nodes download it) and a restore's snapshot."""
    data = {name: texts[name].encode() for name in layout.SEED_NODE_FILES}
    if bundle.data is not None:
        data[bundle.name] = bundle.data
    if snapshot is not None:
        data[RESTORE_ON_SEED] = snapshot.data
    names = layout.seed_contents(bundle.name if bundle.data is not None else None, snapshot is not None)
    return tuple(SeedEntry(name, data[name]) for name in names)


def _key(path: str, key: KeyPem) -> OutputFile:
    return OutputFile(path, SECRET_MODE, key.pem, public_key_sha256=key.public_sha256)


def _public(path: str, content: bytes | str) -> OutputFile:
    return OutputFile(path, PUBLIC_MODE, content.encode() if isinstance(content, str) else content)


def output_files(spec: Spec, decided: Decisions, material: Material, env: jinja2.Environment, bundle: Bundle | str,
                 snapshot: Snapshot | None, epoch: int | None, not_before: Mapping[str, int]) -> list[OutputFile]:
    """Every file of output/<cluster>/ but the manifest, in the order the build lists them.

    Args:
        spec: the validated cluster definition.
        decided: what the build settled that the spec leaves open.
        material: the keys and certificates to write, or as the tree holds them.
        env: from render.make_environment().
        bundle: the etcd tarball, or only its sha256 when it is not at hand (seeds are then listed
            without their entries).
        snapshot: a restore's snapshot, carried on every seed.
        epoch: pins every ISO's dates; None uses each node's `not_before`.
        not_before: each node's seed date in seconds (its certificate's notBefore, or what the manifest
            records); a seed without one is listed without its entries.

    A leaf or host key missing from the material leaves out what needs it; `verify` has reported it.
    """
    files = [_public(layout.GITIGNORE_NAME, layout.GITIGNORE)]
    for name, ca in ((layout.CA_NAME, material.ca), (layout.NEXT_CA, material.next_ca)):
        if ca is None:
            continue
        if ca.key is not None:
            files.append(_key(layout.key_file(name), ca.key))
        files.append(_public(layout.cert_file(name), ca.cert_pem))
    if material.next_ca is not None:
        files.append(_public(layout.CA_BUNDLE, material.trust_pem))
    if material.rotation_json is not None:
        files.append(_public(layout.ROTATION, material.rotation_json))
    files.append(_public(layout.CRL, material.crl))
    for name, leaf in material.leaves.items():
        files += [_key(layout.key_file(name), leaf.key), _public(layout.cert_file(name), leaf.chain_pem)]
    for node in spec.nodes:
        if node.name in material.hosts:
            files.append(_key(layout.key_file(layout.host_key_name(node.name)), material.hosts[node.name].key))
    files.append(_public(layout.ETCDCTL_ENV, render_etcdctl_env(env, spec, material.ca_file)))
    files += [_public(path, render_client(env, spec, client, template, material.ca_file))
              for client in spec.clients for path, template in client_files(client)]
    if all(node.name in material.hosts for node in spec.nodes):
        lines = {name: host.public_line for name, host in material.hosts.items()}
        files.append(_public(layout.KNOWN_HOSTS, hostkeys.known_hosts(spec, lines)))
    bundle_sha = bundle.sha256 if isinstance(bundle, Bundle) else bundle
    for node in spec.nodes:
        if node.name not in material.leaves or node.name not in material.hosts:
            continue
        leaf, host = material.leaves[node.name], material.hosts[node.name]
        public = NodePublic(material.trust_pem, leaf.chain_pem, leaf.key.sha256, host.public_line, host.key.sha256,
                            material.crl)
        if leaf.key.pem is not None and host.key.pem is not None:
            pem = NodePem(material.trust_pem, leaf.chain_pem, leaf.key.pem, host.key.pem, host.public_line,
                          material.crl)
            texts = dict(render_node(env, spec, decided, node, pem, bundle_sha).texts)
        else:
            texts = dict(render_public(env, spec, decided, node, public, bundle_sha).texts)
        iso_epoch = epoch if epoch is not None else not_before.get(node.name)
        for node_file in NODE_FILES:
            path = layout.node_file(node.name, node_file.name)
            mode = SECRET_MODE if node_file.secret else PUBLIC_MODE
            if node_file.name == SEED_ISO:
                entries = seed_entries(texts, bundle, snapshot) if isinstance(bundle, Bundle) and \
                    "user-data" in texts and iso_epoch is not None else None
                files.append(OutputFile(path, mode, None, entries, iso_epoch))
            else:
                text = texts.get(node_file.name)
                files.append(OutputFile(path, mode, text.encode() if text is not None else None))
    return files
