"""Node: what one etcd member gets from its seed: its options.env, its membership and
restore arguments, and the table of files the seed stages and the install step puts in place."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import auth
from .etcd import CLIENT_PORT, PEER_PORT
from .paths import PATHS

if TYPE_CHECKING:
    from .decisions import Decisions
    from .spec import Node, Spec


# What an options.env value may hold. systemd's EnvironmentFile parser and sh read
# these the same way, unquoted: no quote, backslash, space, `$`, `#` or line break.
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/,=@+-]*")
SAFE_NAME = re.compile(r"ETCD_[A-Z0-9_]+")
# A database file above this share of the quota is worth defragmenting, and is alerted on.
NEAR_QUOTA_PERCENT = 80


def peer_url(node: Node) -> str:
    return f"https://{node.ip}:{PEER_PORT}"


def client_url(node: Node) -> str:
    return f"https://{node.ip}:{CLIENT_PORT}"


def client_endpoints(spec: Spec, founders_only: bool = False) -> str:
    """Every member's client URL (or only the founders'), comma-separated."""
    return ",".join(client_url(node) for node in (spec.founders if founders_only else spec.nodes))


# Where each node tells `etcd-seed status` which seed it runs: the instance-id of the seed it has applied, put
# there with the node's own certificate once etcd runs that seed (etcd-seed-member report).
SEED_KEY_PREFIX = "/etcd-seed/seed/"


def seed_key(node: Node) -> str:
    return SEED_KEY_PREFIX + node.name


# How long etcd-seed-member keeps retrying a step that may yet succeed, and how long it pauses
# after one that cannot before systemd starts it again.
JOIN_TIMEOUT_S = 900
REFUSED_PAUSE_S = 60


def member_config(spec: Spec, decided: Decisions, node: Node) -> dict[str, object]:
    """/etc/etcd/member.json: what etcd-seed-member needs to add this node to its cluster."""
    return {
        "name": node.name,
        "mode": "replace" if node.replace else "join" if node.join else "none",
        "peer_url": peer_url(node),
        "client_url": client_url(node),
        # Only a joining member asks its peers anything; a founder's seed must not change when one joins.
        "peers": [client_url(n) for n in spec.nodes if n != node] if node.joins else [],
        # With auth on, a joining member's user must exist before it adds itself: this node creates it.
        **({"auth_by": spec.nodes[0].name} if node.joins and decided.auth.managed else {}),
        "etcdctl": f"{PATHS.bin}/etcdctl",
        "ca": PATHS.ca, "cert": PATHS.cert, "key": PATHS.key,
        "data_dir": PATHS.data_dir, "wal_dir": PATHS.wal_dir,
        "membership_env": PATHS.membership_env,
        "applied": PATHS.applied, "seed_key": seed_key(node),
        "timeout_s": JOIN_TIMEOUT_S, "refused_pause_s": REFUSED_PAUSE_S,
        # A restore seed: etcd must never start on an empty data dir, which would bootstrap an empty cluster.
        "restore": spec.etcd.restore is not None,
        # `etcd-seed-member clock`: how long etcd waits at boot for a synchronised clock; 0 without network.ntp.
        "clock_wait_s": spec.network.ntp.wait_seconds if spec.network.ntp else 0,
        # `etcd-seed-member defrag`: when reclaiming the free pages of the database file is worth a pause.
        "defrag": {"min_free_percent": spec.defrag.min_free_percent, "near_quota_percent": NEAR_QUOTA_PERCENT,
                   "quota_bytes": spec.etcd.quota_backend_bytes},
        # etcd starts only on this member's own data disk: the install step wrote its owner file.
        **({"disk_owner": {"path": PATHS.disk_owner, "want": disk_owner(spec, node)}}
           if data_disk(spec, node) else {}),
        # Only the node that applies them: the other founders' seeds do not change when a consumer or node does.
        **({"auth": auth.grants(spec, decided.auth).to_json()} if applies_auth(spec, decided, node) else {}),
    }


@dataclass(frozen=True)
class DataDisk:
    """The disk a node keeps etcd's data and WAL on, and the filesystem it carries."""

    device: str
    fs: str


