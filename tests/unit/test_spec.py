"""Spec validation: every bad input gets its dotted path and a clear message; good input loads."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.errors import SpecError
from generator.layout import RESERVED_NAMES
from generator.loader import load_spec
from tests.helpers.specs import ROOT, parse, spec_yaml

BASE = spec_yaml()


def _replace(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BAD_SPECS = [
    # (id, spec text, expected error line)
    ("duplicate-name", _replace("name: etcd02", "name: etcd01"),
     "nodes.1.name: 'etcd01' is already used by nodes.0"),
    ("duplicate-ip", _replace("ip: 192.168.0.3", "ip: 192.168.0.1"),
     "nodes.2.ip: '192.168.0.1' is already used by nodes.0"),
    ("duplicate-mac", _replace('"52:54:00:00:00:02"', '"52:54:00:00:00:01"'),
     "nodes.1.mac: '52:54:00:00:00:01' is already used by nodes.0"),
    ("bad-ip", _replace("ip: 192.168.0.3", "ip: 192.168.0.300"),
     "nodes.2.ip: '192.168.0.300' is not an IP address"),
    ("ipv6", _replace("ip: 192.168.0.3", 'ip: "fd00::3"'),
     "nodes.2.ip: 'fd00::3' is IPv6; only IPv4 is supported"),
    ("ip-outside-network", _replace("ip: 192.168.0.3", "ip: 192.168.1.3"),
     "nodes.2.ip: 192.168.1.3 is outside the node network 192.168.0.0/24"),
    ("ip-is-broadcast", _replace("ip: 192.168.0.3", "ip: 192.168.0.255"),
     "nodes.2.ip: 192.168.0.255 is the network or broadcast address of 192.168.0.0/24"),
    ("gateway-outside", _replace("gateway: 192.168.0.254", "gateway: 10.0.0.1"),
     "network.gateway: 10.0.0.1 is outside the node network 192.168.0.0/24"),
    ("bad-mac", _replace('"52:54:00:00:00:02"', '"52:54:00:00:02"'),
     "nodes.1.mac: '52:54:00:00:02' is not a MAC address"),
    ("unquoted-mac", _replace('"52:54:00:00:00:02"', "52:54:00:00:00:02"),
     "nodes.1.mac: was read as a number; quote the MAC address"),
    ("multicast-mac", _replace('"52:54:00:00:00:02"', '"01:00:5e:00:00:02"'),
     "nodes.1.mac: '01:00:5e:00:00:02' is a multicast address"),
    ("bad-fqdn", _replace("name: etcd02,", "name: etcd02, fqdn: -bad.example.com,"),
     "nodes.1.fqdn: '-bad.example.com' is not a valid DNS name"),
    ("fqdn-not-qualified", _replace("name: etcd02,", "name: etcd02, fqdn: etcd02,"),
     "nodes.1.fqdn: 'etcd02' is not fully qualified"),
    ("bad-node-name", _replace("name: etcd02", "name: Etcd_02"),
     "nodes.1.name: 'Etcd_02' is not a valid name"),
    ("bad-domain", _replace("domain: example.com", "domain: exa mple.com"),
     "cluster.domain: 'exa mple.com' is not a valid DNS name"),
    ("zero-members", BASE.split("nodes:")[0] + "nodes: []\n" + "etcd:" + BASE.split("etcd:", 1)[1],
     "nodes: needs at least one member"),
    ("unknown-top-key", BASE + "flanel: {}\n", "flanel: unknown key (did you mean 'flannel'?)"),
    ("unknown-node-key", _replace("name: etcd02,", "name: etcd02, ipaddr: 1.2.3.4,"),
     "nodes.1.ipaddr: unknown key"),
    ("unknown-etcd-key", _replace("heartbeat_interval: 100", "heartbeat_intervall: 100"),
     "etcd.heartbeat_intervall: unknown key (did you mean 'heartbeat_interval'?)"),
    ("missing-ip", _replace("ip: 192.168.0.2, ", ""), "nodes.1.ip: is required"),
    ("missing-cluster", BASE.split("\n", 1)[1], "cluster: is required"),
    ("float-version", _replace('version: "3.5.1"', "version: 3.5"),
     "etcd.version: was read as the number 3.5; quote it"),
    ("old-version", _replace('version: "3.5.1"', 'version: "3.3.27"'),
     "etcd.version: '3.3.27' is not supported"),
    ("bundle-and-url", _replace("bundle: etcd.tar.gz", "bundle: etcd.tar.gz\n  url: https://x/e.tgz"),
     "etcd: give either bundle or url, not both"),
    ("url-without-sha", _replace("bundle: etcd.tar.gz", "url: https://example.com/e.tar.gz"),
     "etcd.sha256: is required with etcd.url"),
    ("bad-sha", _replace("bundle: etcd.tar.gz", "bundle: etcd.tar.gz\n  sha256: abc"),
     "etcd.sha256: must be 64 lowercase hex digits"),
    ("election-too-short", _replace("election_timeout: 1000", "election_timeout: 400"),
     "etcd.election_timeout: 400 ms must be at least 5x heartbeat_interval (100 ms)"),
    ("heartbeat-not-number", _replace("heartbeat_interval: 100", "heartbeat_interval: fast"),
     "etcd.heartbeat_interval: must be a whole number, got a string"),
    ("bad-key-type", _replace("key_type: rsa2048", "key_type: dsa1024"),
     "pki.key_type: 'dsa1024' is not one of rsa2048"),
    ("renew-longer-than-validity", _replace("validity_days: 365", "validity_days: 20"),
     "pki.renew_before_days: 30 must be less than validity_days (20)"),
    ("flannel-subnet-len", _replace("subnet_len: 24", "subnet_len: 16"),
     "flannel.subnet_len: 16 must be longer than the prefix of flannel.network (16)"),
    ("flannel-network", _replace("network: 10.2.0.0/16", "network: 10.2.0.1/16"),
     "flannel.network: '10.2.0.1/16' is not an IPv4 network"),
    ("admin-bad-key", BASE + "admin: {ssh_authorized_keys: [not-a-key]}\n",
     "admin.ssh_authorized_keys.0: is not an OpenSSH public key line"),
    ("admin-bad-hash", BASE + "admin: {password_hash: secret}\n",
     "admin.password_hash: is not a SHA-512 crypt hash"),
    ("admin-reserved", BASE + "admin: {name: etcd, ssh_authorized_keys: []}\n",
     "admin.name: 'etcd' is reserved"),
    ("ca-missing-key", _replace("validity_days: 365}", "validity_days: 365, ca: {cert: ca.crt}}"),
     "pki.ca.key: is required"),
    ("duplicate-yaml-key", _replace("  election_timeout: 1000", "  election_timeout: 1000\n  election_timeout: 2000"),
     "duplicate key 'election_timeout'"),
    ("all-join", BASE.replace("mac: \"52:54:00:00:00:0", "join: true, mac: \"52:54:00:00:00:0"),
     "nodes: every member has join: true"),
    ("join-not-bool", _replace("name: etcd02,", "name: etcd02, join: yes please,"),
     "nodes.1.join: must be true or false"),
    ("not-yaml", "cluster: [unclosed\n", "cluster.yaml:2: not valid YAML"),
    ("not-a-mapping", "- just\n- a list\n", "spec: must be a mapping, got a list"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in BAD_SPECS],
                         ids=[i for i, _, _ in BAD_SPECS])
def test_bad_spec_is_reported_with_its_path(text: str, expected: str) -> None:
    """Each bad spec raises SpecError, and one of its messages starts with the expected text."""
    with pytest.raises(SpecError) as info:
        load_spec(text, base_dir=ROOT)
    assert any(m.startswith(expected) or expected in m for m in info.value.messages), \
        info.value.messages


def test_all_problems_are_reported_at_once() -> None:
    """Three independent mistakes give three messages, not just the first."""
    text = _replace("ip: 192.168.0.3", "ip: 192.168.0.300",
                    _replace("key_type: rsa2048", "key_type: nope",
                             _replace('"52:54:00:00:00:02"', '"zz"')))
    with pytest.raises(SpecError) as info:
        load_spec(text, base_dir=ROOT)
    paths = sorted(m.split(":")[0] for m in info.value.messages)
    assert paths == ["nodes.1.mac", "nodes.2.ip", "pki.key_type"]


def test_even_member_count_is_a_warning() -> None:
    """Four members load, with a warning about fault tolerance."""
    _spec, warnings = load_spec(spec_yaml(count=4), base_dir=ROOT)
    assert warnings == ["nodes: 4 members tolerate no more failures than 3; use an odd number"]
    assert load_spec(spec_yaml(count=3), base_dir=ROOT)[1] == []


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    """fqdn defaults to name.domain, the bundle path is relative to the spec, the token is per cluster."""
    spec = parse(spec_yaml(), base_dir=tmp_path)
    assert [n.fqdn for n in spec.nodes] == [f"etcd0{i}.example.com" for i in (1, 2, 3)]
    assert spec.etcd.bundle == tmp_path / "etcd.tar.gz"
    assert spec.etcd.token.startswith("demo-") and len(spec.etcd.token) == len("demo-") + 12
    assert spec.etcd.plaintext_localhost is False
    assert spec.subnet == ipaddress.IPv4Network("192.168.0.0/24")
    other = parse(_replace("name: demo", "name: prod"))
    assert other.etcd.token != spec.etcd.token


@st.composite
def cluster_dicts(draw: st.DrawFn) -> dict[str, object]:
    count = draw(st.integers(min_value=1, max_value=9))
    third = draw(st.integers(min_value=0, max_value=255))
    hosts = draw(st.lists(st.integers(min_value=1, max_value=250), min_size=count, max_size=count,
                          unique=True))
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True).filter(
        lambda n: n not in RESERVED_NAMES), min_size=count, max_size=count, unique=True))
    heartbeat = draw(st.integers(min_value=10, max_value=1000))
    return {
        "cluster": {"name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)),
                    "domain": "example.org"},
        "network": {"prefix": 24},
        "nodes": [{"name": n, "ip": f"10.9.{third}.{h}", "mac": f"52:54:00:00:{third:02x}:{h:02x}"}
                  for n, h in zip(names, hosts, strict=True)],
        "etcd": {"version": "3.5.1", "bundle": "x.tar.gz", "heartbeat_interval": heartbeat,
                 "election_timeout": heartbeat * draw(st.integers(min_value=5, max_value=10))},
        "pki": {"key_type": draw(st.sampled_from(["rsa2048", "ecdsa-p256"]))},
    }


@settings(max_examples=60, deadline=None)
@given(cluster_dicts())
def test_dumped_spec_loads_back_the_same(data: dict[str, object]) -> None:
    """Any valid cluster dict, dumped as YAML, loads into a spec that says the same thing."""
    spec = parse(yaml.safe_dump(data))
    nodes = data["nodes"]
    assert isinstance(nodes, list)
    assert [(n.name, str(n.ip), n.mac) for n in spec.nodes] == \
        [(n["name"], n["ip"], n["mac"]) for n in nodes]
    assert parse(yaml.safe_dump(data)) == spec
