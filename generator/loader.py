"""Loader: cluster.yaml text -> a validated, frozen Spec (spec.py), every problem named by its field."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from . import checks, fields
from .errors import SpecError
from .etcd import BUMP_REVISION_SINCE, ELECTION_TO_HEARTBEAT_MIN, Version
from .layout import RESERVED_NAMES, pki_path
from .spec import (
    DEFAULT_ACCESS,
    ROOT_USER,
    Access,
    Admin,
    Auth,
    Backup,
    CASource,
    Client,
    ClientUse,
    Defrag,
    Etcd,
    Flannel,
    GiB,
    KeyType,
    Mode,
    Network,
    Node,
    Ntp,
    Pki,
    Restore,
    Spec,
)

# Every pattern is used with fullmatch: `$` would also accept a trailing newline.
# Values matching these reach YAML, shell, systemd and env files without escaping.
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# A comment of printable ASCII only: any line break YAML knows (\r, \x85, \u2028 ...) is refused.
_SSH_KEY = re.compile(r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp[0-9]+|sk-[a-z0-9@.-]+) "
                      r"[A-Za-z0-9+/]+={0,3}( [\x20-\x7e]*)?")
# Accounts a Debian system already has, or that the seed creates: the operator login must be new.
SYSTEM_USERS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "systemd-network", "systemd-resolve",
    "systemd-timesync", "messagebus", "sshd", "polkitd", "etcd",
})
# A spec is a small file: bound it before parsing, and bound how deep it may nest.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 20
# etcd warns that a backend quota above 8 GiB is not recommended (etcd docs: dev-guide/limit).
QUOTA_WARN_BYTES = 8 * GiB
_PERIODIC_RETENTION = re.compile(r"[0-9]{1,6}(h|m|s)?")
_REVISION_RETENTION = re.compile(r"[0-9]{1,12}")


class _Errors:
    """Collects every problem, each with its dotted path, before failing."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses what a cluster definition never needs.

    A key given twice (PyYAML keeps the last), an alias (a few hundred bytes of
    nested aliases expand to gigabytes), a key that is itself a list or mapping,
    and nesting deeper than MAX_DEPTH.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a spec",
                                              event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(None, None, "a key must be a plain value",
                                                    key_node.start_mark)
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_spec(text: str, base_dir: Path, source: str = "cluster.yaml") -> tuple[Spec, list[str]]:
    """Parse and validate a cluster definition.

    Args:
        text: the YAML text of cluster.yaml.
        base_dir: directory that relative paths (bundle, CA files) are resolved against.
        source: the spec's name, used in YAML syntax errors.

    Returns:
        The validated Spec, and a list of warnings.

    Raises:
        SpecError: with one message per problem, each prefixed by its dotted path.
    """
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES} bytes; not a cluster definition")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    errs = _Errors()
    top = _mapping(raw, "", errs, "")
    if top is None:
        raise SpecError(errs.items)
    cluster = _mapping(top.get("cluster"), "cluster", errs, "cluster")
    name = domain = None
    if cluster is not None:
        typed, _ = _typed(cluster, "cluster", errs)
        name, domain = typed["name"], typed["domain"]
    network = _network(top.get("network"), errs)
    nodes = _nodes(top.get("nodes"), domain, errs)
    etcd = _etcd(top.get("etcd"), name, domain, base_dir, errs)
    pki = _pki(top.get("pki", {}), base_dir, errs)
    flannel = _flannel(top.get("flannel"), errs) if "flannel" in top else None
    admin = _admin(top.get("admin"), errs) if "admin" in top else None
    backup = _backup(top.get("backup", {}), errs)
    defrag = _defrag(top.get("defrag", {}), len(nodes), errs)
    clients = _clients(top.get("clients", []), nodes, pki, errs)
    auth = _auth(top.get("auth", {}), errs)
    revoked = tuple(c.name for c in clients if c.revoked)
    clients = [c for c in clients if not c.revoked]
    if network is not None and nodes:
        _check_subnet(network, nodes, errs)
        if flannel is not None and flannel.network.overlaps(_subnet(network, nodes)):
            errs.add("flannel.network", f"{flannel.network} overlaps the node network "
                     f"{_subnet(network, nodes)}; pods and nodes need separate ranges")
    if nodes and all(n.join for n in nodes):
        errs.add("nodes", "every member has join: true; a new cluster needs members that start it")
    _check_membership(nodes, etcd, errs)
    if errs.items:
        raise SpecError(errs.items)
    assert name and domain and network and nodes and etcd and pki and backup and defrag  # noqa: S101 - no errs
    spec = Spec(name=name, domain=domain, network=network, nodes=tuple(nodes), etcd=etcd,
                pki=pki, flannel=flannel, admin=admin, backup=backup, clients=tuple(clients), defrag=defrag,
                revoked=revoked, auth=auth)
    return dataclasses.replace(spec, field_digests=fields.digests(field_values(spec))), errs.warnings