def data_disk(spec: Spec, node: Node) -> DataDisk | None:
    """The node's own data disk, or the cluster's (etcd.data_device); None: etcd's data is on the root disk."""
    device = node.data_device or spec.etcd.data_device
    return DataDisk(device, node.data_fs or spec.etcd.data_fs) if device else None


def disk_owner(spec: Spec, node: Node) -> str:
    """What a member's data disk says of whose data it holds: the cluster's token (not a restore's, which keeps
    the disk) and the member's name."""
    return f"{spec.etcd.token} {node.name}"


def restore_argv(spec: Spec, decided: Decisions, node: Node) -> list[str]:
    """The flags of `snapshot restore` for this member, after the tool and the snapshot's path."""
    assert spec.etcd.restore is not None  # noqa: S101 - callers check
    argv = [f"--name={node.name}", f"--initial-cluster={initial_cluster(spec, node)}",
            f"--initial-cluster-token={decided.cluster_token}",
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


def options(spec: Spec, decided: Decisions, node: Node) -> dict[str, str]:
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
        # Revocation, both ways: a rekeyed node's old certificate is a peer's and a client's.
        "ETCD_PEER_CRL_FILE": PATHS.crl,
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_AUTO_TLS": "false",
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_client),
        "ETCD_ADVERTISE_CLIENT_URLS": client_url(node),
        "ETCD_CERT_FILE": PATHS.cert,
        "ETCD_KEY_FILE": PATHS.key,
        "ETCD_TRUSTED_CA_FILE": PATHS.ca,
        "ETCD_CLIENT_CRL_FILE": PATHS.crl,
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_AUTO_TLS": "false",
        # A member that joins a running cluster learns the membership when it adds itself
        # (etcd-seed-member writes it to membership.env); these are what the founders start with.
        "ETCD_INITIAL_CLUSTER": initial_cluster(spec, node),
        "ETCD_INITIAL_CLUSTER_STATE": "existing" if node.joins else "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": decided.cluster_token,
        "ETCD_HEARTBEAT_INTERVAL": str(spec.etcd.heartbeat_interval),
        "ETCD_ELECTION_TIMEOUT": str(spec.etcd.election_timeout),
        # No kube-apiserver compacts a flannel-only etcd: without this its history grows
        # until the quota stops every write (etcd docs: op-guide/maintenance).
        "ETCD_AUTO_COMPACTION_MODE": spec.etcd.auto_compaction_mode,
        "ETCD_AUTO_COMPACTION_RETENTION": spec.etcd.auto_compaction_retention,
        "ETCD_QUOTA_BACKEND_BYTES": str(spec.etcd.quota_backend_bytes),
        **spec.etcd.release.extra_options,
    }
    for name, value in values.items():
        if not SAFE_NAME.fullmatch(name) or not SAFE_VALUE.fullmatch(value):
            raise ValueError(f"options.env: {name}={value!r} holds a character outside the safe set")
    return values



def _always(spec: Spec, decided: Decisions, node: Node) -> bool:
    return True


def backs_up(spec: Spec, decided: Decisions, node: Node) -> bool:
    """Every member takes its own backups when backup is on."""
    return spec.backup.enabled


def defrags(spec: Spec, decided: Decisions, node: Node) -> bool:
    """Every member defragments itself, at its own time, when defrag is on."""
    return spec.defrag.enabled


def applies_auth(spec: Spec, decided: Decisions, node: Node) -> bool:
    """The first node applies etcd's users, roles and grants, and turns auth on or off, once the cluster has quorum;
    no node does while the build leaves auth to the cluster."""
    return decided.auth.managed and node == spec.nodes[0]


def writes_flannel_config(spec: Spec, decided: Decisions, node: Node) -> bool:
    """The first founder writes flannel's network config once the cluster has quorum."""
    return node == spec.nodes[0] and spec.flannel is not None


def joins(spec: Spec, decided: Decisions, node: Node) -> bool:
    """A member added to a running cluster starts as a learner and promotes itself."""
    return node.joins


