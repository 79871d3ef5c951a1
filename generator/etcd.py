"""etcd: which ETCD_* settings each supported etcd version knows, as plain tables."""

from __future__ import annotations

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
