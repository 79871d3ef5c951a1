"""prepare: before etcd starts, refuse a disk that is not this member's and a restore seed whose restore did
not happen; a member marked join or replace whose data dir is empty adds itself to its running cluster.

It removes its stale entry (replace only, and only while the other members keep quorum), runs `member add
--learner` (or reuses its own unstarted entry after a reboot half-way), and writes the membership etcd
returned to membership.env, which systemd reads next for ETCD_INITIAL_CLUSTER and
ETCD_INITIAL_CLUSTER_STATE=existing. The data dir is never written here.
"""

from __future__ import annotations

import os

from etcd_seed_node.transport import (
    NAME,
    PEER_URL,
    ROOT,
    UNTIL_DEADLINE,
    Etcd,
    Meta,
    Record,
    Refused,
    Retry,
    checked_members,
    parse_json,
    say,
)


def has_data(cfg: Record) -> bool:
    """A member's data: member/ in the data dir, or anything in the WAL dir but the lost+found of a
    freshly made filesystem (either may be a mount point of its own)."""
    data, wal = ROOT + cfg["data_dir"], ROOT + cfg["wal_dir"]
    return os.path.isdir(data + "/member") or (os.path.isdir(wal) and bool(set(os.listdir(wal)) - {"lost+found"}))


def taken(etcd: Etcd, members: list[Record]) -> None:
    """Refused when another node's started member holds this node's peer URL: never ours to remove."""
    for m in members:
        if etcd.peer_url in m["peerURLs"] and m["name"] and m["name"] != etcd.name:
            raise Refused(f"peer URL {etcd.peer_url} is taken by member {m['name']} ({m['ID']:x}); remove it "
                          f"first, or give {etcd.name} another address")


def remove_stale(etcd: Etcd, members: list[Record]) -> list[Record]:
    """Remove the entry a lost incarnation of this node left, while the others keep quorum: an entry with
    this node's name, or an unstarted one (no name yet) with its peer URL."""
    taken(etcd, members)
    stale = [m for m in members if m["name"] == etcd.name or (not m["name"] and etcd.peer_url in m["peerURLs"])]
    if not stale:
        return members
    voters = [m for m in members if not m.get("isLearner")]
    left = [m for m in voters if m not in stale]
    healthy = sum(1 for m in left if etcd.healthy(m))
    need = len(left) // 2 + 1
    if healthy < need:
        raise Retry(f"removing the stale entry of {etcd.name} would leave {healthy} healthy of {len(left)} "
                    f"voting members, fewer than the {need} a quorum needs")
    for m in stale:
        code, _, err = etcd.etcdctl(etcd.cfg["peers"], "member", "remove", f"{m['ID']:x}")
        if code != 0:
            raise Retry(f"member remove {m['ID']:x} failed ({err})")
        say(f"removed the stale member entry {m['ID']:x} of {etcd.name} ({','.join(m.get('peerURLs', []))}); "
            f"{healthy} of {len(left)} other voting members healthy")
    return etcd.members(etcd.cfg["peers"])


