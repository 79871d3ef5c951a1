"""Spec: the model of a cluster definition, as frozen dataclasses; loader.py makes one from cluster.yaml."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .etcd import Version


class KeyType(StrEnum):
    """The private key types the generator issues."""

    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"


GiB = 1 << 30
ROOT_USER = "root"  # etcd's superuser; the admin certificate's CN, so that it is root once auth is on


@dataclass(frozen=True)
class Node:
    """One etcd member: its short name, FQDN, static IPv4 and NIC MAC.

    `join` marks a member added to a running cluster: on its first boot it adds itself
    as a learner and promotes itself. `replace` marks a member whose machine or disk was
    lost: it gets a new key, removes its stale entry and joins the same way.
    """

    name: str
    fqdn: str
    ip: ipaddress.IPv4Address
    mac: str
    join: bool = False
    replace: bool = False
    data_device: str | None = None  # this node's data disk, over etcd.data_device (a by-id name is per machine)
    data_fs: str | None = None  # over etcd.data_fs

    @property
    def joins(self) -> bool:
        """Whether this member adds itself to a running cluster on its first boot."""
        return self.join or self.replace


@dataclass(frozen=True)
class Network:
    """The node subnet shared by every member."""

    prefix: int
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    search: tuple[str, ...]
    ntp: Ntp | None = None


@dataclass(frozen=True)
class Ntp:
    """Time servers for the image's time daemon, and how long etcd waits at boot for a synchronised clock."""

    servers: tuple[str, ...]
    pools: tuple[str, ...]
    wait_seconds: int


@dataclass(frozen=True)
class Restore:
    """A snapshot every member restores from on its first boot with an empty data dir."""

    snapshot: Path
    bump_revision: int


# How much a restore adds to the revision by default: far beyond any write rate between the
# snapshot and the restore, so that no watcher sees a revision twice (etcd-io/etcd#16028).
DEFAULT_BUMP_REVISION = 1_000_000_000


@dataclass(frozen=True)
class Etcd:
    """Which etcd to install, from where, and how to tune it."""

    version: str
    bundle: Path | None
    url: str | None
    sha256: str | None
    heartbeat_interval: int
    election_timeout: int
    token: str
    plaintext_localhost: bool
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "1h"
    quota_backend_bytes: int = 2 * GiB
    restore: Restore | None = None
    data_device: str | None = None  # a disk of its own for etcd's data and WAL, mounted at PATHS.home
    data_fs: str = "ext4"

    @functools.cached_property
    def release(self) -> Version:
        """The version, parsed once (the spec admits only versions that parse)."""
        release = Version.parse(self.version)
        if release is None:
            raise ValueError(f"etcd.version: {self.version!r} was not checked")
        return release

    @property
    def tarball_name(self) -> str:
        """File name of the release tarball, as upstream names it."""
        return self.release.tarball_name


@dataclass(frozen=True)
class CASource:
    """An existing CA to import instead of generating one."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Key type and lifetimes for everything the generator issues."""

    key_type: KeyType
    validity_days: int
    ca_validity_days: int
    renew_before_days: int
    ca: CASource | None
    ca_next: CASource | None = None  # the CA a rotation moves to, when it is imported too


@dataclass(frozen=True)
class Flannel:
    """The flannel network config written into etcd once the cluster is up."""

    network: ipaddress.IPv4Network
    backend: str
    subnet_len: int


@dataclass(frozen=True)
class Backup:
    """Scheduled snapshots each member takes of itself (a systemd timer)."""

    enabled: bool = True
    schedule: str = "daily"
    keep: int = 7
    dir: str = "/var/backups/etcd"


@dataclass(frozen=True)
class Defrag:
    """Scheduled defragmentation: each member, at its own minute, defragments itself when it is worth it."""

    enabled: bool = True
    days: str = ""  # systemd weekdays ("Sun", "Mon..Fri"), or "" for every day
    time: str = "03:30"  # the first node's HH:MM; node i starts i * stagger_minutes later
    stagger_minutes: int = 10
    min_free_percent: int = 50  # of the database file, free after compaction

    def start_minute(self, index: int) -> int:
        """The minute of the day the index-th node starts: no two members defragment at the same minute."""
        hour, minute = (int(n) for n in self.time.split(":"))
        return hour * 60 + minute + index * self.stagger_minutes

    def on_calendar(self, index: int) -> str:
        """The OnCalendar= of the index-th node's timer."""
        start = self.start_minute(index)
        return f"{self.days + ' ' if self.days else ''}*-*-* {start // 60:02d}:{start % 60:02d}:00"


