"""etcd: facts about etcd as data (ports, paths, release naming, settings per version) and options.env."""

from __future__ import annotations

import io
import re
import tarfile
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
    """What is wrong with a release tarball for `version`, or None: it must hold <top>/etcd and <top>/etcdctl."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {PurePosixPath(m.name) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return "is not a .tar.gz archive"
    tops = {n.parts[0] for n in names if len(n.parts) == 2 and n.name in ("etcd", "etcdctl")}
    if not tops:
        return "holds no <dir>/etcd and <dir>/etcdctl; is it an etcd release tarball?"
    want = tarball_top(version)
    if want not in tops:
        return f"holds {', '.join(sorted(tops))}/, but etcd.version {version} needs {want}/"
    missing = [b for b in ("etcd", "etcdctl") if PurePosixPath(want, b) not in names]
    if missing:
        return f"lacks {want}/{missing[0]}"
    return None


def peer_url(node: Node) -> str:
    return f"https://{node.ip}:{PEER_PORT}"


def client_url(node: Node) -> str:
    return f"https://{node.ip}:{CLIENT_PORT}"


def client_endpoints(spec: Spec) -> str:
    """Every member's client URL, comma-separated."""
    return ",".join(client_url(node) for node in spec.nodes)


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
        "ETCD_INITIAL_CLUSTER": ",".join(f"{n.name}={peer_url(n)}" for n in spec.nodes),
        "ETCD_INITIAL_CLUSTER_STATE": "existing" if node.join else "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": spec.etcd.token,
        "ETCD_HEARTBEAT_INTERVAL": str(spec.etcd.heartbeat_interval),
        "ETCD_ELECTION_TIMEOUT": str(spec.etcd.election_timeout),
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
