"""promote: a joining member, started as a learner, runs `member promote` until etcd accepts it: etcd refuses
while the learner has not caught up with the leader. https://etcd.io/docs/v3.5/learning/design-learner/
"""

from __future__ import annotations

import time

from etcd_seed_node.transport import PEER_URL, UNTIL_DEADLINE, Etcd, Meta, Record, Refused, Retry, parse_json, say


def own_id(etcd: Etcd) -> tuple[int, int | None]:
    """The member ID etcd on this node runs as, and its leader's (None while it has none). Not the peer URL:
    until prepare has removed it, the stale entry of a replaced node's lost incarnation has the same URL, and
    is a voting member."""
    code, out, err = etcd.etcdctl(etcd.own, "endpoint", "status", "-w", "json")
    if code != 0:
        raise Retry(f"etcd on {etcd.name} does not answer yet ({err})")
    status = parse_json(out, "endpoint status")
    try:
        own, leader = status[0]["Status"]["header"]["member_id"], status[0]["Status"].get("leader")
    except (KeyError, IndexError, TypeError, AttributeError):
        own, leader = None, None
    if not isinstance(own, int):
        raise Refused(f"endpoint status gave no member ID: {out[:200]!r}")
    return own, leader if isinstance(leader, int) and leader else None


def leader_urls(etcd: Etcd, members: list[Record], leader: int | None) -> list[str]:
    """Where `member promote` goes: the leader. A follower forwards it to the leader without the caller's
    identity, which etcd with auth on refuses ("auth: user name is empty", etcd-io/etcd#20757, fixed only
    in releases after 3.5.16), so through a follower a promotion would fail until the leader moved."""
    for m in members:
        urls = m.get("clientURLs")
        if m["ID"] == leader and isinstance(urls, list) and urls and \
                all(isinstance(u, str) and PEER_URL.fullmatch(u) for u in urls):
            return urls
    return list(etcd.cfg["peers"])


def promote(etcd: Etcd) -> int:
    if etcd.cfg["mode"] == "none":
        return 0
    waiting = False
    while True:
        own, leader = own_id(etcd)
        members = etcd.members([*etcd.own, *etcd.cfg["peers"]])
        mine = [m for m in members if m["ID"] == own]
        if not mine:
            raise Retry(f"{etcd.name} is not a member yet")
        if not mine[0].get("isLearner"):
            say(f"{etcd.name} is a voting member")
            return 0
        code, _, err = etcd.etcdctl(leader_urls(etcd, members, leader), "member", "promote", f"{mine[0]['ID']:x}")
        if code == 0:
            say(f"promoted {etcd.name} (member {mine[0]['ID']:x}) to a voting member")
            return 0
        if "not in sync" not in err:
            raise Retry("member promote failed (" + err + ")")
        if not waiting:
            say(f"{etcd.name} is catching up with the leader before its promotion")
            waiting = True
        time.sleep(2)


META = Meta(job="promote", unit="etcd-seed-promote.service", schedule="after etcd, on a joining member only",
            retry=UNTIL_DEADLINE, run=promote)