def field_values(spec: Spec) -> dict[str, Any]:
    """Each field's loaded value (defaults filled in, values normalised), by its path with items named
    ("nodes.etcd02.ip"), and the node order: what tells one build's spec from the next."""
    sections: dict[str, list[tuple[str, Any]]] = {
        "cluster": [("cluster", {"name": spec.name, "domain": spec.domain})],
        "network": [("network", spec.network)], "network.ntp": [("network.ntp", spec.network.ntp)],
        "nodes[]": [(f"nodes.{n.name}", n) for n in spec.nodes],
        "etcd": [("etcd", spec.etcd)], "etcd.restore": [("etcd.restore", spec.etcd.restore)],
        "pki": [("pki", spec.pki)], "pki.ca": [("pki.ca", spec.pki.ca)],
        "pki.ca_next": [("pki.ca_next", spec.pki.ca_next)],
        "backup": [("backup", spec.backup)], "defrag": [("defrag", spec.defrag)],
        "flannel": [("flannel", spec.flannel)], "admin": [("admin", spec.admin)],
        "auth": [("auth", spec.auth)],
        "clients[]": [(f"clients.{c.name}", c) for c in spec.clients]
        + [(f"clients.{name}", {"name": name, "revoked": True}) for name in spec.revoked],
        "clients[].access[]": [],  # within clients[].access, whose value is the whole list
    }
    values: dict[str, Any] = {fields.ORDER: [n.name for n in spec.nodes]}
    # A file the build reads is known by its content, not its path (which moves with the checkout): the
    # manifest's bundle and restore sha256, and the CA checks of the build itself.
    for row in (row for row in fields.FIELDS if row.hostile != fields.READ_PATH):
        for prefix, holder in sections[row.section]:
            for key in row.keys:
                value = _loaded(holder, key)
                if value is not _UNSET:
                    values[f"{prefix}.{key}"] = value
    return values


_UNSET = object()


def _loaded(holder: Any, key: str) -> Any:
    """A field's loaded value in its dataclass (or mapping); _UNSET where its section or item has none."""
    if holder is None:
        return _UNSET
    if isinstance(holder, Mapping):
        return holder.get(key, _UNSET)
    if isinstance(holder, Defrag) and key == "schedule":
        return [holder.days, holder.time]
    return getattr(holder, key)


def _check_membership(nodes: list[Node], etcd: Etcd | None, errs: _Errors) -> None:
    """Joins, replacements and a restore that etcd could not carry out; a node's data filesystem with no disk."""
    for i, node in enumerate(nodes):
        if node.data_fs and not node.data_device and (etcd is None or not etcd.data_device):
            errs.add(f"nodes.{i}.data_fs", "is set without a data disk (nodes[].data_device or etcd.data_device)")
    founders = [n for n in nodes if not n.join]
    replaced = [i for i, n in enumerate(nodes) if n.replace]
    for i, node in enumerate(nodes):
        if node.join and node.replace:
            errs.add(f"nodes.{i}.replace", "a replaced member already joins by itself; drop join: true")
    # Lost members are replaced one at a time, each removal while the rest keep quorum: with k
    # of n founders lost at once, the n - k left must still be a majority of n.
    if replaced and len(founders) - len(replaced) < len(founders) // 2 + 1:
        errs.add(f"nodes.{replaced[-1]}.replace",
                 f"replacing {len(replaced)} of {len(founders)} members at once would lose quorum: the "
                 f"{len(founders) - len(replaced)} left cannot outvote the lost ones; restore from a snapshot "
                 "(etcd.restore) instead")
    if etcd is not None and etcd.restore is not None:
        for i, node in enumerate(nodes):
            if node.joins:
                errs.add(f"nodes.{i}.{'join' if node.join else 'replace'}",
                         "cannot be used with etcd.restore: a restore starts a new cluster from the snapshot on "
                         "every member; add or replace members after it is up")


