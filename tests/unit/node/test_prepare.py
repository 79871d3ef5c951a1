"""prepare.py: what a joining or replacing member removes, adds and writes to membership.env, on etcd answers
written here (the real-etcd cases are in tests/etcd/test_membership.py)."""

from __future__ import annotations

import pytest
from etcd_seed_node import prepare, transport

GOOD = {"ID": 0x1234, "name": "etcd01", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": []}


def _etcd(name: str, ip: str, peers: list[str] | None = None) -> transport.Etcd:
    return transport.Etcd({"name": name, "peer_url": f"https://{ip}:2380", "client_url": f"https://{ip}:2379",
                           "peers": peers or []})


def test_members_of_the_right_shape_pass() -> None:
    unstarted = {"ID": 0x77, "peerURLs": ["https://10.0.0.4:2380"]}  # no name until it starts
    members = transport.checked_members({"members": [GOOD, unstarted]}, "member list")
    cluster = prepare.initial_cluster(members, 0x1234, "etcd01")
    assert cluster == "etcd01=https://10.0.0.1:2380,unstarted-77=https://10.0.0.4:2380"
    assert prepare.membership_env("etcd01", cluster).splitlines()[1:] == [
        f"ETCD_INITIAL_CLUSTER={cluster}", "ETCD_INITIAL_CLUSTER_STATE=existing"]


@pytest.mark.parametrize("cluster", ["etcd01=https://10.0.0.1:2380\nETCD_X=1", "a=b", "etcd01=https://10.0.0.1:2380,"])
def test_membership_env_refuses_anything_unchecked(cluster: str) -> None:
    with pytest.raises(transport.Refused):
        prepare.membership_env("etcd01", cluster)


def test_stale_entries_are_only_our_own() -> None:
    """In replace mode only an entry with this node's name, or an unstarted one at its peer URL, is stale; a started
    member of another name at its URL is refused before anything is removed."""
    node = _etcd("etcd03", "10.0.0.3")
    other = {"ID": 1, "name": "etcd09", "peerURLs": ["https://10.0.0.3:2380"], "clientURLs": []}
    with pytest.raises(transport.Refused, match="taken by member etcd09"):
        prepare.remove_stale(node, [other])
    with pytest.raises(transport.Refused, match="taken by member etcd09"):
        prepare.add(node, [other])
    moved = {"ID": 2, "name": "etcd03", "peerURLs": ["https://10.0.0.7:2380"], "clientURLs": []}
    with pytest.raises(transport.Refused, match="its address changed"):
        prepare.add(node, [moved])


def test_initial_cluster_names_this_node_and_the_unstarted_by_hex_id() -> None:
    """ETCD_INITIAL_CLUSTER from checked members: this node under its own name, an unstarted member as
    unstarted-<hex ID>, every one of its peer URLs."""
    unstarted = {"ID": 0x77, "peerURLs": ["https://10.0.0.4:2380"]}
    members = transport.checked_members({"members": [GOOD, unstarted]}, "member list")
    assert prepare.initial_cluster(members, 0x77, "etcd04") == \
        "etcd01=https://10.0.0.1:2380,etcd04=https://10.0.0.4:2380"
    assert prepare.initial_cluster(members, 0x1234, "etcd01") == \
        "etcd01=https://10.0.0.1:2380,unstarted-77=https://10.0.0.4:2380"


def test_a_taken_peer_url_names_the_member_by_hex_id() -> None:
    """The operator is told which member holds the address, by name and by the hex ID etcdctl prints."""
    with pytest.raises(transport.Refused, match=r"taken by member etcd01 \(1234\)"):
        prepare.taken(_etcd("etcd02", "10.0.0.1"), transport.checked_members({"members": [GOOD]}, "member list"))
