"""Fields: every key of cluster.yaml in one table, with what it means and how a change of it reaches a
built cluster.

The spec's loader takes each section's keys from here (a key missing here is an unknown key) and reads each
typed key as its row says (type, bounds, default, check); docs/spec.md's field table and the hostile-input
test's list of fields are made from it, and `plan` names the reach of each field that changed since the last
build (the manifest keeps a digest of each field's value). A field is one row here, its attribute in the
model (spec.py) and the code that reads it. The loader reads by hand the keys of no type (below) and the
checks that span several fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import checks
from .etcd import MAX_ELECTION_TIMEOUT_MS
from .layout import CRL, cert_file
from .spec import (
    CLIENT_USES,
    DATA_FILESYSTEMS,
    DEFAULT_BUMP_REVISION,
    FLANNEL_BACKENDS,
    KEY_TYPES,
    Backup,
    ClientUse,
    Defrag,
    GiB,
    KeyType,
)


class Reach(StrEnum):
    """How a changed field reaches the nodes of a built cluster (the strongest way it can)."""

    RESTART = "restart"
    RELOAD = "reload"
    FIRST_NODE = "first node"
    CLOUD_INIT = "cloud-init"
    TREE = "tree"
    STEP = "step"
    REPLACE = "replace"
    REFUSED = "refused"


# What each reach means, as docs/spec.md and `plan` say it.
REACH_MEANING: Mapping[Reach, str] = {
    Reach.RESTART: "re-seed each node, one at a time: etcd restarts to read it",
    Reach.RELOAD: "re-seed each node: applied without restarting etcd",
    Reach.FIRST_NODE: "re-seed the first node: its auth or flannel step applies it",
    Reach.CLOUD_INIT: "re-seed each node: cloud-init applies it (a re-seed is a new instance)",
    Reach.TREE: "no seed changes: at most the output tree's own files (client certificates and files, the manifest)",
    Reach.STEP: "a membership step or restore: `plan` and `build` print its order",
    Reach.REPLACE: "refused on a built member unless it has replace: true (a new disk or machine)",
    Reach.REFUSED: "refused on a built cluster: the error says what to do instead",
}


@dataclass(frozen=True)
class Text:
    """A non-empty string; `check` says what is wrong with one, or None."""

    check: Callable[[str], str | None] | None = None
    default: str | None = None


@dataclass(frozen=True)
class Number:
    """A whole number within low..high; no default: the loader gives one (it depends on another field)."""

    low: int
    high: int
    default: int | None = None


@dataclass(frozen=True)
class Flag:
    """true or false; a None default leaves the decision to the build."""

    default: bool | None


@dataclass(frozen=True)
class OneOf:
    """One of a few words."""

    choices: tuple[str, ...]
    default: str | None = None


Type = Text | Number | Flag | OneOf


@dataclass(frozen=True)
class Field:
    """One row: keys of one section that share a meaning and a reach.

    `section` is a dotted path with `[]` for a list's items ("nodes[]", "clients[].access[]"), "" for the
    top level. `hostile` is empty when the hostile-input test feeds these keys strings, else why not.
    `cleared` is the reach of a flag that was true and is no longer, or of a value left out, when it differs
    from `reach`. `types` holds each key's type, in the order of `keys`; a key of None, or a row without types,
    has a grammar of its own (a list, a mapping, an address, a release version, a retention that depends on
    the compaction mode), which the loader reads by hand.
    """

    section: str
    keys: tuple[str, ...]
    reach: Reach
    doc: str
    required: bool = False
    hostile: str = ""
    cleared: Reach | None = None
    types: tuple[Type | None, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f"{self.section}.{key}" if self.section else key for key in self.keys)


NUMBER = "a number"
BOOLEAN = "a boolean"
READ_PATH = "a path the build reads; no node gets it"

FIELDS: tuple[Field, ...] = (
    Field("cluster", ("name",), Reach.RESTART, "the cluster's name (a DNS label, at most 56 characters): the "
          "output directory and the default etcd token; a new name is a new tree (a new cluster) unless the tree "
          "is moved to it", required=True,
          types=(Text(checks.cluster_name),)),
    Field("cluster", ("domain",), Reach.RESTART, "DNS domain; a node's FQDN defaults to `name.domain`",
          required=True,
          types=(Text(checks.domain),)),
    Field("network", ("prefix",), Reach.CLOUD_INIT, "prefix length of the node network (the first node's IP under "
          "this prefix)", required=True, hostile=NUMBER,
          types=(Number(8, 30, 24),)),
    Field("network", ("gateway",), Reach.CLOUD_INIT, "optional default gateway, inside the node network"),
    Field("network", ("dns", "search"), Reach.CLOUD_INIT, "optional nameservers and search domains"),
    Field("network.ntp", ("servers", "pools"), Reach.CLOUD_INIT, "optional time servers (IPv4 addresses or DNS "
          "names; at least one when `ntp` is set): cloud-init's `ntp` module configures the image's time daemon "
          "(chrony or systemd-timesyncd) with them"),
    Field("network.ntp", ("wait_seconds",), Reach.RELOAD, "how long etcd and the backup wait at boot for a "
          "synchronised clock, 1-900 (default 60); they start after it either way (see "
          "[operations](operations.md#time-sync))", hostile=NUMBER,
          types=(Number(1, 900, 60),)),
    Field("nodes[]", ("name",), Reach.REFUSED, "short host name, etcd member name and certificate CN: a DNS label, "
          "not `admin`, `ca`, `ca-bundle`, `ca-next`, `clients`, `crl`, `etcdctl`, `known_hosts`, `manifest`, "
          "`pending`, `pki`, `rotation` or `sealed` (the build's own files; `layout.RESERVED_NAMES`, checked by "
          "`tests/unit/test_layout.py`); a new name is a new member (`join: true`)", required=True,
          types=(Text(checks.node_name),)),
    Field("nodes[]", ("ip",), Reach.STEP, "static unicast IPv4 address (not loopback, multicast, link-local or "
          "reserved), in the certificate's SAN", required=True),
    Field("nodes[]", ("mac",), Reach.CLOUD_INIT, "MAC of the NIC that gets the address (quote it in YAML)",
          required=True),
    Field("nodes[]", ("fqdn",), Reach.RELOAD, "optional, defaults to `name.domain`; in the certificate's SAN",
          types=(Text(checks.fqdn),)),
    Field("nodes[]", ("join",), Reach.REFUSED, "`true` for a member added to a running cluster: it adds itself as "
          "a learner (see [operations](operations.md)); dropped once it is in, every member's initial cluster "
          "names it; a built member cannot take it", hostile=BOOLEAN, cleared=Reach.RESTART,
          types=(Flag(False),)),
    Field("nodes[]", ("replace",), Reach.STEP, "`true` for a member whose machine or disk was lost: new key, stale "
          "entry removed, rejoins; dropped once it is back, its options name the cluster as it is",
          hostile=BOOLEAN, cleared=Reach.RESTART,
          types=(Flag(False),)),
    Field("nodes[]", ("data_device", "data_fs"), Reach.REPLACE, "this node's data disk and its filesystem, over "
          "`etcd.data_device` and `.data_fs` (a `/dev/disk/by-id/` name differs from machine to machine) (see "
          "[operations](operations.md#data-disk))",
          types=(Text(checks.data_device), OneOf(DATA_FILESYSTEMS))),
    Field("etcd", ("version",), Reach.RESTART, "etcd release, 3.4.x to 3.6.x (quote it)", required=True),
    Field("etcd", ("bundle",), Reach.RESTART, "path to the release tarball (relative to the spec); carried on "
          "every seed", hostile=READ_PATH,
          types=(Text(),)),
    Field("etcd", ("url",), Reach.RELOAD, "instead of `bundle`, with `sha256`: each node downloads the tarball "
          "and checks it (URL characters only: no space, quote, backslash or backtick); a new URL alone is used at "
          "the next download",
          types=(Text(checks.url),)),
    Field("etcd", ("sha256",), Reach.RESTART, "the tarball's checksum: required with `url`; with `bundle`, "
          "optional, and the build refuses a tarball with another",
          types=(Text(checks.sha256),)),
    Field("etcd", ("heartbeat_interval", "election_timeout"), Reach.RESTART, "milliseconds (defaults 100 and 1000; "
          "timeout at least 5 times the heartbeat)", hostile=NUMBER,
          types=(Number(10, 10000, 100), Number(50, MAX_ELECTION_TIMEOUT_MS, 1000))),
    Field("etcd", ("token",), Reach.RESTART, "initial cluster token (letters, digits, `.`, `_`, `-`); defaults to "
          "one derived from name and domain; a built member keeps the cluster it has",
          types=(Text(checks.token),)),
    Field("etcd", ("auto_compaction_mode", "auto_compaction_retention"), Reach.RESTART, "`periodic` and `1h` by "
          "default",
          types=(OneOf(("periodic", "revision"), "periodic"), None)),
    Field("etcd", ("quota_backend_bytes",), Reach.RESTART, "backend quota, default 2 GiB; above 8 GiB is a warning",
          hostile=NUMBER,
          types=(Number(1 << 20, 64 * GiB, 2 * GiB),)),
    Field("etcd", ("data_device", "data_fs"), Reach.REPLACE, "a disk of its own for etcd's data and WAL, mounted "
          "at `/opt/etcd`: `/dev/disk/by-id/<id>` (stable across reboots), `/dev/disk/by-path/...`, `/dev/vdb`, "
          "`/dev/sdb` or `/dev/nvme1n1`; `ext4` (default) or `xfs` (see [operations](operations.md#data-disk))",
          types=(Text(checks.data_device), OneOf(DATA_FILESYSTEMS, "ext4"))),
    Field("etcd.restore", ("snapshot",), Reach.STEP, "restore every member from a snapshot (see "
          "[operations](operations.md)); removed once the cluster is up, the members take the spec's token again",
          required=True, hostile=READ_PATH, cleared=Reach.RESTART,
          types=(Text(),)),
    Field("etcd.restore", ("bump_revision",), Reach.STEP, "how far the restore raises the revision (default "
          "1000000000)", hostile=NUMBER, cleared=Reach.RESTART,
          types=(Number(0, 1 << 62, DEFAULT_BUMP_REVISION),)),
    Field("etcd", ("plaintext_localhost",), Reach.RESTART, "`true` adds the guide's `http://127.0.0.1:2379` "
          "listener (off: it bypasses client-cert auth for every local user)", hostile=BOOLEAN,
          types=(Flag(False),)),
    Field("backup", ("enabled", "keep"), Reach.RELOAD, "scheduled snapshots: on (default), and how many are kept "
          "(default 7)", hostile=NUMBER,
          types=(Flag(True), Number(1, 1000, Backup.keep))),
    Field("backup", ("schedule", "dir"), Reach.RELOAD, "when (a systemd calendar, default `daily`) and where "
          "(default `/var/backups/etcd`)",
          types=(Text(checks.calendar, Backup.schedule), Text(checks.backup_dir, Backup.dir))),
    Field("defrag", ("enabled", "stagger_minutes", "min_free_percent"), Reach.RELOAD, "scheduled "
          "defragmentation: on, 10 minutes between nodes, 50% of the file free (see "
          "[operations](operations.md#defragmentation))", hostile=NUMBER,
          types=(Flag(True), Number(1, 240, Defrag.stagger_minutes), Number(1, 99, Defrag.min_free_percent))),
    Field("defrag", ("schedule",), Reach.RELOAD, "`'03:30'` by default (`[weekdays] HH:MM`, the first node's time; "
          "quote it)",
          types=(Text(checks.defrag_schedule, Defrag.time),)),
    Field("pki", ("key_type",), Reach.RELOAD, "`rsa2048` (default), `rsa3072`, `rsa4096`, `ecdsa-p256`, "
          "`ecdsa-p384`; a change gives every leaf a new key",
          types=(OneOf(KEY_TYPES, KeyType.RSA2048.value),)),
    Field("pki", ("validity_days",), Reach.RELOAD, "leaf certificate lifetime (default 365)", hostile=NUMBER,
          types=(Number(1, 3650, 365),)),
    Field("pki", ("ca_validity_days",), Reach.TREE, "lifetime of a generated CA (default 3650)", hostile=NUMBER,
          types=(Number(1, 36500, 3650),)),
    Field("pki", ("renew_before_days",), Reach.TREE, "a run renews leaves this close to expiry (default 30)",
          hostile=NUMBER,
          types=(Number(0, 3650, 30),)),
    Field("pki.ca", ("cert", "key"), Reach.REFUSED, "import an existing CA instead of generating one; another CA "
          "on a built cluster is a rotation (`ca_next`)", required=True, hostile=READ_PATH,
          types=(Text(), Text())),
    Field("pki.ca_next", ("cert", "key"), Reach.STEP, "the imported CA a rotation moves to, during its phases 1 "
          "and 2 (see [operations](operations.md#rotate-the-ca))", required=True, hostile=READ_PATH,
          types=(Text(), Text())),
    Field("clients[]", ("name",), Reach.RELOAD, f"a consumer's client certificate, `{cert_file('<name>')}`: a DNS "
          "label, not a node's name or the build's own; a new name puts the old name's certificate on the CRL",
          required=True,
          types=(Text(checks.label),)),
    Field("clients[]", ("use",), Reach.FIRST_NODE, "`etcdctl` (default), `flannel`, `kube-apiserver` or "
          "`prometheus`: which ready-to-use files it gets (see [operations](operations.md#consumers))",
          types=(OneOf(CLIENT_USES, ClientUse.ETCDCTL.value),)),
    Field("clients[]", ("cn",), Reach.FIRST_NODE, "the certificate's CN (default: the name), its etcd user once "
          "auth is on; letters, digits, spaces and `:._@-`",
          types=(Text(checks.dn_value),)),
    Field("clients[]", ("o",), Reach.TREE, "the certificate's optional O; the same characters",
          types=(Text(checks.dn_value),)),
    Field("clients[]", ("validity_days",), Reach.TREE, "its lifetime, default `pki.validity_days`",
          hostile=NUMBER,
          types=(Number(1, 3650),)),
    Field("clients[]", ("dir",), Reach.TREE, "where the consumer's host keeps the files, default "
          "`/etc/etcd-client/<name>`",
          types=(Text(checks.plain_path),)),
    Field("clients[]", ("access",), Reach.FIRST_NODE, "the consumer's etcd role once auth is on: a list of "
          "`{prefix: /app/, mode: read}` (every key under it) or `{key: name, mode: readwrite}` (one key); keys "
          "are printable ASCII without spaces, and no two grants of a client may overlap. Default by `use`: "
          "flannel `readwrite` under `/coreos.com/network/`; kube-apiserver `readwrite` under `/registry/` and on "
          "`compact_rev_key`; etcdctl and prometheus nothing (see [operations](operations.md#auth))",
          hostile="a list of grants, whose keys are fed one by one"),
    Field("clients[].access[]", ("prefix", "key", "mode"), Reach.FIRST_NODE, "one grant: `prefix` or `key`, and "
          "`mode` `read` (default), `write` or `readwrite`"),
    Field("clients[]", ("revoked",), Reach.RELOAD, "`true` cuts the consumer off: it gets no new certificate, its "
          f"last one goes on the CRL (`{CRL}`), and every member refuses it once re-seeded (see "
          "[operations](operations.md#revocation))", hostile=BOOLEAN,
          types=(Flag(False),)),
    Field("auth", ("enabled",), Reach.FIRST_NODE, "etcd's authentication with a user per certificate CN and a role "
          "per consumer: default on for a new cluster; a cluster built before it was managed is left as it is "
          "(users, roles, on or off) until set (see [operations](operations.md#auth))", hostile=BOOLEAN,
          types=(Flag(None),)),
    Field("flannel", ("network",), Reach.FIRST_NODE, "optional, apart from the node network; written to "
          "`/coreos.com/network/config`", required=True),
    Field("flannel", ("backend",), Reach.FIRST_NODE, "`vxlan` (default), `host-gw`, `udp`, `ipip` or `wireguard`",
          types=(OneOf(FLANNEL_BACKENDS, "vxlan"),)),
    Field("flannel", ("subnet_len",), Reach.FIRST_NODE, "each host's subnet (default 24)", hostile=NUMBER,
          types=(Number(8, 30, 24),)),
    Field("admin", ("name",), Reach.CLOUD_INIT, "optional operator login (default `ops`, not a system user such as "
          "`root` or `etcd`)",
          types=(Text(checks.label, "ops"),)),
    Field("admin", ("sudo",), Reach.CLOUD_INIT, "`true` (default) gives the operator login passwordless sudo; "
          "`false` leaves it without", hostile=BOOLEAN,
          types=(Flag(True),)),
    Field("admin", ("ssh_authorized_keys",), Reach.CLOUD_INIT, "its ssh public keys"),
    Field("admin", ("password_hash",), Reach.CLOUD_INIT, "optional SHA-512 crypt hash; `python -m generator "
          "hash-password` makes one",
          types=(Text(checks.password_hash),)),
)

# The top level's sections, in the docs' order; the first four are required.
SECTIONS = ("cluster", "network", "nodes", "etcd", "pki", "flannel", "admin", "backup", "defrag", "clients", "auth")
REQUIRED_SECTIONS = SECTIONS[:4]


def keys(section: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A mapping's required and optional keys: its rows' keys, then the sections nested in it."""
    if not section:
        return REQUIRED_SECTIONS, SECTIONS[len(REQUIRED_SECTIONS):]
    required: list[str] = []
    optional: list[str] = []
    for row in FIELDS:
        if row.section == section:
            (required if row.required else optional).extend(row.keys)
        elif row.section.startswith(section + "."):
            nested = row.section[len(section) + 1:].split(".")[0].removesuffix("[]")
            if nested not in required + optional:
                optional.append(nested)
    if not required and not optional:
        raise KeyError(section)
    return tuple(required), tuple(optional)