def add(etcd: Etcd, members: list[Record]) -> tuple[int, list[Record]]:
    """This node's own learner entry: reused when a reboot came half-way, else added."""
    taken(etcd, members)
    for m in members:
        if m["name"] == etcd.name and etcd.peer_url not in m["peerURLs"]:
            raise Refused(f"{etcd.name} is already a member ({m['ID']:x}) at {','.join(m['peerURLs'])}, not at "
                          f"{etcd.peer_url}: its address changed; mark it replace: true in cluster.yaml and "
                          "build again")
    for m in members:
        if etcd.peer_url in m["peerURLs"]:
            if m["name"] == etcd.name:
                raise Refused(f"{etcd.name} is already a started member ({m['ID']:x}) but its data dir is "
                              "empty: its disk was lost; mark it replace: true in cluster.yaml and build again")
            say(f"reusing the unstarted member entry {m['ID']:x} for {etcd.name}")
            return int(m["ID"]), members
    code, out, err = etcd.etcdctl(etcd.cfg["peers"], "member", "add", etcd.name,
                                  "--peer-urls=" + etcd.peer_url, "--learner", "-w", "json")
    if code != 0:
        if "too many learner" in err:
            raise Retry("another learner is still catching up; etcd allows one at a time")
        if "permission denied" in err or "user name not found" in err:
            how = (f"re-seed {etcd.cfg['auth_by']} (it adds the users of its seed)" if "auth_by" in etcd.cfg
                   else "create it by hand (the build leaves this cluster's users as they are)")
            raise Retry(f"the cluster has no etcd user {etcd.name} with the root role yet; {how} ({err})")
        raise Retry("member add failed (" + err + ")")
    added = parse_json(out, "member add")
    own = added.get("member", {}).get("ID") if isinstance(added, dict) else None
    if not isinstance(own, int):
        raise Refused(f"member add gave no member ID: {out[:200]!r}")
    say(f"added {etcd.name} as a learner (member {own:x})")
    return own, checked_members(added, "member add")


def check_disk(cfg: Record) -> None:
    """Refused unless the data disk's owner file names this member (the install step wrote it)."""
    owner = cfg.get("disk_owner")
    if not owner:
        return
    try:
        with open(ROOT + owner["path"], encoding="ascii", errors="replace") as handle:
            found = handle.read(200).split("\n", 1)[0]
    except OSError:
        found = "(no owner file)"
    if found != owner["want"]:
        raise Refused(f"the disk at {owner['path'].rsplit('/', 1)[0]} is not this member's data disk: its "
                      f"owner file says {found!r}, this member is {owner['want']!r}; the install step's log "
                      "says why")


def prepare(etcd: Etcd) -> int:
    cfg = etcd.cfg
    check_disk(cfg)
    if cfg.get("restore") and not os.path.isdir(ROOT + cfg["data_dir"] + "/member"):
        raise Refused(f"this seed restores a snapshot, and {cfg['data_dir']} holds no restored member: "
                      "etcd would start an empty cluster; the install step's log says why the restore did not "
                      "happen")
    if cfg["mode"] == "none" or has_data(cfg):
        return 0  # a founder, or a member already: etcd reads its membership from its data
    members = etcd.members(cfg["peers"])
    if cfg["mode"] == "replace":
        members = remove_stale(etcd, members)
    own, members = add(etcd, members)
    cluster = initial_cluster(members, own, etcd.name)
    target = ROOT + cfg["membership_env"]
    with open(target + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(membership_env(etcd.name, cluster))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(target + ".tmp", target)
    fsync_dir(os.path.dirname(target))  # the rename itself survives a power cut
    say(f"{etcd.name} starts as a learner of {cluster}")
    return 0


def initial_cluster(members: list[Record], own: int, name: str) -> str:
    """ETCD_INITIAL_CLUSTER from checked members: this node under its own name, the others under theirs."""
    cluster = []
    for m in members:
        label = name if m["ID"] == own else (m["name"] or f"unstarted-{m['ID']:x}")
        cluster += [f"{label}={url}" for url in m["peerURLs"]]
    return ",".join(cluster)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries to disk."""
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def membership_env(name: str, cluster: str) -> str:
    """membership.env's text; every value is checked again here, since systemd reads it after options.env."""
    for entry in cluster.split(","):
        label, _, url = entry.partition("=")
        if not NAME.fullmatch(label) or not PEER_URL.fullmatch(url):
            raise Refused(f"refusing to write {entry!r} to membership.env")
    return (f"# Written by etcd-seed-member when {name} joined its cluster.\n"
            f"ETCD_INITIAL_CLUSTER={cluster}\nETCD_INITIAL_CLUSTER_STATE=existing\n")


META = Meta(job="prepare", unit="etcd.service", schedule="ExecStartPre=, before each start of etcd",
            retry=UNTIL_DEADLINE, run=prepare)