def _join(parent: str, key: str | int) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _mapping(value: Any, path: str, errs: _Errors, section: str) -> dict[str, Any] | None:
    """`value` as a mapping whose keys are those of `section`'s rows in the field table."""
    where = path or "spec"
    required, optional = fields.keys(section)
    if not isinstance(value, Mapping):
        errs.add(where, f"must be a mapping, got {_kind(value)}")
        return None
    allowed = required + optional
    for key in value:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(allowed)})"
            errs.add(_join(path, key), f"unknown key{hint}")
    for key in required:
        if key not in value:
            errs.add(_join(path, key), "is required")
    return dict(value)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


_ROW: Any = object()


def _read(data: Mapping[str, Any], section: str, key: str, errs: _Errors, where: str | None = None,
          default: Any = _ROW) -> Any:
    """One key of a section, read as its row in the field table types it; `where` names a list's item
    ("nodes.2"), and `default` stands in for the row's when it depends on another field. A bad value is
    reported and read as None (a flag: as its default)."""
    kind = fields.type_of(section, key)
    parent = section if where is None else where
    if default is not _ROW:
        kind = dataclasses.replace(kind, default=default)
    if isinstance(kind, fields.Text):
        return _text(data, key, parent, errs, kind.check, kind.default)
    if isinstance(kind, fields.Number):
        return _integer(data, key, parent, errs, kind.default, kind.low, kind.high)
    if isinstance(kind, fields.Flag):
        return _boolean(data, key, parent, errs, kind.default)
    if key not in data:
        return kind.default
    if data[key] not in kind.choices:
        errs.add(_join(parent, key), f"{data[key]!r} is not one of {', '.join(kind.choices)}")
        return None
    return data[key]


def _typed(data: Mapping[str, Any], section: str, errs: _Errors) -> tuple[dict[str, Any], bool]:
    """Every typed key of a section, read in the field table's order, by its key; and whether each given or
    required one was good (a bad one is reported and read as None)."""
    typed: dict[str, Any] = {}
    ok = True
    for row in fields.FIELDS:
        if row.section == section:
            for key, kind in zip(row.keys, row.types or (None,) * len(row.keys), strict=True):
                if kind is not None:
                    typed[key] = _read(data, section, key, errs)
                    ok = ok and not ((key in data or row.required) and typed[key] is None)
    return typed, ok


def _text(data: Mapping[str, Any], key: str, parent: str, errs: _Errors,
          check: Callable[[str], str | None] | None = None, default: str | None = None) -> str | None:
    path = _join(parent, key)
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        errs.add(path, f"was read as the number {value}; quote it")
        return None
    if not isinstance(value, str) or not value:
        errs.add(path, f"must be a non-empty string, got {_kind(value)}")
        return None
    problem = check(value) if check else None
    if problem:
        errs.add(path, problem)
        return None
    return value


def _integer(data: Mapping[str, Any], key: str, parent: str, errs: _Errors, default: int | None,
             low: int, high: int) -> int | None:
    path = _join(parent, key)
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        errs.add(path, f"must be a whole number, got {_kind(value)}")
        return None
    if not low <= value <= high:
        errs.add(path, f"must be between {low} and {high}, got {value}")
        return None
    return value


def _boolean(data: Mapping[str, Any], key: str, parent: str, errs: _Errors, default: bool | None) -> bool | None:
    if key not in data:
        return default
    value = data[key]
    if not isinstance(value, bool):
        errs.add(_join(parent, key), f"must be true or false, got {_kind(value)}")
        return default
    return value


def _ipv4(value: Any, path: str, errs: _Errors) -> ipaddress.IPv4Address | None:
    if not isinstance(value, str):
        errs.add(path, f"must be an IPv4 address as a string, got {_kind(value)}")
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        errs.add(path, f"'{value}' is not an IP address")
        return None
    if not isinstance(address, ipaddress.IPv4Address):
        errs.add(path, f"'{value}' is IPv6; only IPv4 is supported")
        return None
    return address