class ClientUse(StrEnum):
    """Which consumer a client certificate is for: it decides the ready-to-use file written beside it."""

    ETCDCTL = "etcdctl"  # clients/<name>.etcdctl.env: ETCDCTL_* variables
    FLANNEL = "flannel"  # clients/<name>.flanneld.env: FLANNELD_ETCD_* variables
    KUBE_APISERVER = "kube-apiserver"  # clients/<name>.kube-apiserver.args: the --etcd-* flags
    PROMETHEUS = "prometheus"  # clients/<name>.prometheus.yml and .etcd-rules.yml: a scrape job and alert rules


CLIENT_USES = tuple(u.value for u in ClientUse)
KEY_TYPES = tuple(k.value for k in KeyType)
FLANNEL_BACKENDS = ("vxlan", "host-gw", "udp", "ipip", "wireguard")
DATA_FILESYSTEMS = ("ext4", "xfs")


class Mode(StrEnum):
    """What a role may do on its keys: etcd's permission types."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


@dataclass(frozen=True)
class Access:
    """One grant of a consumer's role: a key, or every key under a prefix, and the mode."""

    key: str
    prefix: bool
    mode: Mode

    def covers(self, other: Access) -> bool:
        """Whether this grant's keys include some of `other`'s (ranges that overlap)."""
        if self.prefix and other.prefix:
            return self.key.startswith(other.key) or other.key.startswith(self.key)
        if self.prefix:
            return other.key.startswith(self.key)
        if other.prefix:
            return self.key.startswith(other.key)
        return self.key == other.key


# What each consumer needs, when its spec entry names no access of its own (checked on real etcd,
# tests/etcd/test_auth.py). flannel reads <prefix>/config and leases subnets under <prefix>/subnets/.
# kube-apiserver keeps everything under --etcd-prefix (/registry) and compacts through a transaction
# on the unprefixed key compact_rev_key (k8s.io/apiserver pkg/storage/etcd3/compact.go); compaction
# itself needs no permission. Prometheus scrapes /metrics, which etcd serves outside authentication.
DEFAULT_ACCESS: dict[ClientUse, tuple[Access, ...]] = {
    ClientUse.ETCDCTL: (),
    ClientUse.FLANNEL: (Access("/coreos.com/network/", True, Mode.READWRITE),),
    ClientUse.KUBE_APISERVER: (Access("/registry/", True, Mode.READWRITE),
                               Access("compact_rev_key", False, Mode.READWRITE)),
    ClientUse.PROMETHEUS: (),
}


@dataclass(frozen=True)
class Auth:
    """etcd's authentication: users from the certificates' CNs, a role per consumer.

    `enabled` None: the build decides (auth.decide: on for a new cluster, as the previous build had it otherwise).
    """

    enabled: bool | None = None


@dataclass(frozen=True)
class Client:
    """A consumer of the cluster (flannel, kube-apiserver ...) with a clientAuth-only certificate of its own.

    `dir` is where the consumer's host keeps the CA, certificate and key; its ready-to-use file names them there.
    """

    name: str
    use: ClientUse
    cn: str
    o: str | None
    validity_days: int
    dir: str
    revoked: bool = False  # cut off: its last certificate goes on the CRL, and it gets no new one
    access: tuple[Access, ...] = ()  # its role's grants, once auth is on


@dataclass(frozen=True)
class Admin:
    """An optional login user for operators."""

    name: str
    ssh_authorized_keys: tuple[str, ...]
    password_hash: str | None
    sudo: bool


@dataclass(frozen=True)
class Spec:
    """A whole, validated cluster definition."""

    name: str
    domain: str
    network: Network
    nodes: tuple[Node, ...]
    etcd: Etcd
    pki: Pki
    flannel: Flannel | None
    admin: Admin | None
    backup: Backup = Backup()
    clients: tuple[Client, ...] = ()  # the consumers in use; a revoked one is only in `revoked`
    defrag: Defrag = Defrag()
    revoked: tuple[str, ...] = ()  # clients marked revoked: true: no certificate, and the last one on the CRL
    auth: Auth = Auth()
    # Each set field's value as a short sha256 (fields.digests), for the manifest: what the next plan compares.
    field_digests: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def founders(self) -> tuple[Node, ...]:
        """The members that start the cluster: every node that does not join a running one."""
        return tuple(n for n in self.nodes if not n.join)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """The node network: the first node's address under the prefix."""
        return ipaddress.IPv4Network(f"{self.nodes[0].ip}/{self.network.prefix}", strict=False)