def type_of(section: str, key: str) -> Type:
    """How the loader reads one key of a section.

    Raises:
        KeyError: the key has no type in its row (a bug: the loader reads it by hand).
    """
    for row in FIELDS:
        if row.section == section and key in row.keys and row.types:
            found = row.types[row.keys.index(key)]
            if found is not None:
                return found
    raise KeyError(f"{section}.{key}")


def row_of(path: str) -> Field | None:
    """The row of a field's table path ("nodes[].ip"); None for a path no row has."""
    return next((row for row in FIELDS if path in row.paths), None)


# Lists whose items are named: an item added or removed is one change of its own, with this reach.
ITEMS: Mapping[str, tuple[Reach, Reach]] = {
    "nodes": (Reach.STEP, Reach.STEP),  # added with join: true, or scaled in: build and plan print the steps
    "clients": (Reach.FIRST_NODE, Reach.RELOAD),  # its etcd user; a removed one's last certificate goes on the CRL
}
ORDER = "nodes"  # the digest of the node order (the first node runs the cluster-wide steps; initial cluster)
ORDER_REACH = Reach.RESTART
_FLAG = {True: "true", False: "false"}


def digests(values: Mapping[str, Any]) -> dict[str, str]:
    """What the manifest keeps of each field's loaded value, by its path with items named ("nodes.etcd02.ip"):
    a flag as true or false, anything else as a short sha256."""
    return {path: _FLAG[value] if isinstance(value, bool)
            else hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for path, value in values.items()}