# The sources that are not templates: the node's PEM material, its member.json and the CRL (DER, binary).
CA_PEM, KEY_PEM, CHAIN_PEM, MEMBER_JSON, CRL_DER = "pem:ca", "pem:key", "pem:chain", "json:member", "der:crl"


@dataclass(frozen=True)
class StagedFile:
    """A file the seed stages under PATHS.staged (`name`) and the install step puts at `dest`.

    `source` is a template (*.j2), a file of templates/ copied as it is, or one of the sources above.
    `restart`: etcd must restart to see a change; otherwise it (or systemd) reloads it, or the next
    start reads it. `when` says which nodes get it.
    """

    name: str
    source: str
    dest: str
    mode: str
    etcd_owned: bool = False  # owned by etcd (which reads it), else by root
    restart: bool = False
    when: Callable[[Spec, Decisions, Node], bool] = _always


def _job(module: str) -> StagedFile:
    """A module of the node's package, templates/etcd_seed_node/, which etcd-seed-member runs."""
    return StagedFile(f"etcd_seed_node.{module}.py", f"etcd_seed_node/{module}.py",
                      f"{PATHS.node_package}/{module}.py", "644")


@dataclass(frozen=True)
class Unit:
    """A systemd unit the seed runs, with the staged files that are its own: its unit files and the module or
    script it runs. Where `when` holds, the install step puts them in place and enables the unit (etcd.service
    pulls in the clock step, which is not enabled), and after applying a new seed starts it if `start` (at boot,
    systemd does). Where `when` does not hold, it disables the unit, removes its files and reports `off`."""

    name: str
    files: tuple[StagedFile, ...]
    when: Callable[[Spec, Decisions, Node], bool] = _always
    enable: bool = True
    start: bool = False
    # The install step's news when a new seed turns it off on a node. The same on every node and for every spec:
    # a change elsewhere in the spec must not change the seed of a node that does not run the unit.
    off: str = ""


def _unit(name: str, template: str, dest: str) -> StagedFile:
    return StagedFile(name, template, dest, "644")


# Every file every node gets, in the install step's order, before the files of its units.
CORE_FILES = (
    StagedFile("ca.crt", CA_PEM, PATHS.ca, "644", etcd_owned=True, restart=True),
    StagedFile("etcd.key", KEY_PEM, PATHS.key, "600", etcd_owned=True),
    StagedFile("etcd.crt", CHAIN_PEM, PATHS.cert, "644", etcd_owned=True),
    # Before options.env names it: etcd refuses every client while its CRL file is missing.
    StagedFile("crl.der", CRL_DER, PATHS.crl, "644", etcd_owned=True),
    StagedFile("options.env", "options.env.j2", PATHS.options, "640", etcd_owned=True, restart=True),
    StagedFile("member.json", MEMBER_JSON, PATHS.member_config, "640", etcd_owned=True),
    _job("__init__"),
    _job("transport"),
    _job("cli"),
)

