"""Layout: every path under output/<cluster>/, named once, and which of them hold secrets; what a key's name
may be, what a seed ISO holds, and which files the tree keeps outside the manifest.

Only the standard library is imported here: the fast path, sealing and verify read these names
without the heavy imports. The names the spec reserves and the tree's .gitignore are derived
from this module, so a new file of the tree is one edit here.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

HEX64 = re.compile(r"[0-9a-f]{64}")  # a sha256, as the manifest and every state file write it

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
SECRET_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755

PKI = "pki"  # keys (0700), certificates, and the build's own state
CLIENTS = "clients"  # each consumer's ready-to-use file


def pki_path(name: str) -> str:
    """A file of the keys directory, by its name there (ca.key, sealed.json): its path in the tree."""
    return f"{PKI}/{name}"


def in_pki(path: str) -> bool:
    """Whether a path of the tree is under the keys directory, at any depth."""
    return path.startswith(f"{PKI}/")


MANIFEST = "manifest.json"
KNOWN_HOSTS = "known_hosts"
GITIGNORE_NAME = ".gitignore"
# What the last run that changed nothing found, so that the next can skip its work (git-ignored).
CACHE = ".etcd-seed-cache.json"
# Every temporary file a run makes starts with this, beside its final name (a rename is
# atomic only within one directory). Git ignores the pattern; the next run removes leftovers.
TEMP_PREFIX = ".etcd-seed-tmp."

KEY_SUFFIX = ".key"
CERT_SUFFIX = ".crt"
CA_NAME = "ca"  # pki/ca.crt, pki/ca.key
ADMIN = "admin"  # the admin client: pki/admin.crt, pki/admin.key
NEXT_CA = "ca-next"  # the new CA during phases 1 and 2 of a CA rotation
CA_CERT_NAME = f"{CA_NAME}{CERT_SUFFIX}"  # what nodes and clients trust outside a CA rotation
CA_BUNDLE_NAME = "ca-bundle.crt"  # what nodes and clients trust during phases 1 and 2: the old CA, then the new
CA_BUNDLE = pki_path(CA_BUNDLE_NAME)
ROTATION = pki_path("rotation.json")  # the CA rotation's phase and the two CAs' fingerprints
JOURNAL = pki_path("pending.json")  # the keys and renames of a run in progress; gone when the run completes
SEALED_INDEX_NAME = "sealed.json"  # written by `seal`: which key each .key.age file holds
SEALED_INDEX = pki_path(SEALED_INDEX_NAME)
ETCDCTL_ENV = pki_path("etcdctl.env")  # etcdctl with the admin certificate
CRL_NAME = "crl.der"  # the certificates this cluster no longer accepts, signed by the CA that issues leaves
CRL = pki_path(CRL_NAME)
HOST_KEY_SUFFIX = ".ssh"  # pki/<node>.ssh.key: a node's SSH host key; <node>.ssh is its name in the manifest
SEALED_SUFFIX = ".age"  # pki/<name>.key.age: a key sealed with age, for committing
# A key's name: a leaf's or a CA's, or a node's host key (<node>.ssh). Key files, the journal's keys and the
# sealed index are all named by it; a node's or client's name (a DNS label) always fits.
KEY_NAME = re.compile(rf"[a-z0-9-]{{1,63}}(?:{re.escape(HOST_KEY_SUFFIX)})?")


@dataclass(frozen=True)
class NodeFile:
    """One file a node gets under output/<cluster>/<node>/.

    `secret` files hold the node key and never enter git; `on_iso` files are the
    NoCloud seed's own files (the ISO also carries the etcd tarball).
    """

    name: str
    secret: bool
    on_iso: bool


SEED_ISO = "seed.iso"
# Every file of a node, in the order they are written and listed.
NODE_FILES = (
    NodeFile("user-data", secret=True, on_iso=True),
    NodeFile("user-data.redacted", secret=False, on_iso=False),
    NodeFile("meta-data", secret=False, on_iso=True),
    NodeFile("network-config", secret=False, on_iso=True),
    NodeFile("options.env", secret=False, on_iso=False),
    NodeFile("etcd.service", secret=False, on_iso=False),
    NodeFile(SEED_ISO, secret=True, on_iso=False),
)
SECRET_NODE_FILES = tuple(f.name for f in NODE_FILES if f.secret)
SEED_NODE_FILES = tuple(f.name for f in NODE_FILES if f.on_iso)  # the NoCloud seed's own files
RESTORE_ON_SEED = "snapshot.db"  # a restore's snapshot, on every seed


def is_key_name(name: str) -> bool:
    """Whether a name is a key's, as KEY_NAME spells it."""
    return KEY_NAME.fullmatch(name) is not None


def key_file_name(name: str) -> str:
    """A key's file name in the keys directory, as the sealed index and the journal's moves name it."""
    return f"{name}{KEY_SUFFIX}"


def key_file(name: str) -> str:
    """A leaf's or CA's private key."""
    return pki_path(key_file_name(name))


def cert_file(name: str) -> str:
    """A leaf's chain (leaf, then CA) or a CA's certificate."""
    return pki_path(f"{name}{CERT_SUFFIX}")


