"""defrag: once, when every member is healthy and the free pages inside this member's database file are worth
reclaiming, `defrag` this member alone; then clear a NOSPACE alarm once every member is well under its quota.
https://etcd.io/docs/v3.5/op-guide/maintenance/#defragmentation
"""

from __future__ import annotations

from etcd_seed_node.transport import ONCE, Etcd, Meta, Refused, parse_json, say

# etcdserverpb.AlarmType: https://github.com/etcd-io/etcd/blob/v3.5.0/api/etcdserverpb/rpc.proto
NOSPACE = 1


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def reason(size: int, in_use: int, quota: int, min_free_percent: int, near_quota_percent: int,
           nospace: bool = False) -> str | None:
    """Why this file is worth defragmenting, or None: at least min_free_percent of it free, or any of it free
    while the file is above near_quota_percent of the quota or a NOSPACE alarm stops every write (the alarm
    is cleared only once every member's file is small again)."""
    free = size - in_use
    if free <= 0:
        return None
    if free * 100 >= size * min_free_percent:
        return f"{free * 100 // size}% of it free"
    if size * 100 >= quota * near_quota_percent:
        return f"the file is at {size * 100 // quota}% of the quota"
    if nospace:
        return "a NOSPACE alarm is active"
    return None


def sizes(etcd: Etcd, *args: str) -> dict[str, tuple[int, int]]:
    """(file size, in use) of each member's database in bytes, by client URL: this member's, or with
    --cluster every member's. Refused unless each one answers and has a leader: `endpoint health` will not
    do, since it calls a member with an active alarm unhealthy, and NOSPACE is what a defrag may clear."""
    code, out, err = etcd.etcdctl(etcd.own, "endpoint", "status", *args, "-w", "json")
    if code != 0:
        raise Refused(f"not every member answers ({err}); a member defragments only while the others keep the "
                      "cluster available")
    found = {}
    for answer in parse_json(out, "endpoint status"):
        try:
            url, status = answer["Endpoint"], answer["Status"]
            size, in_use, leader = status["dbSize"], status["dbSizeInUse"], status["leader"]
        except (KeyError, TypeError):
            raise Refused(f"endpoint status gave no database sizes: {out[:200]!r}") from None
        if not all(isinstance(n, int) and n >= 0 for n in (size, in_use, leader)):
            raise Refused(f"endpoint status gave no database sizes: {out[:200]!r}")
        if not leader:
            raise Refused(f"{url} has no leader; a member defragments only in a healthy cluster")
        found[url] = (size, in_use)
    return found


def alarms(etcd: Etcd) -> set[object]:
    """The kinds of the cluster's active alarms (etcdserverpb.AlarmType numbers)."""
    code, out, err = etcd.etcdctl(etcd.own, "alarm", "list", "-w", "json")
    if code != 0:
        raise Refused(f"alarm list failed ({err})")
    answer = parse_json(out, "alarm list")
    active = answer.get("alarms") or [] if isinstance(answer, dict) else []
    return {a.get("alarm") for a in active if isinstance(a, dict)} or ({None} if active else set())


def clear_nospace(etcd: Etcd, quota: int, kinds: set[object]) -> str:
    """Disarm the NOSPACE alarm once every member's file is clearly under the quota (below the share the
    alerts call near), so that the next writes do not raise it again; never any other alarm (etcdctl's
    disarm clears every alarm, CORRUPT too)."""
    if not kinds:
        return ""
    if kinds != {NOSPACE}:
        return f"; alarms {sorted(map(str, kinds))} left for an operator: only NOSPACE is cleared here"
    largest = max(size for size, _ in sizes(etcd, "--cluster").values())
    near = etcd.cfg["defrag"]["near_quota_percent"]
    if largest * 100 >= quota * near:
        return (f"; NOSPACE alarm left: a member's file is still {mib(largest)}, over {near}% of the "
                f"{mib(quota)} quota (it clears once every member is below)")
    code, _, err = etcd.etcdctl(etcd.own, "alarm", "disarm")
    if code != 0:
        raise Refused(f"alarm disarm failed ({err})")
    return "; cleared the NOSPACE alarm: every member is under its quota again"


def defrag(etcd: Etcd) -> int:
    own = etcd.own[0]
    sizes(etcd, "--cluster")
    size, in_use = sizes(etcd)[own]
    settings = etcd.cfg["defrag"]
    active = alarms(etcd)
    why = reason(size, in_use, settings["quota_bytes"], settings["min_free_percent"],
                 settings["near_quota_percent"], nospace=NOSPACE in active)
    if why is None:
        done = (f"{etcd.name} left alone: {mib(size - in_use)} of its {mib(size)} file is free, less than "
                f"{settings['min_free_percent']}%")
    else:
        code, _, err = etcd.etcdctl(etcd.own, "defrag", timeout_s=1500)
        if code != 0:
            raise Refused(f"defrag of {etcd.name} failed ({err})")
        done = f"defragmented {etcd.name} ({why}): {mib(size)} -> {mib(sizes(etcd)[own][0])}"
    say(f"defrag: {done}{clear_nospace(etcd, settings['quota_bytes'], active)}")
    return 0


META = Meta(job="defrag", unit="etcd-defrag.service", schedule="etcd-defrag.timer, at this member's own minute",
            retry=ONCE, run=defrag)