def _network(value: Any, errs: _Errors) -> Network | None:
    data = _mapping(value, "network", errs, "network")
    if data is None:
        return None
    typed, ok = _typed(data, "network", errs)
    gateway = _node_ip(data["gateway"], "network.gateway", errs) if "gateway" in data else None
    dns = [a for i, item in enumerate(_list(data, "dns", "network", errs))
           if (a := _ipv4(item, f"network.dns.{i}", errs)) is not None]
    search = []
    for i, item in enumerate(_list(data, "search", "network", errs)):
        if not isinstance(item, str) or checks.domain(item):
            errs.add(f"network.search.{i}", f"{item!r} is not a valid DNS name")
        else:
            search.append(item)
    ntp = _ntp(data["ntp"], errs) if "ntp" in data else None
    if not ok or ("gateway" in data and gateway is None) or ("ntp" in data and ntp is None):
        return None
    return Network(**typed, gateway=gateway, dns=tuple(dns), search=tuple(search), ntp=ntp)


def _ntp(value: Any, errs: _Errors) -> Ntp | None:
    data = _mapping(value, "network.ntp", errs, "network.ntp")
    if data is None:
        return None
    hosts: dict[str, list[str]] = {"servers": [], "pools": []}
    seen: set[str] = set()
    given = 0
    for key, kept in hosts.items():
        for i, item in enumerate(_list(data, key, "network.ntp", errs)):
            given += 1
            path = f"network.ntp.{key}.{i}"
            if not isinstance(item, str) or not checks.is_host(item):
                errs.add(path, f"{item!r} is not an IPv4 address or a DNS name")
            elif item.lower() in seen:
                errs.add(path, f"{item!r} is listed twice")
            else:
                seen.add(item.lower())
                kept.append(item)
    if not given:
        errs.add("network.ntp", "needs at least one of servers or pools")
    # A bound, not a gate: etcd starts after it even unsynchronised, so a dead time server cannot keep it down.
    typed, ok = _typed(data, "network.ntp", errs)
    if not ok or not seen:
        return None
    return Ntp(**typed, servers=tuple(hosts["servers"]), pools=tuple(hosts["pools"]))


def _list(data: Mapping[str, Any], key: str, parent: str, errs: _Errors) -> list[Any]:
    items = data.get(key, [])
    if not isinstance(items, list):
        errs.add(_join(parent, key), f"must be a list, got {_kind(items)}")
        return []
    return items


def _nodes(value: Any, domain: str | None, errs: _Errors) -> list[Node]:
    if not isinstance(value, list):
        errs.add("nodes", f"must be a list of nodes, got {_kind(value)}")
        return []
    if not value:
        errs.add("nodes", "needs at least one member")
        return []
    if len(value) % 2 == 0:
        errs.warnings.append(
            f"nodes: {len(value)} members tolerate no more failures than {len(value) - 1}; "
            "use an odd number")
    nodes: list[Node] = []
    seen: dict[str, dict[str, int]] = {"name": {}, "ip": {}, "mac": {}, "fqdn": {}}
    for i, item in enumerate(value):
        path = f"nodes.{i}"
        data = _mapping(item, path, errs, "nodes[]")
        if data is None:
            continue
        name = _read(data, "nodes[]", "name", errs, path)
        ip = _node_ip(data["ip"], f"{path}.ip", errs) if "ip" in data else None
        mac = _mac(data["mac"], f"{path}.mac", errs) if "mac" in data else None
        default_fqdn = f"{name}.{domain.removesuffix('.')}" if name and domain else None
        fqdn = _read(data, "nodes[]", "fqdn", errs, path, default=default_fqdn)
        fqdn = fqdn.removesuffix(".") if fqdn else None  # etcd02.example.com. is etcd02.example.com
        for field, field_value in (("name", name), ("ip", ip), ("mac", mac), ("fqdn", fqdn)):
            if field_value is None:
                continue
            key = str(field_value)
            if key in seen[field]:
                errs.add(f"{path}.{field}", f"'{key}' is already used by nodes.{seen[field][key]}")
            else:
                seen[field][key] = i
        device = _read(data, "nodes[]", "data_device", errs, path)
        data_fs = _read(data, "nodes[]", "data_fs", errs, path)
        if name and ip and mac and fqdn:
            nodes.append(Node(name=name, fqdn=fqdn, ip=ip, mac=mac,
                              join=_read(data, "nodes[]", "join", errs, path),
                              replace=_read(data, "nodes[]", "replace", errs, path),
                              data_device=device, data_fs=data_fs))
    return nodes