def trust_name(rotating: bool) -> str:
    """The name, in the keys directory, of what nodes and clients trust: the CA, or the bundle of both CAs
    while a CA rotation trusts two."""
    return CA_BUNDLE_NAME if rotating else CA_CERT_NAME


def trust_file(rotating: bool) -> str:
    """The trust file's path in the tree (see trust_name)."""
    return pki_path(trust_name(rotating))


def host_key_name(node: str) -> str:
    """A node's SSH host key's name among the keys (pki/<name>.key, the manifest's records, the sealed index)."""
    return f"{node}{HOST_KEY_SUFFIX}"


def sealed_file(key: str) -> str:
    """A key file's sealed copy, beside it: its name for the key's name in the keys directory, its path for the
    key's path in the tree."""
    return f"{key}{SEALED_SUFFIX}"


def sealed_path(name: str) -> str:
    """A sealed copy's path in the tree, by its key's file name in the keys directory (ca.key), as the sealed
    index and a run's sealed moves name keys."""
    return pki_path(sealed_file(name))


def node_file(node: str, name: str) -> str:
    return f"{node}/{name}"


def seed_file(node: str) -> str:
    """A node's seed ISO."""
    return node_file(node, SEED_ISO)


def built_node(path: str) -> str | None:
    """The node whose seed a path is (<node>/seed.iso), or None for any other file: a node of the tree is a
    directory holding a seed."""
    node, _, name = path.partition("/")
    return node if node and name == SEED_ISO else None


def seed_contents(tarball: str | None, restore: bool) -> tuple[str, ...]:
    """The names on a node's seed ISO, in the order it is written: the NoCloud seed's own files, the etcd
    tarball (none when the nodes download it) and a restore's snapshot."""
    return (*SEED_NODE_FILES, *((tarball,) if tarball else ()), *((RESTORE_ON_SEED,) if restore else ()))


def key_name(path: str) -> str | None:
    """The name of the key a path holds (pki/<name>.key, the name as KEY_NAME spells it), or None for any
    other file."""
    head, _, name = path.partition("/")
    if head != PKI or not name.endswith(KEY_SUFFIX):
        return None
    name = name.removesuffix(KEY_SUFFIX)
    return name if is_key_name(name) else None


def is_key(path: str) -> bool:
    """Whether a path of the tree is a private key file."""
    return key_name(path) is not None


def sealed_key(path: str) -> str | None:
    """The key file whose sealed copy a path is (pki/<name>.key.age), or None for any other file."""
    key = path.removesuffix(SEALED_SUFFIX)
    return key if key != path and is_key(key) else None


def is_temp(path: str) -> bool:
    """Whether a path is a temporary file of a run (a killed run leaves them behind)."""
    return path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


def is_secret(path: str) -> bool:
    """Whether a path holds a secret by its name: a key, a node's full user-data or seed, a temporary file."""
    return path.endswith(KEY_SUFFIX) or path.rsplit("/", 1)[-1] in SECRET_NODE_FILES or is_temp(path)


# Files the tree keeps that the manifest does not list: the manifest itself, what `seal` writes, and the fast
# path's record. A run's leftovers (its temporary files, the journal) are not kept: verify names them.
UNLISTED = (MANIFEST, SEALED_INDEX, CACHE)


def kept_unlisted(path: str, listed: Collection[str]) -> bool:
    """Whether a file the manifest does not list belongs in the tree: one of UNLISTED, or the sealed copy of a
    key in `listed` (the manifest's paths)."""
    key = sealed_key(path)
    return path in UNLISTED or (key is not None and key in listed)


# The tree's own files, besides each leaf's pki/<name>.crt and .key, each node's directory and clients/.
TOP_FILES = (GITIGNORE_NAME, MANIFEST, KNOWN_HOSTS, CACHE)
DIRS = (PKI, CLIENTS)
PKI_FILES = (cert_file(CA_NAME), key_file(CA_NAME), cert_file(NEXT_CA), key_file(NEXT_CA), CA_BUNDLE, ROTATION,
             JOURNAL, SEALED_INDEX, ETCDCTL_ENV, CRL)

# Files a build deletes once it no longer writes them: a finished CA rotation's old CA and bundle (and
# the sealed copy of a key it deletes). Nothing else is ever deleted by a build.
DELETABLE = frozenset({cert_file(NEXT_CA), key_file(NEXT_CA), CA_BUNDLE, key_file(CA_NAME)})


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".", 1)[0]


# A node or client name becomes pki/<name>.crt and .key, and a node's name a directory beside pki/:
# none may take the stem of a file the build writes for itself, or a directory's name.
RESERVED_NAMES = frozenset({ADMIN, *DIRS, *(_stem(p) for p in (*TOP_FILES, *PKI_FILES) if not p.startswith("."))})

# Kept beside the generated tree so that `git add output/<cluster>` can never pick up a secret.
_SECRET_PATTERNS = "".join(f"*/{name}\n" for name in SECRET_NODE_FILES)
GITIGNORE = f"""\
# Secrets: private keys, and the files that embed them. Review user-data.redacted instead.
*{KEY_SUFFIX}
{_SECRET_PATTERNS}\
# Temporary files of a run that was killed; the next run removes them.
{TEMP_PREFIX}*
# What the last run that changed nothing found, so that the next one can skip its work.
{CACHE}
"""
