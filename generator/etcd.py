"""etcd: facts about etcd as data (ports, paths, release naming, settings per version) and options.env."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .spec import Node, Spec

CLIENT_PORT = 2379  # IANA-assigned (etcd docs: op-guide/configuration)
PEER_PORT = 2380


@dataclass(frozen=True)
class Paths:
    """Where things live on a node."""

    home: str = "/opt/etcd"
    data_dir: str = "/opt/etcd/data"
    wal_dir: str = "/opt/etcd/wal"
    ssl: str = "/etc/ssl/etcd"
    ca: str = "/etc/ssl/etcd/ca.crt"
    cert: str = "/etc/ssl/etcd/etcd.crt"
    key: str = "/etc/ssl/etcd/etcd.key"
    options: str = "/etc/etcd/options.env"
    bin: str = "/usr/local/bin"
    member_config: str = "/etc/etcd/member.json"  # what etcd-seed-member needs to know of this node
    membership_env: str = "/opt/etcd/membership.env"  # written by etcd-seed-member when the node joins
    member_bin: str = "/usr/local/sbin/etcd-seed-member"
    backup_bin: str = "/usr/local/sbin/etcd-seed-backup"
    promote_unit: str = "/etc/systemd/system/etcd-seed-promote.service"
    backup_unit: str = "/etc/systemd/system/etcd-backup.service"
    backup_timer: str = "/etc/systemd/system/etcd-backup.timer"
    restore_scratch: str = "/opt/etcd/restore.tmp"  # a restore is built here, then renamed into place
    unit: str = "/etc/systemd/system/etcd.service"
    flannel_unit: str = "/etc/systemd/system/etcd-flannel-config.service"
    staged: str = "/var/lib/etcd-seed/seed"  # where cloud-init writes the seed's files for the install step
    version_file: str = "/var/lib/etcd-seed/version"  # the etcd release the install step last put in place
    # sha256 of the tarball and of each binary it installed: a boot with the same seed checks these
    # instead of unpacking the tarball again, and repairs a binary that a power loss left damaged.
    installed: str = "/var/lib/etcd-seed/installed.sha256"
    restoring: str = "/var/lib/etcd-seed/restoring"  # present while a restore moves its files into place
    boot_unit: str = "/etc/systemd/system/etcd-seed-boot.service"  # converges to the seed before etcd starts
    install_bin: str = "/usr/local/sbin/etcd-seed-install"
    flannel_bin: str = "/usr/local/sbin/etcd-flannel-config"


PATHS = Paths()

# What an options.env value may hold. systemd's EnvironmentFile parser and sh read
# these the same way, unquoted: no quote, backslash, space, `$`, `#` or line break.
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/,=@+-]*")
SAFE_NAME = re.compile(r"ETCD_[A-Z0-9_]+")


@dataclass(frozen=True)
class Bundle:
    """The etcd release tarball to carry on each seed (data is None in url mode)."""

    name: str
    sha256: str
    data: bytes | None


def tarball_top(version: str) -> str:
    """The top directory of an upstream release tarball."""
    return f"etcd-v{version}-linux-amd64"


def tarball_name(version: str) -> str:
    """File name of the release tarball, as upstream names it on its releases page."""
    return f"{tarball_top(version)}.tar.gz"


def check_release_tarball(data: bytes, version: str) -> str | None:
    """What is wrong with a release tarball for `version`, or None: it must hold <top>/etcd and <top>/etcdctl.

    The archive is read as a stream and only as far as it must be: most of an etcd tarball
    is the binaries' own bytes, and gzip cannot skip them.
    """
    want = tarball_top(version)
    needed = {PurePosixPath(want, "etcd"), PurePosixPath(want, "etcdctl")}
    names: set[PurePosixPath] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                if member.isfile():
                    names.add(PurePosixPath(member.name))
                    if needed <= names:
                        return None
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error):
        return "is not a .tar.gz archive"
    tops = {n.parts[0] for n in names if len(n.parts) == 2 and n.name in ("etcd", "etcdctl")}
    if not tops:
        return "holds no <dir>/etcd and <dir>/etcdctl; is it an etcd release tarball?"
    if want not in tops:
        return f"holds {', '.join(sorted(tops))}/, but etcd.version {version} needs {want}/"
    return f"lacks {min(str(n) for n in needed - names)}"


# A bbolt file starts with two meta pages; each holds this magic after the 16-byte page header
# (go.etcd.io/bbolt: page.go, db.go). `etcdctl snapshot save` appends the sha256 of the database,
# which makes the size 32 more than a multiple of 512; `snapshot restore` checks it
# (etcdutl/snapshot: hasHash := size%512 == sha256.Size).
BOLT_MAGIC = 0xED0CDAED
_HASH_SIZE = 32


def check_snapshot(data: bytes) -> str | None:
    """What is wrong with an etcd snapshot file, or None: a bbolt database with its sha256 trailer, intact."""
    if len(data) < 4096 or int.from_bytes(data[16:20], "little") != BOLT_MAGIC:
        return "is not an etcd snapshot (no bbolt database header)"
    if len(data) % 512 != _HASH_SIZE:
        return ("has no sha256 trailer: it is not a file from 'etcdctl snapshot save' (a copy of member/snap/db "
                "cannot be checked); take a snapshot with etcdctl snapshot save")
    if hashlib.sha256(data[:-_HASH_SIZE]).digest() != data[-_HASH_SIZE:]:
        return "is damaged: its contents do not match the sha256 it carries, and etcd would refuse to restore it"
    return None


# etcd supports a patch change, or one minor version up at a time; skipping a minor
# "is not supported and will likely fail" (https://etcd.io/docs/v3.6/upgrades/upgrading-etcd/).
# Before 3.5 -> 3.6, every member must run at least this 3.5 patch release; etcd has raised
# the floor several times (upgrades/upgrade_3_6.md: "make sure that all of your 3.5 members
# are updated to 3.5.32 or later").
UPGRADE_FLOORS: dict[tuple[int, int], tuple[int, int, int]] = {(3, 6): (3, 5, 32)}


def _parts(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(p) for p in version.split("."))
    return major, minor, patch


def version_change(before: str | None, after: str, allow_downgrade: bool = False) -> tuple[str, str | None]:
    """How moving a cluster from `before` to `after` goes: (words for the operator, refusal or None).

    `allow_downgrade` lets a rolling upgrade be rolled back by one minor version at most.

    Returns:
        A sentence saying what kind of change this is, and the reason it is refused (None when allowed).
    """
    if before is None or before == after:
        return "", None
    old, new = _parts(before), _parts(after)
    if new < old and allow_downgrade and new[0] == old[0] and old[1] - new[1] <= 1:
        return f"rollback: etcd {before} -> {after} (only while some members still run {after})", None
    if new < old:
        return (f"downgrade: etcd {before} -> {after}",
                f"{before} -> {after} is a downgrade; etcd only goes back while a rolling upgrade is "
                "unfinished (some members still on the old version): build with --allow-downgrade for that")
    if new[:2] == old[:2]:
        return f"patch upgrade: etcd {before} -> {after}", None
    if new[0] == old[0] and new[1] == old[1] + 1:
        return f"upgrade: etcd {before} -> {after} (one minor step)", None
    return "", (f"{before} -> {after} skips a minor version, which etcd does not support; upgrade to the "
                f"newest {old[0]}.{old[1] + 1}.x first, roll every node, then build again")


def upgrade_floor_warning(before: str | None, after: str) -> str | None:
    """A warning when the cluster's current version is below the floor etcd requires for this upgrade."""
    if before is None:
        return None
    floor = UPGRADE_FLOORS.get(_parts(after)[:2])
    if floor is None or _parts(before)[:2] != floor[:2] or _parts(before) >= floor:
        return None
    wanted = ".".join(map(str, floor))
    return (f"etcd.version: every member must run {wanted} or later before moving to {after} "
            f"(etcd's upgrade_3_6 guide); the cluster runs {before}: do a patch upgrade to {wanted} first")