def _mac(value: Any, path: str, errs: _Errors) -> str | None:
    if isinstance(value, int):
        # YAML 1.1 reads an unquoted 52:54:00:00:00:01 as a base-60 number.
        errs.add(path, "was read as a number; quote the MAC address, e.g. \"52:54:00:00:00:01\"")
        return None
    if not isinstance(value, str) or not _MAC.fullmatch(value.lower()):
        errs.add(path, f"'{value}' is not a MAC address (six hex pairs joined by ':')")
        return None
    if int(value[:2], 16) & 1:
        errs.add(path, f"'{value}' is a multicast address; a NIC needs a unicast MAC")
        return None
    if value == "00:00:00:00:00:00":
        errs.add(path, f"'{value}' is the null MAC; a NIC needs its own address")
        return None
    return value.lower()


def _node_ip(value: Any, path: str, errs: _Errors) -> ipaddress.IPv4Address | None:
    """An IPv4 address a host can hold on a LAN: not loopback, multicast, link-local or reserved."""
    address = _ipv4(value, path, errs)
    if address is None:
        return None
    for kind, bad in (("loopback", address.is_loopback), ("multicast", address.is_multicast),
                      ("link-local", address.is_link_local), ("unspecified", address.is_unspecified),
                      ("reserved", address.is_reserved)):
        if bad:
            errs.add(path, f"{address} is a {kind} address; a node needs a unicast address on its LAN")
            return None
    return address


def _subnet(network: Network, nodes: list[Node]) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"{nodes[0].ip}/{network.prefix}", strict=False)


def _check_subnet(network: Network, nodes: list[Node], errs: _Errors) -> None:
    subnet = _subnet(network, nodes)
    for i, node in enumerate(nodes):
        if node.ip not in subnet:
            errs.add(f"nodes.{i}.ip", f"{node.ip} is outside the node network {subnet} "
                     f"(set by nodes.0.ip and network.prefix)")
        elif node.ip in (subnet.network_address, subnet.broadcast_address):
            errs.add(f"nodes.{i}.ip", f"{node.ip} is the network or broadcast address of {subnet}")
        elif node.ip == network.gateway:
            errs.add(f"nodes.{i}.ip", f"{node.ip} is also network.gateway")
    if network.gateway is not None and network.gateway not in subnet:
        errs.add("network.gateway", f"{network.gateway} is outside the node network {subnet}")


