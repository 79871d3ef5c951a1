"""etcd: facts about etcd releases as data: the version and what each release line can do, its flags and
settings, its release tarball, and its snapshot files. Nothing here knows a spec or a node."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

CLIENT_PORT = 2379  # IANA-assigned (etcd docs: op-guide/configuration)
PEER_PORT = 2380
# etcd refuses to start outside these bounds (etcd server/config: election timeout must be at least 5x the
# heartbeat and at most 50 s).
MAX_ELECTION_TIMEOUT_MS = 50000
ELECTION_TO_HEARTBEAT_MIN = 5

# The release lines this tool renders for; each needs its own row in the tables below.
SUPPORTED = ((3, 4), (3, 6))
_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})")
# etcdutl snapshot restore --bump-revision/--mark-compacted first shipped in 3.5.10
# (etcd CHANGELOG-3.5); 3.5.1's etcdutl lacks them, 3.5.16's has them.
BUMP_REVISION_SINCE = (3, 5, 10)
# etcd supports a patch change, or one minor version up at a time; skipping a minor
# "is not supported and will likely fail" (https://etcd.io/docs/v3.6/upgrades/upgrading-etcd/).
# Before 3.5 -> 3.6, every member must run at least this 3.5 patch release; etcd has raised
# the floor several times (upgrades/upgrade_3_6.md: "make sure that all of your 3.5 members
# are updated to 3.5.32 or later").
UPGRADE_FLOORS: dict[tuple[int, int], tuple[int, int, int]] = {(3, 6): (3, 5, 32)}
# Settings a release line needs beyond the common ones. 3.4 still defaults to the
# deprecated capnslog logger and warns about it at every start.
VERSION_OPTIONS: dict[tuple[int, int], dict[str, str]] = {
    (3, 4): {"ETCD_LOGGER": "zap"},
}


class VersionChange(StrEnum):
    """What moving a cluster from one release to another is, as etcd sees it."""

    SAME = "same"
    PATCH = "patch"
    MINOR = "minor"  # one minor version up
    ROLLBACK = "rollback"  # one minor version down, allowed while an upgrade is unfinished
    DOWNGRADE = "downgrade"  # refused
    SKIP = "skip"  # more than one minor version up, refused


@dataclass(frozen=True, order=True)
class Version:
    """An etcd release, parsed once; callers ask it what the release can do instead of comparing strings."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """A release version like 3.5.16, or None."""
        match = _VERSION.fullmatch(text)
        return cls(*(int(p) for p in match.groups())) if match else None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def line(self) -> tuple[int, int]:
        """The release line, (3, 5) for 3.5.16."""
        return self.major, self.minor

    @property
    def supported(self) -> bool:
        return SUPPORTED[0] <= self.line <= SUPPORTED[1]

    @property
    def has_etcdutl(self) -> bool:
        """3.5 moved the offline snapshot commands (status, restore) from etcdctl to etcdutl."""
        return self.line >= (3, 5)

    @property
    def can_bump_revision(self) -> bool:
        return self >= Version(*BUMP_REVISION_SINCE)

    @property
    def tarball_top(self) -> str:
        """The top directory of an upstream release tarball."""
        return f"etcd-v{self}-linux-amd64"

    @property
    def tarball_name(self) -> str:
        """File name of the release tarball, as upstream names it on its releases page."""
        return f"{self.tarball_top}.tar.gz"

    @property
    def extra_options(self) -> dict[str, str]:
        """The ETCD_* settings this release line needs beyond the common ones."""
        return VERSION_OPTIONS.get(self.line, {})

    @property
    def known_variables(self) -> frozenset[str]:
        """Every ETCD_* name this release line reads (3.4 is checked against 3.5's list)."""
        flags = FLAGS_3_5 if self.line < (3, 6) else (FLAGS_3_5 - REMOVED_IN_3_6) | ADDED_IN_3_6
        return frozenset(variable(f) for f in flags) | EXTRA_VARIABLES

    @property
    def removed_variables(self) -> frozenset[str]:
        """ETCD_* names an earlier release read that this release line no longer accepts."""
        return frozenset(variable(f) for f in REMOVED_IN_3_6) if self.line >= (3, 6) else frozenset()

    def change_from(self, before: Version | None, allow_downgrade: bool = False) -> VersionChange:
        """What moving a cluster from `before` to this release is; `allow_downgrade` lets a rolling upgrade
        be rolled back by one minor version at most."""
        if before is None or before == self:
            return VersionChange.SAME
        if self < before:
            if allow_downgrade and self.major == before.major and before.minor - self.minor <= 1:
                return VersionChange.ROLLBACK
            return VersionChange.DOWNGRADE
        if self.line == before.line:
            return VersionChange.PATCH
        if self.major == before.major and self.minor == before.minor + 1:
            return VersionChange.MINOR
        return VersionChange.SKIP

    def upgrade_floor(self, before: Version | None) -> Version | None:
        """The patch release every member must run before moving to this one, when `before` is below it."""
        floor = Version(*UPGRADE_FLOORS[self.line]) if self.line in UPGRADE_FLOORS else None
        if before is None or floor is None or before.line != floor.line or before >= floor:
            return None
        return floor


@dataclass(frozen=True)
class Bundle:
    """The etcd release tarball to carry on each seed (data is None in url mode)."""

    name: str
    sha256: str
    data: bytes | None


def check_release_tarball(data: bytes, version: Version) -> str | None:
    """What is wrong with a release tarball for `version`, or None: it must hold <top>/etcd and <top>/etcdctl.

    The archive is read as a stream and only as far as it must be: most of an etcd tarball
    is the binaries' own bytes, and gzip cannot skip them.
    """
    want = version.tarball_top
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


def variable(flag: str) -> str:
    """The environment variable etcd reads for a flag: --peer-cert-file -> ETCD_PEER_CERT_FILE."""
    return "ETCD_" + flag.lstrip("-").upper().replace("-", "_")