def peer_url(node: Node) -> str:
    return f"https://{node.ip}:{PEER_PORT}"


def client_url(node: Node) -> str:
    return f"https://{node.ip}:{CLIENT_PORT}"


def client_endpoints(spec: Spec, founders_only: bool = False) -> str:
    """Every member's client URL (or only the founders'), comma-separated."""
    return ",".join(client_url(node) for node in (spec.founders if founders_only else spec.nodes))


# How long etcd-seed-member keeps retrying a step that may yet succeed, and how long it pauses
# after one that cannot before systemd starts it again.
JOIN_TIMEOUT_S = 900
REFUSED_PAUSE_S = 60


def member_config(spec: Spec, node: Node) -> dict[str, object]:
    """/etc/etcd/member.json: what etcd-seed-member needs to add this node to its cluster."""
    return {
        "name": node.name,
        "mode": "replace" if node.replace else "join" if node.join else "none",
        "peer_url": peer_url(node),
        "client_url": client_url(node),
        # Only a joining member asks its peers anything; a founder's seed must not change when one joins.
        "peers": [client_url(n) for n in spec.nodes if n != node] if node.joins else [],
        "etcdctl": f"{PATHS.bin}/etcdctl",
        "ca": PATHS.ca, "cert": PATHS.cert, "key": PATHS.key,
        "data_dir": PATHS.data_dir, "wal_dir": PATHS.wal_dir,
        "membership_env": PATHS.membership_env,
        "timeout_s": JOIN_TIMEOUT_S, "refused_pause_s": REFUSED_PAUSE_S,
        # A restore seed: etcd must never start on an empty data dir, which would bootstrap an empty cluster.
        "restore": spec.etcd.restore is not None,
    }