# Every unit the seed runs, in the order the install step enables and starts them.
UNITS = (
    Unit("etcd.service", (StagedFile("etcd.service", "etcd.service.j2", PATHS.unit, "644", restart=True),
                          _job("prepare"))),
    Unit("etcd-seed-boot.service", (_unit("etcd-seed-boot.service", "etcd-seed-boot.service.j2", PATHS.boot_unit),)),
    Unit("etcd-seed-report.service", (_unit("etcd-seed-report.service", "etcd-seed-report.service.j2",
                                            PATHS.report_unit), _job("report"))),
    Unit("etcd-seed-clock.service", (_unit("etcd-seed-clock.service", "etcd-seed-clock.service.j2",
                                           PATHS.clock_unit), _job("clock")), enable=False),
    Unit("etcd-seed-promote.service", (_unit("etcd-seed-promote.service", "etcd-seed-promote.service.j2",
                                             PATHS.promote_unit), _job("promote")),
         when=joins, start=True, off="promotion off"),
    Unit("etcd-backup.timer", (StagedFile("etcd-seed-backup", "etcd-backup.sh.j2", PATHS.backup_bin, "755"),
                               _unit("etcd-backup.service", "etcd-backup.service.j2", PATHS.backup_unit),
                               _unit("etcd-backup.timer", "etcd-backup.timer.j2", PATHS.backup_timer)),
         when=backs_up, start=True, off="backups off"),
    Unit("etcd-defrag.timer", (_unit("etcd-defrag.service", "etcd-defrag.service.j2", PATHS.defrag_unit),
                               _unit("etcd-defrag.timer", "etcd-defrag.timer.j2", PATHS.defrag_timer),
                               _job("defrag")),
         when=defrags, start=True, off="defragmentation off"),
    Unit("etcd-seed-auth.service", (_unit("etcd-seed-auth.service", "etcd-seed-auth.service.j2", PATHS.auth_unit),
                                    _job("auth")),
         when=applies_auth, start=True, off="auth step off on this node"),
    Unit("etcd-flannel-config.service", (StagedFile("etcd-flannel-config", "flannel-config.sh.j2", PATHS.flannel_bin,
                                                    "755"),
                                         _unit("etcd-flannel-config.service", "flannel-config.service.j2",
                                               PATHS.flannel_unit)),
         when=writes_flannel_config, start=True, off="flannel's network config off"),
)

# Every file the install step puts in place, in its order: user-data's write_files and the
# install script's put lines both loop over this one table. The launcher comes last: an install
# stopped half-way leaves the last seed's launcher, which runs without the new package, not a new
# launcher without its modules.
LAUNCHER = StagedFile("etcd-seed-member", "etcd-seed-member.py", PATHS.member_bin, "755")
STAGED_FILES = (*CORE_FILES, *(replace(f, when=unit.when) for unit in UNITS for f in unit.files), LAUNCHER)



@dataclass(frozen=True)
class Facts:
    """Everything one member's seed says of it, decided once: what render fills its templates with."""

    options: dict[str, str]  # options.env
    member_config: dict[str, object]  # member.json
    units: tuple[tuple[Unit, bool], ...]  # every unit, and whether this node runs it
    staged: tuple[StagedFile, ...]  # the files its seed stages, in the install step's order
    disk: DataDisk | None
    disk_owner: str
    restore_argv: tuple[str, ...] | None  # `snapshot restore`'s flags on a restore seed
    snapshot_sha256: str | None  # of the snapshot a restore seed carries
    client_url: str
    founder_endpoints: str  # where the install step's notes point etcdctl
    flannel: bool  # it writes flannel's network config
    defrag_calendar: str
    auth_on: bool  # the auth step, where it runs, turns auth on (else off)

    @property
    def enabled_units(self) -> tuple[str, ...]:
        """The units the install step enables on this node, in one `systemctl enable`."""
        return tuple(unit.name for unit, on in self.units if on and unit.enable)


def facts(spec: Spec, decided: Decisions, node: Node) -> Facts:
    """This member's facts.

    Raises:
        ValueError: an options.env value outside its safe set, or a restore whose snapshot was not decided
            (render reports either as a template error).
    """
    if spec.etcd.restore is not None and decided.snapshot_sha256 is None:
        raise ValueError("etcd.restore: the decisions hold no snapshot sha256 (made without decisions.decide)")
    return Facts(
        options=options(spec, decided, node), member_config=member_config(spec, decided, node),
        units=tuple((u, u.when(spec, decided, node)) for u in UNITS),
        staged=tuple(f for f in STAGED_FILES if f.when(spec, decided, node)),
        disk=data_disk(spec, node), disk_owner=disk_owner(spec, node),
        restore_argv=tuple(restore_argv(spec, decided, node)) if spec.etcd.restore is not None else None,
        snapshot_sha256=decided.snapshot_sha256,
        client_url=client_url(node), founder_endpoints=client_endpoints(spec, founders_only=True),
        flannel=writes_flannel_config(spec, decided, node),
        defrag_calendar=spec.defrag.on_calendar(spec.nodes.index(node)), auth_on=decided.auth.on)