def _etcd(value: Any, name: str | None, domain: str | None, base_dir: Path,
          errs: _Errors) -> Etcd | None:
    data = _mapping(value, "etcd", errs, "etcd")
    if data is None:
        return None
    version = data.get("version")
    if isinstance(version, float):
        errs.add("etcd.version", f"was read as the number {version}; quote it, e.g. \"3.5.1\"")
        version = None
    elif not isinstance(version, str) or (release := Version.parse(version)) is None:
        if "version" in data:
            errs.add("etcd.version", f"'{version}' is not a release version like 3.5.1")
        version = None
    elif not release.supported:
        errs.add("etcd.version", f"'{version}' is not supported; use 3.4.x, 3.5.x or 3.6.x")
        version = None
    sha256 = _read(data, "etcd", "sha256", errs)
    bundle = url = None
    if "bundle" in data and "url" in data:
        errs.add("etcd", "give either bundle or url, not both")
    elif "bundle" in data:
        text = _read(data, "etcd", "bundle", errs)
        bundle = (base_dir / text) if text else None
    elif "url" in data:
        url = _read(data, "etcd", "url", errs)
        if "sha256" not in data:
            errs.add("etcd.sha256", "is required with etcd.url, so each node can check its download")
    else:
        errs.add("etcd.bundle", "is required (or etcd.url with etcd.sha256)")
    heartbeat = _read(data, "etcd", "heartbeat_interval", errs)
    election = _read(data, "etcd", "election_timeout", errs)
    if heartbeat and election and election < ELECTION_TO_HEARTBEAT_MIN * heartbeat:
        errs.add("etcd.election_timeout", f"{election} ms must be at least "
                 f"{ELECTION_TO_HEARTBEAT_MIN}x heartbeat_interval ({heartbeat} ms); etcd refuses to start")
    default_token = None
    if name and domain:
        digest = hashlib.sha256(f"{name}.{domain}".encode()).hexdigest()[:12]
        default_token = f"{name}-{digest}"
    token = _read(data, "etcd", "token", errs, default=default_token)
    plaintext = _read(data, "etcd", "plaintext_localhost", errs)
    mode, retention = _compaction(data, errs)
    quota = _read(data, "etcd", "quota_backend_bytes", errs)
    if quota and quota > QUOTA_WARN_BYTES:
        errs.warnings.append(f"etcd.quota_backend_bytes: {quota} is above 8 GiB, more than etcd recommends "
                             "(its docs: dev-guide/limit)")
    restore = _restore(data["restore"], version, base_dir, errs) if "restore" in data else None
    device = _read(data, "etcd", "data_device", errs)
    data_fs = _read(data, "etcd", "data_fs", errs)
    if data_fs is not None and "data_fs" in data and "data_device" not in data:
        errs.add("etcd.data_fs", "is set without etcd.data_device")
    if not (version and heartbeat and election and token and quota and mode and retention) \
            or (bundle is None and url is None) or ("restore" in data and restore is None) \
            or ("data_device" in data and device is None) or data_fs is None:
        return None
    return Etcd(version=version, bundle=bundle, url=url, sha256=sha256,
                heartbeat_interval=heartbeat, election_timeout=election, token=token,
                plaintext_localhost=plaintext, auto_compaction_mode=mode,
                auto_compaction_retention=retention, quota_backend_bytes=quota, restore=restore,
                data_device=device, data_fs=data_fs)


def _compaction(data: Mapping[str, Any], errs: _Errors) -> tuple[str | None, str | None]:
    """etcd's auto-compaction: on by default, since no kube-apiserver compacts a flannel-only etcd."""
    mode = _read(data, "etcd", "auto_compaction_mode", errs)
    if mode is None:
        return None, None
    default = "1h" if mode == "periodic" else "10000"
    retention = data.get("auto_compaction_retention", default)
    if isinstance(retention, int) and not isinstance(retention, bool):
        retention = str(retention)
    pattern, example = ((_PERIODIC_RETENTION, "a duration such as 1h, 30m or 0 (off)") if mode == "periodic"
                        else (_REVISION_RETENTION, "a number of revisions such as 10000"))
    if not isinstance(retention, str) or not pattern.fullmatch(retention):
        errs.add("etcd.auto_compaction_retention", f"{retention!r} is not {example}")
        return mode, None
    return mode, retention


def _restore(value: Any, version: str | None, base_dir: Path, errs: _Errors) -> Restore | None:
    data = _mapping(value, "etcd.restore", errs, "etcd.restore")
    if data is None:
        return None
    typed, ok = _typed(data, "etcd.restore", errs)
    bump = typed["bump_revision"]
    release = Version.parse(version) if version else None
    if bump and release and not release.can_bump_revision:
        since = ".".join(map(str, BUMP_REVISION_SINCE))
        errs.add("etcd.restore.bump_revision",
                 f"etcd {version} cannot bump revisions on restore (etcdutl has --bump-revision since {since}); "
                 f"use an etcd {since} or later bundle, or set bump_revision: 0 and accept that watchers may "
                 "see old revisions again (etcd-io/etcd#16028)")
        return None
    if not ok:
        return None
    return Restore(**typed | {"snapshot": base_dir / typed["snapshot"]})


def _pki(value: Any, base_dir: Path, errs: _Errors) -> Pki | None:
    data = _mapping(value, "pki", errs, "pki")
    if data is None:
        return None
    typed, ok = _typed(data, "pki", errs)
    validity, renew = typed["validity_days"], typed["renew_before_days"]
    if validity and renew is not None and renew >= validity:
        errs.add("pki.renew_before_days", f"{renew} must be less than validity_days ({validity}), "
                 "or every run would renew every certificate")
    ca = _ca_source(data, "ca", base_dir, errs)
    ca_next = _ca_source(data, "ca_next", base_dir, errs)
    if not ok:
        return None
    return Pki(**typed | {"key_type": KeyType(typed["key_type"])}, ca=ca, ca_next=ca_next)


