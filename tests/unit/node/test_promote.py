"""promote.py: where a learner's `member promote` goes."""

from __future__ import annotations

from etcd_seed_node import promote, transport


def test_promotion_goes_to_the_leader() -> None:
    """etcd through 3.5.16 drops the caller's identity when a follower forwards `member promote` to the leader, and
    with auth on the promotion then fails ("auth: user name is empty"): it is sent to the leader's client URLs,
    and to the seed's peers only when the leader is unknown or lists URLs that are not https://<IPv4>:<port>."""
    peers = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    node = transport.Etcd({"name": "etcd04", "peer_url": "https://10.0.0.4:2380",
                           "client_url": "https://10.0.0.4:2379", "peers": peers})
    follower = {"ID": 1, "name": "etcd01", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": [peers[0]]}
    leader = {"ID": 2, "name": "etcd02", "peerURLs": ["https://10.0.0.2:2380"], "clientURLs": [peers[1]]}
    assert promote.leader_urls(node, [follower, leader], 2) == [peers[1]]
    assert promote.leader_urls(node, [follower, leader], None) == peers
    assert promote.leader_urls(node, [follower, leader], 3) == peers
    hostile = {**leader, "clientURLs": ["https://10.0.0.2:2379 --insecure-skip-tls-verify"]}
    assert promote.leader_urls(node, [follower, hostile], 2) == peers