@dataclass(frozen=True)
class Change:
    """One field (or named item, or the node order) that differs from the last build."""

    path: str
    what: str  # changed, set, left out, cleared, added, removed, reordered
    reach: Reach


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[Change]:
    """What differs between two builds' digests, each with its reach; a path of no row is left out."""
    was_items, now_items = _items(before), _items(after)
    out = [Change(item, "added", ITEMS[item.split(".")[0]][0]) for item in sorted(now_items - was_items)]
    out += [Change(item, "removed", ITEMS[item.split(".")[0]][1]) for item in sorted(was_items - now_items)]
    moved = {c.path for c in out}
    for path in sorted(set(before) | set(after)):
        was, now = before.get(path), after.get(path)
        if was == now or _item(path) in moved:
            continue
        if path == ORDER:
            if not moved:
                out.append(Change(path, "reordered", ORDER_REACH))
            continue
        row = row_of(table_path(path))
        if row is None:
            continue
        what = "set" if was is None else "left out" if now is None else "changed"
        cleared = row.cleared is not None and ((was == "true" and now != "true") or now is None)
        out.append(Change(path, "cleared" if cleared else what, row.cleared if cleared and row.cleared
                          else row.reach))
    return out


def _items(digests_: Mapping[str, str]) -> set[str]:
    return {item for item in map(_item, digests_) if item is not None}