def restore_argv(spec: Spec, node: Node) -> list[str]:
    """The flags of `snapshot restore` for this member, after the tool and the snapshot's path."""
    assert spec.etcd.restore is not None  # noqa: S101 - callers check
    argv = [f"--name={node.name}", f"--initial-cluster={initial_cluster(spec, node)}",
            f"--initial-cluster-token={spec.etcd.cluster_token}",
            f"--initial-advertise-peer-urls={peer_url(node)}"]
    if spec.etcd.restore.bump_revision:
        argv += [f"--bump-revision={spec.etcd.restore.bump_revision}", "--mark-compacted"]
    return argv


def initial_cluster(spec: Spec, node: Node) -> str:
    """ETCD_INITIAL_CLUSTER: the founders, and a joining member itself.

    Adding a member changes no other member's seed; a joining member's real list comes from
    `member add` at its first boot.
    """
    members = [n for n in spec.nodes if not n.join or n == node]
    return ",".join(f"{n.name}={peer_url(n)}" for n in members)


def options(spec: Spec, node: Node) -> dict[str, str]:
    """The settings of one member, as options.env holds them (CIS Kubernetes Benchmark section 2).

    Raises:
        ValueError: a value holds a character outside SAFE_VALUE; the spec's checks make this a bug.
    """
    listen_client = ([f"http://127.0.0.1:{CLIENT_PORT}"] if spec.etcd.plaintext_localhost else []) \
        + [client_url(node)]
    values = {
        "ETCD_NAME": node.name,
        "ETCD_DATA_DIR": PATHS.data_dir,
        "ETCD_WAL_DIR": PATHS.wal_dir,
        "ETCD_LISTEN_PEER_URLS": peer_url(node),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer_url(node),
        "ETCD_PEER_CERT_FILE": PATHS.cert,
        "ETCD_PEER_KEY_FILE": PATHS.key,
        "ETCD_PEER_TRUSTED_CA_FILE": PATHS.ca,
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_AUTO_TLS": "false",
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_client),
        "ETCD_ADVERTISE_CLIENT_URLS": client_url(node),
        "ETCD_CERT_FILE": PATHS.cert,
        "ETCD_KEY_FILE": PATHS.key,
        "ETCD_TRUSTED_CA_FILE": PATHS.ca,
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_AUTO_TLS": "false",
        # A member that joins a running cluster learns the membership when it adds itself
        # (etcd-seed-member writes it to membership.env); these are what the founders start with.
        "ETCD_INITIAL_CLUSTER": initial_cluster(spec, node),
        "ETCD_INITIAL_CLUSTER_STATE": "existing" if node.joins else "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": spec.etcd.cluster_token,
        "ETCD_HEARTBEAT_INTERVAL": str(spec.etcd.heartbeat_interval),
        "ETCD_ELECTION_TIMEOUT": str(spec.etcd.election_timeout),
        # No kube-apiserver compacts a flannel-only etcd: without this its history grows
        # until the quota stops every write (etcd docs: op-guide/maintenance).
        "ETCD_AUTO_COMPACTION_MODE": spec.etcd.auto_compaction_mode,
        "ETCD_AUTO_COMPACTION_RETENTION": spec.etcd.auto_compaction_retention,
        "ETCD_QUOTA_BACKEND_BYTES": str(spec.etcd.quota_backend_bytes),
        **version_options(spec.etcd.minor),
    }
    for name, value in values.items():
        if not SAFE_NAME.fullmatch(name) or not SAFE_VALUE.fullmatch(value):
            raise ValueError(f"options.env: {name}={value!r} holds a character outside the safe set")
    return values