def _ca_source(data: Mapping[str, Any], key: str, base_dir: Path, errs: _Errors) -> CASource | None:
    if key not in data:
        return None
    ca_data = _mapping(data[key], f"pki.{key}", errs, f"pki.{key}")
    if ca_data is None:
        return None
    typed, ok = _typed(ca_data, f"pki.{key}", errs)
    return CASource(**{k: base_dir / path for k, path in typed.items()}) if ok and all(typed.values()) else None


# An etcd key in a grant: printable ASCII without spaces, so that it reads the same in member.json,
# on etcdctl's command line and in a log line.
_KEY = re.compile(r"[!-~]{1,1024}")


def _access(value: Any, path: str, errs: _Errors) -> tuple[Access, ...] | None:
    if not isinstance(value, list):
        errs.add(path, f"must be a list, got {_kind(value)}")
        return None
    grants: list[tuple[str, Access]] = []
    ok = True
    for i, item in enumerate(value):
        where = f"{path}.{i}"
        data = _mapping(item, where, errs, "clients[].access[]")
        if data is None:
            ok = False
            continue
        if ("key" in data) == ("prefix" in data):
            errs.add(where, "needs exactly one of key (one key) or prefix (every key under it)")
            ok = False
            continue
        field = "prefix" if "prefix" in data else "key"
        text = data[field]
        mode = data.get("mode", Mode.READ.value)
        if not isinstance(text, str) or not _KEY.fullmatch(text):
            errs.add(f"{where}.{field}", f"{text!r} is not 1-1024 printable ASCII characters without spaces")
            ok = False
        elif mode not in [m.value for m in Mode]:
            errs.add(f"{where}.mode", f"{mode!r} is not one of {', '.join(m.value for m in Mode)}")
            ok = False
        else:
            grant = Access(text, field == "prefix", Mode(mode))
            clash = next((w for w, g in grants if g.covers(grant)), None)
            if clash is not None:
                errs.add(f"{where}.{field}", f"{text!r} overlaps {clash}; give each key one grant")
                ok = False
            grants.append((where, grant))
    return tuple(g for _, g in grants) if ok else None


def _auth(value: Any, errs: _Errors) -> Auth:
    data = _mapping(value, "auth", errs, "auth")
    return Auth(**_typed(data, "auth", errs)[0]) if data is not None else Auth()


def _clients(value: Any, nodes: list[Node], pki: Pki | None, errs: _Errors) -> list[Client]:
    if not isinstance(value, list):
        errs.add("clients", f"must be a list, got {_kind(value)}")
        return []
    taken = {n.name: f"node {n.name}" for n in nodes}
    node_names = {n.name for n in nodes}
    cns: dict[str, str] = {}
    clients = []
    for i, item in enumerate(value):
        path = f"clients.{i}"
        data = _mapping(item, path, errs, "clients[]")
        if data is None:
            continue
        name = _read(data, "clients[]", "name", errs, path)
        if name == ROOT_USER:
            errs.add(f"{path}.name", "'root' is etcd's root role, which the admin and the nodes hold; "
                     "choose another client name")
            name = None
        if name is not None and (name in RESERVED_NAMES or name in taken):
            errs.add(f"{path}.name", f"'{name}' is taken by {taken.get(name, f'the build ({pki_path(name)}.*)')}; "
                     "choose another client name")
            name = None
        use = _read(data, "clients[]", "use", errs, path)
        cn = _read(data, "clients[]", "cn", errs, path, default=name)
        if cn is not None and (cn == ROOT_USER or cn in node_names):
            # With etcd auth on, a client certificate's CN is its etcd user name (op-guide, "Using TLS Common
            # Name"): root is the admin's, and each node's name is that node's own identity.
            errs.add(f"{path}.cn", f"{cn!r} is the etcd user of {'the admin' if cn == ROOT_USER else 'node ' + cn}; "
                     "a client needs a CN of its own")
            cn = None
        o = _read(data, "clients[]", "o", errs, path)
        days = _read(data, "clients[]", "validity_days", errs, path, default=pki.validity_days if pki else 365)
        if days and pki and days <= pki.renew_before_days:
            errs.add(f"{path}.validity_days", f"{days} must be more than pki.renew_before_days "
                     f"({pki.renew_before_days}), or every run would renew it")
            days = None
        directory = _read(data, "clients[]", "dir", errs, path, default=f"/etc/etcd-client/{name}")
        revoked = _read(data, "clients[]", "revoked", errs, path)
        access = _access(data["access"], f"{path}.access", errs) if "access" in data else None
        if cn is not None and cn in cns:
            errs.add(f"{path}.cn", f"{cn!r} is also {cns[cn]}'s CN; with etcd auth on, a CN is one etcd user, so each "
                     "consumer needs its own")
        elif cn is not None:
            cns[cn] = path
        if name is None or use is None or cn is None or ("o" in data and o is None) or not days \
                or directory is None:
            continue
        taken[name] = f"clients.{i}"
        clients.append(Client(name=name, use=ClientUse(use), cn=cn, o=o, validity_days=days,
                              dir=directory.rstrip("/"), revoked=revoked,
                              access=DEFAULT_ACCESS[ClientUse(use)] if access is None else access))
    return clients