def _item(path: str) -> str | None:
    """"nodes.etcd02" for a field of that node (or client); None for any other path."""
    parts = path.split(".")
    return ".".join(parts[:2]) if parts[0] in ITEMS and len(parts) > 2 else None


def table_path(path: str) -> str:
    """ "nodes.etcd02.ip" -> "nodes[].ip": a path with items named, as the table spells it."""
    parts = path.split(".")
    if parts[0] in ITEMS and len(parts) > 2:
        return ".".join([f"{parts[0]}[]", *parts[2:]])
    return path


def _names(row: Field) -> str:
    return ", ".join(f"`{path}`" if i == 0 else f"`.{key}`" for i, (path, key) in enumerate(zip(row.paths, row.keys,
                                                                                             strict=True)))


def markdown() -> str:
    """docs/spec.md's field table and its legend of reaches, as the docs carry them."""
    rows = [f"| {_names(row)} | {row.doc} | {row.reach} |" for row in FIELDS]
    legend = [f"- **{reach}**: {meaning}" for reach, meaning in REACH_MEANING.items()]
    cleared = [f"- `{path}` {'back to false or ' if row.hostile == BOOLEAN else ''}left out: **{row.cleared}**"
               for row in FIELDS if row.cleared for path in row.paths]
    items = [f"- a `{name}` item added: **{added}**; removed: **{removed}**"
             for name, (added, removed) in ITEMS.items()]
    return "\n".join(["| field | meaning | a change on a built cluster |", "|---|---|---|", *rows, "", *cleared,
                      *items, f"- the `{ORDER}` in another order: **{ORDER_REACH}**", "",
                      "How a change reaches a built cluster (`plan` names it for each field that changed):", "",
                      *legend]) + "\n"
