"""Layout: every path under output/<cluster>/, named once, and which of them hold secrets.

Only the standard library is imported here: the fast path, sealing and verify read these names
without the heavy imports. The names the spec reserves and the tree's .gitignore are derived
from this module, so a new file of the tree is one edit here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEX64 = re.compile(r"[0-9a-f]{64}")  # a sha256, as the manifest and every state file write it

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
SECRET_DIR_MODE = 0o700
PUBLIC_DIR_MODE = 0o755

PKI = "pki"  # keys (0700), certificates, and the build's own state
CLIENTS = "clients"  # each consumer's ready-to-use file

MANIFEST = "manifest.json"
KNOWN_HOSTS = "known_hosts"
GITIGNORE_NAME = ".gitignore"
# What the last run that changed nothing found, so that the next can skip its work (git-ignored).
CACHE = ".etcd-seed-cache.json"
# Every temporary file a run makes starts with this, beside its final name (a rename is
# atomic only within one directory). Git ignores the pattern; the next run removes leftovers.
TEMP_PREFIX = ".etcd-seed-tmp."

CA_NAME = "ca"  # pki/ca.crt, pki/ca.key
ADMIN = "admin"  # the admin client: pki/admin.crt, pki/admin.key
NEXT_CA = "ca-next"  # the new CA during phases 1 and 2 of a CA rotation
CA_BUNDLE = f"{PKI}/ca-bundle.crt"  # what nodes and clients trust during phases 1 and 2: the old CA, then the new
ROTATION = f"{PKI}/rotation.json"  # the CA rotation's phase and the two CAs' fingerprints
JOURNAL = f"{PKI}/pending.json"  # the keys and renames of a run in progress; gone when the run completes
SEALED_INDEX = f"{PKI}/sealed.json"  # written by `seal`: which key each .key.age file holds
ETCDCTL_ENV = f"{PKI}/etcdctl.env"  # etcdctl with the admin certificate
CRL = f"{PKI}/crl.der"  # the certificates this cluster no longer accepts, signed by the CA that issues leaves
HOST_KEY_SUFFIX = ".ssh"  # pki/<node>.ssh.key: a node's SSH host key; <node>.ssh is its name in the manifest
SEALED_SUFFIX = ".age"  # pki/<name>.key.age: a key sealed with age, for committing


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


def key_file(name: str) -> str:
    """A leaf's or CA's private key."""
    return f"{PKI}/{name}.key"


def cert_file(name: str) -> str:
    """A leaf's chain (leaf, then CA) or a CA's certificate."""
    return f"{PKI}/{name}.crt"


def host_key_name(node: str) -> str:
    """A node's SSH host key's name among the keys (pki/<name>.key, the manifest's records, the sealed index)."""
    return f"{node}{HOST_KEY_SUFFIX}"


def node_file(node: str, name: str) -> str:
    return f"{node}/{name}"


def key_name(path: str) -> str | None:
    """The name of the key a path holds (pki/<name>.key), or None for any other file."""
    head, _, name = path.partition("/")
    if head != PKI or "/" in name or not name.endswith(".key"):
        return None
    return name.removesuffix(".key")


def is_key(path: str) -> bool:
    """Whether a path of the tree is a private key file."""
    return key_name(path) is not None


def is_secret(path: str) -> bool:
    """Whether a path holds a secret by its name: a key, a node's full user-data or seed, a temporary file."""
    name = path.rsplit("/", 1)[-1]
    return path.endswith(".key") or name in SECRET_NODE_FILES or name.startswith(TEMP_PREFIX)


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
*.key
{_SECRET_PATTERNS}\
# Temporary files of a run that was killed; the next run removes them.
{TEMP_PREFIX}*
# What the last run that changed nothing found, so that the next one can skip its work.
{CACHE}
"""