def _flannel(value: Any, errs: _Errors) -> Flannel | None:
    data = _mapping(value, "flannel", errs, "flannel")
    if data is None:
        return None
    network = None
    raw = data.get("network")
    try:
        network = ipaddress.IPv4Network(str(raw))
    except ValueError as exc:
        if "network" in data:
            errs.add("flannel.network", f"'{raw}' is not an IPv4 network: {exc}")
    typed, ok = _typed(data, "flannel", errs)
    subnet_len = typed["subnet_len"]
    if network and subnet_len and subnet_len <= network.prefixlen:
        errs.add("flannel.subnet_len", f"{subnet_len} must be longer than the prefix of "
                 f"flannel.network ({network.prefixlen})")
    if network is None or not ok:
        return None
    return Flannel(**typed, network=network)


def _admin(value: Any, errs: _Errors) -> Admin | None:
    data = _mapping(value, "admin", errs, "admin")
    if data is None:
        return None
    typed, ok = _typed(data, "admin", errs)
    if typed["name"] in SYSTEM_USERS:
        errs.add("admin.name", f"'{typed['name']}' is reserved: the system already has that user")
        ok = False
    keys: list[str] = []
    for i, item in enumerate(_list(data, "ssh_authorized_keys", "admin", errs)):
        if not isinstance(item, str) or not _SSH_KEY.fullmatch(item.strip()):
            errs.add(f"admin.ssh_authorized_keys.{i}", "is not an OpenSSH public key line")
        else:
            keys.append(item.strip())
    if "password_hash" not in data and not keys and "ssh_authorized_keys" in data:
        errs.add("admin.ssh_authorized_keys", "is empty and no password_hash is set; "
                 "the admin user could never log in")
    if not ok:
        return None
    return Admin(**typed, ssh_authorized_keys=tuple(keys))


def _backup(value: Any, errs: _Errors) -> Backup | None:
    data = _mapping(value, "backup", errs, "backup")
    if data is None:
        return None
    typed, ok = _typed(data, "backup", errs)
    return Backup(**typed | {"dir": typed["dir"].rstrip("/")}) if ok else None


def _defrag(value: Any, nodes: int, errs: _Errors) -> Defrag | None:
    data = _mapping(value, "defrag", errs, "defrag")
    if data is None:
        return None
    typed, ok = _typed(data, "defrag", errs)
    if not ok:
        return None
    schedule = typed.pop("schedule")
    days, _, time = schedule.rpartition(" ")
    defrag = Defrag(**typed, days=days, time=time)
    if defrag.enabled and defrag.start_minute(max(nodes, 1) - 1) >= 24 * 60:
        errs.add("defrag.schedule", f"{schedule!r} plus {defrag.stagger_minutes} minutes for each of the {nodes} nodes "
                 "runs past midnight, where the weekdays would no longer hold; start earlier or stagger less")
        return None
    return defrag