# Every flag of etcd 3.5.1 (`etcd --help`); each is also read as ETCD_<FLAG>.
FLAGS_3_5 = frozenset({
    "advertise-client-urls", "auth-token", "auth-token-ttl", "auto-compaction-mode",
    "auto-compaction-retention", "auto-tls", "backend-batch-interval", "backend-batch-limit",
    "backend-bbolt-freelist-type", "bcrypt-cost", "cert-file", "cipher-suites",
    "client-cert-allowed-hostname", "client-cert-auth", "client-crl-file", "config-file", "cors",
    "data-dir", "discovery", "discovery-fallback", "discovery-proxy", "discovery-srv",
    "discovery-srv-name", "election-timeout", "enable-log-rotation", "enable-pprof", "enable-v2",
    "experimental-bootstrap-defrag-threshold-megabytes", "experimental-compaction-batch-limit",
    "experimental-corrupt-check-time", "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-instance-id", "experimental-distributed-tracing-service-name",
    "experimental-enable-distributed-tracing", "experimental-enable-lease-checkpoint",
    "experimental-enable-v2v3", "experimental-initial-corrupt-check",
    "experimental-peer-skip-client-san-verification",
    "experimental-txn-mode-write-with-shared-buffer", "experimental-warning-apply-duration",
    "experimental-watch-progress-notify-interval", "force-new-cluster", "grpc-keepalive-interval",
    "grpc-keepalive-min-time", "grpc-keepalive-timeout", "heartbeat-interval", "host-whitelist",
    "initial-advertise-peer-urls", "initial-cluster", "initial-cluster-state",
    "initial-cluster-token", "initial-election-tick-advance", "key-file", "listen-client-urls",
    "listen-metrics-urls", "listen-peer-urls", "log-level", "log-outputs",
    "log-rotation-config-json", "logger", "max-request-bytes", "max-snapshots", "max-txn-ops",
    "max-wals", "metrics", "name", "peer-auto-tls", "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname", "peer-cert-file", "peer-client-cert-auth", "peer-crl-file",
    "peer-key-file", "peer-trusted-ca-file", "pre-vote", "proxy", "proxy-dial-timeout",
    "proxy-failure-wait", "proxy-read-timeout", "proxy-refresh-interval", "proxy-write-timeout",
    "quota-backend-bytes", "self-signed-cert-validity", "snapshot-count", "socket-reuse-address",
    "socket-reuse-port", "strict-reconfig-check", "trusted-ca-file", "unsafe-no-fsync",
    "v2-deprecation", "wal-dir",
})

# etcd 3.6 removed the v2 API and the v2 proxy (etcd's 3.6 upgrade notes).
REMOVED_IN_3_6 = frozenset({
    "enable-v2", "experimental-enable-v2v3", "proxy", "proxy-dial-timeout", "proxy-failure-wait",
    "proxy-read-timeout", "proxy-refresh-interval", "proxy-write-timeout",
})
# Flags 3.6 added that a hand-edited options.env may use; not exhaustive, so that an
# unknown name here is reported as a warning rather than an error for 3.6.
ADDED_IN_3_6 = frozenset({
    "feature-gates", "discovery-endpoints", "discovery-token", "discovery-dial-timeout",
    "discovery-request-timeout", "discovery-keepalive-time", "discovery-keepalive-timeout",
    "discovery-insecure-transport", "discovery-insecure-skip-tls-verify", "discovery-cert",
    "discovery-key", "discovery-cacert", "discovery-user", "discovery-password",
    "snapshot-catchup-entries", "max-learners", "log-format", "enable-grpc-gateway",
    "client-cert-file", "client-key-file", "peer-client-cert-file", "peer-client-key-file",
})
# Read from the environment by etcd itself, not through a flag.
EXTRA_VARIABLES = frozenset({"ETCD_UNSUPPORTED_ARCH"})


# Settings a release line needs beyond the common ones. 3.4 still defaults to the
# deprecated capnslog logger and warns about it at every start.
VERSION_OPTIONS: dict[tuple[int, int], dict[str, str]] = {
    (3, 4): {"ETCD_LOGGER": "zap"},
}


def version_options(minor: tuple[int, int]) -> dict[str, str]:
    """The extra ETCD_* settings for an etcd release line."""
    return VERSION_OPTIONS.get(minor, {})


def variable(flag: str) -> str:
    """The environment variable etcd reads for a flag: --peer-cert-file -> ETCD_PEER_CERT_FILE."""
    return "ETCD_" + flag.lstrip("-").upper().replace("-", "_")


def known_variables(minor: tuple[int, int]) -> frozenset[str]:
    """Every ETCD_* name an etcd release line reads (3.4 is checked against 3.5's list)."""
    flags = FLAGS_3_5 if minor < (3, 6) else (FLAGS_3_5 - REMOVED_IN_3_6) | ADDED_IN_3_6
    return frozenset(variable(f) for f in flags) | EXTRA_VARIABLES


def removed_variables(minor: tuple[int, int]) -> frozenset[str]:
    """ETCD_* names an earlier release read that this release line no longer accepts."""
    return frozenset(variable(f) for f in REMOVED_IN_3_6) if minor >= (3, 6) else frozenset()
